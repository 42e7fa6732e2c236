"""Shrink: zeroed channels removed, predictions unchanged, widths rounded, the result exports to int8."""

import math

import keras as keras3
import numpy as np
import pytest

from edgekeras import keras
from edgekeras.channels import analyse, kept_channels, shrink, zero_channels
from edgekeras.litert import export_tflite
from edgekeras.runtime import TFLiteModel

L = keras.layers


def residual_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False, name="expand")(x)))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=1, padding="same")(L.ZeroPadding2D(0)(h))))
    h = L.BatchNormalization()(L.Conv2D(8, 1, name="project")(h))
    x = L.Add()([x, h])
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


def concat_model():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(10, 1, name="b")(inputs)
    x = L.BatchNormalization()(L.Concatenate()([a, b]))
    x = L.Conv2D(12, 3, padding="same", name="after")(L.ReLU()(x))
    x = L.MaxPooling2D()(L.BatchNormalization()(x))
    return keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(L.GlobalAveragePooling2D(keepdims=True)(x))))


def squeeze_excite_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(12, 3, padding="same", name="conv")(inputs)))
    s = L.Reshape((1, 1, 12))(L.GlobalAveragePooling2D()(x))
    s = L.Conv2D(6, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(12, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.Conv2D(6, 1, name="out")(x))))


def sequential_model(library=keras):
    layers = library.layers
    return library.Sequential([
        library.Input((8, 8, 3)), layers.Conv2D(16, 3, name="conv"), layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2D(6, 1, name="narrow"), layers.Flatten(), layers.Dense(16, name="hidden"), layers.Dense(2, name="head"),
    ])


def application(name, library=keras):
    options = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}
    builder = getattr(library.applications, name)
    return builder(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None, **options)


MODELS = {
    "residual": residual_model,
    "concatenate": concat_model,
    "squeeze_excite": squeeze_excite_model,
    "sequential": sequential_model,
    "keras3_sequential": lambda: sequential_model(keras3),
    "MobileNetV2": lambda: application("MobileNetV2"),
    "MobileNetV3Small": lambda: application("MobileNetV3Small"),
    "EfficientNetB0": pytest.param(lambda: application("EfficientNetB0"), marks=pytest.mark.slow),
    "ResNet50": pytest.param(lambda: application("ResNet50"), marks=pytest.mark.slow),
    "keras3_MobileNetV3Small": lambda: application("MobileNetV3Small", keras3),
}


def randomize(model, seed=0):
    """Random BatchNorm parameters and statistics and biases (non-zero offsets everywhere); kernels as initialized."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])
        elif getattr(layer, "use_bias", False) and layer.get_weights():
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])


def assert_same(actual, expected):
    """Equal up to float summation order: 1e-5 of the largest output (at least 1)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5 * max(1.0, float(np.abs(expected).max())), rtol=0)


def prune_randomly(model, fraction=0.4, seed=0):
    """Zeroes about `fraction` of every prunable group's channels; returns {group name: removed count}."""
    rng = np.random.default_rng(seed)
    channel_graph = analyse(model)
    removed = {}
    for group in channel_graph.groups:
        if group.prunable:
            gone = rng.random(group.size) < fraction
            gone[0] = False  # never the whole group
            removed[group.name] = gone
    zero_channels(channel_graph, removed)
    return channel_graph, {name: int(gone.sum()) for name, gone in removed.items()}


def inputs_for(model, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (3, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("builder", list(MODELS.values()), ids=list(MODELS))
def test_shrink_is_exact_and_widths_are_the_rounded_kept_counts(builder):
    model = builder()
    randomize(model)
    channel_graph, removed = prune_randomly(model, fraction=0.6)
    slim = shrink(model, round_to=4)
    x = inputs_for(model)
    assert_same(slim(x), model(x))
    assert [layer.name for layer in slim.layers] == [layer.name for layer in channel_graph.model.layers]
    narrower = False
    for group in channel_graph.groups:
        kept = group.size - removed.get(group.name, 0)
        width = min(group.size, math.ceil(kept / 4) * 4)
        narrower = narrower or width < group.size
        for producer in group.producers:
            assert slim.get_layer(producer).output.shape[-1] == width, producer
    assert narrower and slim.count_params() < model.count_params()


def test_channels_that_still_reach_a_consumer_are_kept():
    model = residual_model()
    randomize(model)
    # Zero only the expand kernel: the BatchNorm offsets still reach the
    # project convolution, so no channel may go.
    kernel = model.get_layer("expand").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    assert kept_channels(model, round_to=1)["expand"] == 16
    x = inputs_for(model)
    assert_same(shrink(model, round_to=1)(x), model(x))


def test_kept_channels_round_up_and_never_reach_zero():
    model = residual_model()
    randomize(model)
    zero_channels(analyse(model), {"expand": list(range(16)), "stem": [1, 2, 3]})
    assert kept_channels(model, round_to=1) == {**kept_channels(model, round_to=1), "expand": 1, "stem": 5}
    assert kept_channels(model, round_to=4)["expand"] == 4
    assert kept_channels(model, round_to=8)["stem"] == 8
    assert kept_channels(model, round_to=32)["stem"] == 8  # never more than the group has


@pytest.mark.parametrize("round_to", [0, -4, 2.5, True, "8"])
def test_round_to_is_checked(round_to):
    with pytest.raises(ValueError, match=r"Argument `round_to` must be a positive integer\. Received: round_to="):
        shrink(residual_model(), round_to=round_to)


def test_the_shrunk_model_converts_to_int8_and_runs(tmp_path):
    model = squeeze_excite_model()
    randomize(model)
    prune_randomly(model, fraction=0.5)
    slim = shrink(model, round_to=2)
    images = np.random.default_rng(2).uniform(-1, 1, (16, 8, 8, 3)).astype("float32")
    exported = export_tflite(slim, tmp_path / "slim_int8.tflite", "int8", representative_data=images, verify_data=images)
    outputs = TFLiteModel(str(exported.path), num_threads=1).predict(images[:4])
    assert outputs.shape == (4, 2) and np.all(np.isfinite(outputs))
