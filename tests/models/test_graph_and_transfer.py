import numpy as np
import pytest

from edgekeras.compat import keras
from edgekeras.models import WeightsError, build_transfer_model, flatten, is_nested


def _nested_model(training=None):
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    inputs = keras.Input((32, 32, 3))
    features = base(inputs, training=training) if training is not None else base(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    return keras.Model(inputs, outputs)


def test_transfer_model_is_flat_with_expected_io():
    model = build_transfer_model(7, 32, alpha=0.35, weights=None)
    assert not is_nested(model)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 7)
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_whole_base_frozen_by_default():
    model = build_transfer_model(3, 32, alpha=0.35, weights=None)
    trainable = [layer.name for layer in model.layers if layer.trainable and layer.weights]
    assert trainable == ["classifier"]


@pytest.mark.parametrize("trainable_from", ["block_16_expand", -6])
def test_trainable_from_unfreezes_the_tail(trainable_from):
    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from=trainable_from)
    names = [layer.name for layer in model.layers]
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "classifier" in trainable and "Conv_1" in trainable
    assert "block_15_project" not in trainable and "Conv1" not in trainable
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    if trainable_from == "block_16_expand":
        assert "block_16_expand" in trainable
        assert names.index("block_16_expand") > names.index("block_15_project")


def test_train_batchnorm_unfreezes_batchnorm_in_trainable_part():
    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from="Conv_1", train_batchnorm=True)
    assert model.get_layer("Conv_1_bn").trainable
    assert not model.get_layer("block_16_project_BN").trainable


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    path = str(tmp_path / "base.h5")
    source.save_weights(path)
    model = build_transfer_model(3, 32, alpha=0.35, weights=path)
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], source.get_layer("Conv1").get_weights()[0])
    np.testing.assert_array_equal(
        model.get_layer("block_16_project").get_weights()[0], source.get_layer("block_16_project").get_weights()[0]
    )


def test_weights_of_another_alpha_give_a_clear_error(tmp_path):
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    path = str(tmp_path / "base.h5")
    source.save_weights(path)
    with pytest.raises(WeightsError, match=r"`weights` does not fit MobileNetV2\(alpha=1.0.*same alpha"):
        build_transfer_model(3, 32, alpha=1.0, weights=path)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]).save_weights(path),
         r"`weights` does not fit MobileNetV2\(alpha=0.35, include_top=False\)\. "
         r"Received: weights='.*other\.h5' \(Layer count mismatch"),
        (lambda path: open(path, "wb").write(b"not hdf5" * 100),
         r"`weights` names a file that is not a readable \.h5 weights file \(.*file signature not found.*\)\. "
         r"Received: weights='.*other\.h5'"),
    ],
)
def test_weights_file_of_another_model_or_format(tmp_path, write, message):
    path = str(tmp_path / "other.h5")
    write(path)
    with pytest.raises(WeightsError, match=message):
        build_transfer_model(3, 32, alpha=0.35, weights=path)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_classes": 1}, ValueError, r"`num_classes` must be an integer >= 2. Received: num_classes=1"),
        ({"image_size": 16}, ValueError, r"`image_size` must be an integer >= 32 .*Received: image_size=16"),
        ({"dropout": 1.0}, ValueError, r"`dropout` must be in \[0, 1\). Received: dropout=1.0"),
        ({"weights": 3}, ValueError, r"`weights` must be \"imagenet\", None or the path"),
        ({"weights": "/no/such/file.h5"}, WeightsError, r"file that does not exist. Received: weights='/no/such/file.h5'"),
        ({"trainable_from": "no_such_layer"}, ValueError, r"`trainable_from` must name a layer of the base model"),
        ({"trainable_from": 10_000}, ValueError, r"`trainable_from` must be a base layer index"),
        ({"trainable_from": True}, ValueError, r"`trainable_from` must be a layer name, a layer index or None"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    options = dict(num_classes=3, image_size=32, alpha=0.35, weights=None)
    options.update(kwargs)
    with pytest.raises(error, match=message):
        build_transfer_model(**options)


@pytest.mark.parametrize("training", [None, False])
def test_flatten_gives_identical_outputs_and_shares_weights(training):
    nested = _nested_model(training)
    # Non-trivial BatchNorm statistics, so inference and training mode differ.
    for layer in nested.layers[1].layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, variance = layer.moving_mean, layer.moving_variance
            mean.assign(np.random.default_rng(0).normal(size=mean.shape))
            variance.assign(np.random.default_rng(1).uniform(0.5, 2.0, size=variance.shape))
    flat = flatten(nested)
    assert is_nested(nested) and not is_nested(flat)
    assert len(flat.weights) == len(nested.weights)
    assert {id(w) for w in flat.weights} == {id(w) for w in nested.weights}
    images = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(flat.predict(images, verbose=0), nested.predict(images, verbose=0))
    np.testing.assert_array_equal(flat(images, training=True).numpy(), nested(images, training=True).numpy())


def test_flatten_handles_nested_sequential_and_multiple_uses():
    block = keras.Sequential([keras.layers.Dense(4, activation="relu", input_shape=(3,)), keras.layers.Dense(3)])
    inputs = keras.Input((3,))
    outputs = keras.layers.Add()([block(inputs), block(keras.layers.Dense(3)(inputs))])
    nested = keras.Model(inputs, outputs)
    flat = flatten(nested)
    assert not is_nested(flat)
    values = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(flat.predict(values, verbose=0), nested.predict(values, verbose=0))


def test_flatten_returns_flat_model_unchanged():
    model = build_transfer_model(3, 32, alpha=0.35, weights=None)
    assert flatten(model) is model


def test_flatten_rejects_subclassed_model():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    with pytest.raises(ValueError, match=r"must be a functional or Sequential model to be flattened"):
        flatten(Tiny())


@pytest.mark.real_data
def test_shared_imagenet_weights_load_into_a_flat_model(shared_data):
    import h5py

    model = build_transfer_model(10, 96, weights=shared_data["weights"], trainable_from="block_16_expand")
    assert not is_nested(model)
    # The first and the last convolutions and a BatchNorm's statistics hold the file's values exactly.
    with h5py.File(shared_data["weights"], "r") as stored:
        for layer, weight in [("Conv1", "kernel:0"), ("Conv_1", "kernel:0"), ("bn_Conv1", "moving_variance:0")]:
            loaded = next(w for w in model.get_layer(layer).weights if w.name.endswith(f"/{weight}"))
            np.testing.assert_array_equal(loaded.numpy(), stored[layer][layer][weight][()], err_msg=layer)
