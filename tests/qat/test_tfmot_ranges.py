"""Tests for edgekeras.qat.tfmot_ranges: a dead channel's bias survives QAT conversion."""

import numpy as np
import pytest

from edgekeras import keras
from edgekeras.litert import TFLiteModel, convert
from edgekeras.qat import tfmot_ranges as weight_ranges
from edgekeras.qat.tfmot_ranges import floored_weight_ranges
from edgekeras.quantization import calibrate_activation_ranges, quantize_model

L = keras.layers
DEAD = 2  # the channel whose weights are ~0, as in ImageNet MobileNetV2's block_11_expand


def dead_channel_net():
    """Conv + BatchNorm + ReLU6 whose channel DEAD outputs a constant 2.5 through its BatchNorm offset alone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    conv = L.Conv2D(4, 1, use_bias=False, name="expand")
    bn = L.BatchNormalization(name="expand_bn")
    outputs = L.ReLU(6.0, name="expand_relu")(bn(conv(inputs)))
    model = keras.Model(inputs, outputs)
    kernel = conv.get_weights()[0]
    kernel[..., DEAD] = 1e-8
    conv.set_weights([kernel])
    gamma, beta, mean, variance = bn.get_weights()
    beta[DEAD] = 2.5
    bn.set_weights([gamma, beta, mean, variance])
    bn.trainable = False
    return model


@pytest.fixture
def qat_and_images():
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (64, 6, 6, 3)).astype(np.float32)
    quantized, _ = quantize_model(dead_channel_net())
    calibrate_activation_ranges(quantized, [images[i:i + 16] for i in range(0, 64, 16)], steps=4)
    return quantized, images


def run(flatbuffer, images):
    return TFLiteModel(flatbuffer).predict(images)


def test_a_dead_channels_bias_reaches_the_int8_file(qat_and_images):
    quantized, images = qat_and_images
    expected = quantized.predict(images, verbose=0)
    assert np.allclose(expected[..., DEAD], 2.5, atol=0.05)
    lite = run(convert(quantized, "int8"), images)
    np.testing.assert_allclose(lite[..., DEAD], expected[..., DEAD], atol=0.05)
    np.testing.assert_allclose(lite, expected, atol=0.1)


def test_without_the_floor_the_converter_clamps_the_dead_channels_bias(qat_and_images, monkeypatch):
    # What the floor prevents, so that the test above can fail: the int32 bias overflows and the channel reads ~0.
    quantized, images = qat_and_images
    monkeypatch.setattr(weight_ranges, "RANGE_FLOOR", 0.0)
    lite = run(convert(quantized, "int8"), images)
    assert np.all(lite[..., DEAD] < 0.5)


def test_the_ranges_are_widened_during_the_block_and_restored_after(qat_and_images):
    quantized, _ = qat_and_images
    (low, high), = weight_ranges._kernel_ranges(quantized)
    before = low.numpy().copy(), high.numpy().copy()
    assert before[1][DEAD] < 1e-6
    with floored_weight_ranges(quantized) as widened:
        assert widened == 1
        assert high.numpy()[DEAD] == pytest.approx(weight_ranges.RANGE_FLOOR * before[1].max())
        assert low.numpy()[DEAD] == pytest.approx(-weight_ranges.RANGE_FLOOR * before[1].max())
        np.testing.assert_array_equal(np.delete(high.numpy(), DEAD), np.delete(before[1], DEAD))
    np.testing.assert_array_equal(low.numpy(), before[0])
    np.testing.assert_array_equal(high.numpy(), before[1])


def test_a_model_without_per_channel_ranges_is_left_alone():
    model = dead_channel_net()
    weights = [w.copy() for w in model.get_weights()]
    with floored_weight_ranges(model) as widened:
        assert widened == 0
    for after, saved in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(after, saved)
