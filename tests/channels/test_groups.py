"""Channel groups read off the graph: keras.applications families, user models, layers that mix channels."""

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

import edgekeras
from edgekeras import channels, keras
from edgekeras.channels import find_groups

L = keras.layers


def by_producer(groups, name):
    (group,) = [group for group in groups if name in group.producers]
    return group


def application(library, name, side=32):
    options = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}
    builder = getattr(library.applications, name)
    return builder(input_shape=(side, side, 3), weights=None, classes=10, classifier_activation=None, **options)


# (architecture, producer, its group's size, other producers in the group, consumers in the group)
EXPECTED = {
    "MobileNetV2": ("block_1_expand", 96, (), ("block_1_project",)),
    "MobileNetV3Small": (
        "expanded_conv_3/expand", 96, ("expanded_conv_3/squeeze_excite/Conv_1",),
        ("expanded_conv_3/squeeze_excite/Conv", "expanded_conv_3/project"),
    ),
    "EfficientNetB0": ("block2a_expand_conv", 96, ("block2a_se_expand",), ("block2a_se_reduce", "block2a_project_conv")),
    "ResNet50": ("conv2_block1_1_conv", 64, (), ("conv2_block1_2_conv",)),
}
# A residual chain: one group for every output added together.
RESIDUAL = {
    "MobileNetV2": ("block_2_project", ("block_1_project",)),
    "MobileNetV3Small": ("expanded_conv_5/project", ("expanded_conv_4/project",)),
    "EfficientNetB0": ("block2b_project_conv", ("block2a_project_conv",)),
    "ResNet50": ("conv2_block3_3_conv", ("conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block2_3_conv")),
}


@pytest.mark.parametrize(
    "library, name",
    # ResNet50 on tf_keras only: the same graph, and Keras 3 builds it slower.
    [pytest.param(keras, name, id=f"tf_keras-{name}") for name in sorted(EXPECTED)]
    + [pytest.param(keras3, name, id=f"keras3-{name}") for name in sorted(EXPECTED) if name != "ResNet50"],
)
def test_application_groups(library, name):
    groups = find_groups(application(library, name))
    # Keras 3's MobileNetV3 names its layers in lower case, with "_" where tf_keras has "/".
    fix = (lambda names: tuple(n.replace("/", "_").lower() for n in names)) if library is keras3 else tuple
    producer, size, coupled, consumers = EXPECTED[name]
    group = by_producer(groups, fix([producer])[0])
    assert group.prunable and group.size == size
    assert set(fix(coupled)) <= set(group.producers)
    assert set(group.consumers) == set(fix(consumers))
    last, earlier = RESIDUAL[name]
    assert set(fix(earlier)) <= set(by_producer(groups, fix([last])[0]).producers)
    # The image's channels and the classes stay.
    assert not groups[0].prunable and groups[0].name == "input" and groups[0].size == 3
    assert not by_producer(groups, fix(["predictions" if name != "MobileNetV3Small" else "Logits"])[0]).prunable
    # Every layer producing channels belongs to exactly one group.
    producers = [p for g in groups for p in g.producers]
    assert len(producers) == len(set(producers))


def inverted_residual(x, expand, name):
    h = L.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(x)
    h = L.ReLU(6.0, name=f"{name}_relu")(L.BatchNormalization(name=f"{name}_bn")(h))
    h = L.DepthwiseConv2D(3, padding="same", name=f"{name}_depthwise")(h)
    return L.BatchNormalization(name=f"{name}_project_bn")(L.Conv2D(x.shape[-1], 1, name=f"{name}_project")(h))


def residual_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.Add(name="add")([x, inverted_residual(x, 16, "block")])
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


def concat_model():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(10, 1, name="b")(inputs)
    x = L.BatchNormalization(name="joined_bn")(L.Concatenate(name="concat")([a, b]))
    x = L.Conv2D(4, 1, name="after")(L.ReLU()(x))
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


def squeeze_excite_model():
    inputs = keras.Input((8, 8, 3))
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(12, 3, padding="same", name="conv")(inputs)))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(12, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply(name="scale")([x, s])
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.Conv2D(6, 1, name="out")(x))))


