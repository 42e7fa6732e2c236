"""Every architecture builds flat, its default cut splits, and `freeze_before` works on a model of yours."""

import numpy as np
import pytest

from edgekeras.choices import ARCHITECTURE_NORMALIZATION, ARCHITECTURES
from edgekeras.compat import keras
from edgekeras.models import (
    ARCHITECTURE_SPECS,
    WeightsError,
    build_transfer_model,
    freeze_before,
    get_architecture,
    is_nested,
    split_model,
)

# The larger EfficientNets take several seconds each to build twice on 2 cores.
SLOW = {"efficientnet_b1", "efficientnet_b2", "efficientnet_b3"}


def test_the_specs_and_the_choices_agree():
    assert tuple(ARCHITECTURE_SPECS) == ARCHITECTURES
    assert {name: spec.normalization for name, spec in ARCHITECTURE_SPECS.items()} == ARCHITECTURE_NORMALIZATION
    assert get_architecture("resnet50").normalization == "caffe"
    with pytest.raises(ValueError, match=r"Argument `architecture` must be one of \('mobilenet_v2', .*'resnet50'\)\. "
                                         r"Received: architecture='vgg16'"):
        get_architecture("vgg16")


@pytest.mark.parametrize(
    "architecture", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in ARCHITECTURES]
)
def test_each_architecture_builds_flat_and_splits_at_its_default_cut(architecture):
    spec = get_architecture(architecture)
    # Random weights, "auto": every base layer with weights trains (BatchNorm stays frozen by default).
    model = build_transfer_model(3, 32, architecture=architecture, weights=None, trainable_from="auto")
    assert not is_nested(model) and not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert (model.name, model.input_shape, model.output_shape) == (spec.model_name, (None, 32, 32, 3), (None, 3))
    kernels = [layer for layer in model.layers if hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel")]
    assert all(layer.trainable for layer in kernels)
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    # The default cut of pretrained weights crosses no skip connection: the frozen prefix can be cached.
    cut = build_transfer_model(3, 32, architecture=architecture, weights=None, trainable_from=spec.trainable_from)
    prefix, top, name = split_model(cut)
    assert name == spec.trainable_from
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(top(prefix(images)).numpy(), cut(images).numpy(), rtol=1e-4, atol=1e-5)


def test_auto_with_pretrained_weights_starts_at_the_architectures_cut(tmp_path):
    source = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None)
    path = str(tmp_path / "v3small.h5")
    source.save_weights(path)
    model = build_transfer_model(3, 32, architecture="mobilenet_v3_small", weights=path, trainable_from="auto")
    trainable = [layer.name for layer in model.layers if layer.trainable and layer.weights]
    assert trainable[0] == "expanded_conv_8/expand" and trainable[-1] == "classifier"
    np.testing.assert_array_equal(model.get_layer("Conv").get_weights()[0], source.get_layer("Conv").get_weights()[0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"architecture": "vgg16"}, ValueError, r"Argument `architecture` must be one of"),
        ({"architecture": "resnet50", "alpha": 0.5}, ValueError,
         r"Argument `alpha` must be 1.0 for 'resnet50': only the MobileNets have a width multiplier"),
        ({"architecture": "efficientnet_b0", "trainable_from": "block_16_expand"}, ValueError,
         r"`trainable_from` must name a layer of the base model\. Received: trainable_from='block_16_expand'\. "
         r"Valid names include block5a_expand_conv, .* \(or \"auto\": block6a_expand_conv\)"),
        ({"architecture": "mobilenet_v3_large", "image_size": 16}, ValueError,
         r"`image_size` must be an integer >= 32 \(MobileNetV3Large downsamples by 32\)"),
        ({"architecture": "resnet50", "weights": "/no/such.h5"}, WeightsError,
         r"Received: weights='/no/such.h5'\. Pass the path of a ResNet50 no-top \.h5 file"),
    ],
)
def test_bad_arguments_name_the_architecture(kwargs, error, match):
    options = dict(num_classes=3, image_size=32, weights=None)
    options.update(kwargs)
    with pytest.raises(error, match=match):
        build_transfer_model(**options)


def test_weights_of_another_architecture_name_the_one_asked_for(tmp_path):
    other = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    path = str(tmp_path / "mobilenet_v2.h5")
    other.save_weights(path)
    with pytest.raises(WeightsError, match=r"does not fit MobileNetV3Small\(alpha=1.0, include_top=False\)\. "
                                           r"Received: weights='.*mobilenet_v2.h5'"):
        build_transfer_model(3, 32, architecture="mobilenet_v3_small", weights=path)


def _user_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Conv2D(8, 3, name="body")(x)
    x = keras.layers.BatchNormalization(name="body_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


@pytest.mark.parametrize("trainable_from", ["body", 2])
def test_freeze_before_on_a_model_of_yours(trainable_from):
    model = freeze_before(_user_model(), trainable_from)
    assert [layer.name for layer in model.layers if layer.trainable and layer.weights] == ["body", "head"]
    assert freeze_before(_user_model(), "body", train_batchnorm=True).get_layer("body_bn").trainable
    with pytest.raises(ValueError, match=r"Argument `trainable_from` must name a layer of the model\. Received: "
                                         r"trainable_from='Conv_1'\. Valid names include 'body_bn', 'pool', 'head'"):
        freeze_before(_user_model(), "Conv_1")


def test_random_weights_get_batchnorm_statistics_that_converge():
    # keras.applications' 0.999 momentum leaves from-scratch statistics near 0/1 after a short run.
    model = build_transfer_model(3, 32, architecture="mobilenet_v3_small", weights=None, trainable_from="auto")
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