def test_residual_add_couples_the_outputs():
    groups = find_groups(residual_model())
    joined = by_producer(groups, "stem")
    assert joined.producers == ("stem", "block_project") and joined.prunable
    assert set(joined.consumers) == {"block_expand", "head"}
    free = by_producer(groups, "block_expand")
    assert free.passthrough == ("block_bn", "block_relu", "block_depthwise") and free.consumers == ("block_project",)


def test_concatenate_gives_each_input_its_slice():
    groups = find_groups(concat_model())
    a, b = by_producer(groups, "a"), by_producer(groups, "b")
    assert (a.size, b.size) == (6, 10) and a.prunable and b.prunable
    assert a.consumers == b.consumers == ("after",)
    assert "concat" in a.passthrough and "joined_bn" in b.passthrough


def test_squeeze_excite_multiply_couples_the_gate():
    groups = find_groups(squeeze_excite_model())
    main = by_producer(groups, "conv")
    assert main.producers == ("conv", "excite") and main.prunable
    assert set(main.consumers) == {"squeeze", "out"}
    assert by_producer(groups, "squeeze").consumers == ("excite",)


def test_nested_models_are_flattened():
    inner = residual_model()
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, L.Dense(3, name="outer_head")(inner(inputs)))
    assert by_producer(find_groups(outer), "stem").producers == ("stem", "block_project")
    assert by_producer(find_groups(outer), "head").consumers == ("outer_head",)


def mixing_model(layer):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="first")(inputs)
    x = layer(x)
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="second")(x))))


class ChannelShuffle(L.Layer):
    """A user layer that mixes channels (edgekeras cannot know it)."""

    def call(self, x):
        return x[..., ::-1]


MIXING = {
    "reverse_lambda": lambda: L.Lambda(lambda x: x[..., ::-1]),
    # Channels 0 and 7 stay in place: only a test of every channel sees the swap.
    "swap_lambda": lambda: L.Lambda(lambda x: tf.gather(x, [0, 2, 1, 3, 4, 5, 6, 7], axis=-1)),
    "per_channel_constant": lambda: L.Lambda(lambda x: x * np.arange(1, 9, dtype="float32")),
    "user_layer": ChannelShuffle,
    "softmax": lambda: L.Softmax(),
    "grouped_conv": lambda: L.Conv2D(8, 1, groups=2),
    "reshape_across_channels": lambda: L.Reshape((8, 4, 16)),
}


@pytest.mark.parametrize("case", sorted(MIXING))
def test_layers_that_mix_channels_keep_their_groups_whole(case):
    groups = find_groups(mixing_model(MIXING[case]()))
    assert not by_producer(groups, "first").prunable
    assert by_producer(groups, "second").prunable


def test_a_channelwise_lambda_passes_channels_through():
    groups = find_groups(mixing_model(L.Lambda(lambda x: x * 2.0 + 1.0, name="affine")))
    first = by_producer(groups, "first")
    assert first.prunable and "affine" in first.passthrough and first.consumers == ("second",)


def test_a_shared_layer_keeps_its_groups_whole():
    inputs = keras.Input((8, 8, 3))
    shared = L.Conv2D(3, 1, name="shared")
    x = L.Conv2D(3, 1, name="first")(inputs)
    x = shared(shared(x))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="second")(x))))
    groups = find_groups(model)
    assert not by_producer(groups, "first").prunable
    assert not any(g.prunable for g in groups if "shared" in g.producers)


def test_keras3_operations_are_nodes():
    inputs = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(8, 1, name="first")(inputs)
    x = keras3.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    x = keras3.layers.GlobalAveragePooling2D()(keras3.layers.Conv2D(4, 1, name="second")(x))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(x))
    first = by_producer(find_groups(model), "first")
    assert first.prunable and first.consumers == ("second",) and len(first.passthrough) == 3


def test_bad_models_are_refused():
    with pytest.raises(TypeError, match="must be a Keras model"):
        find_groups("model.keras")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        find_groups(Subclassed())


def test_public_names():
    assert edgekeras.find_groups is channels.find_groups and edgekeras.shrink is channels.shrink
    assert edgekeras.ChannelPruning is edgekeras.callbacks.ChannelPruning
