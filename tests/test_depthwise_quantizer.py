"""DepthwiseConv2D kernels keep one fake-quant range per output channel, in the QAT model and in its int8 file."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgekeras import keras
from edgekeras.depthwise_quantizer import DepthwiseQuantizeConfig, DepthwiseWeightsQuantizer
from edgekeras.litert import convert
from edgekeras.models import load_model, save_model
from edgekeras.quantization import calibrate_activation_ranges, quantize_model

L = keras.layers
# Output channel c * multiplier + m scales by SCALES[c * multiplier + m]: 1,000-fold apart.
SCALES = np.array([1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.002, 0.001], np.float32)


def depthwise_net(multiplier=2):
    inputs = keras.Input((6, 6, 4))
    x = L.DepthwiseConv2D(3, depth_multiplier=multiplier, padding="same", activation="relu", name="dw")(inputs)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = rng.uniform(-1.0, 1.0, (3, 3, 4, multiplier)).astype(np.float32)
    kernel *= SCALES[: 4 * multiplier].reshape(1, 1, 4, multiplier)
    model.get_layer("dw").set_weights([kernel, np.zeros(4 * multiplier, np.float32)])
    return model


def images(count=16):
    return np.random.default_rng(1).uniform(0.0, 1.0, (count, 6, 6, 4)).astype(np.float32)


def per_channel_fake_quant(kernel):
    """TFLite's int8 depthwise weights: symmetric, narrow range, one scale per output channel."""
    flat = kernel.reshape(kernel.shape[0], kernel.shape[1], -1)
    scale = np.abs(flat).max(axis=(0, 1)) / 127.0
    return (np.round(flat / scale) * scale).reshape(kernel.shape)


def depthwise_wrapper(quantized):
    return next(layer for layer in quantized.layers if getattr(getattr(layer, "layer", None), "name", None) == "dw")


@pytest.mark.parametrize("multiplier", [1, 2])
def test_each_output_channel_gets_its_own_range_and_rounding_step(multiplier):
    model = depthwise_net(multiplier)
    quantized, _ = quantize_model(model)
    wrapper = depthwise_wrapper(quantized)
    assert isinstance(wrapper.quantize_config, DepthwiseQuantizeConfig)
    ranges = {v.name.split("/")[-1].split(":")[0]: v for v in wrapper.weights if "depthwise_kernel_m" in v.name}
    assert {name: v.shape.as_list() for name, v in ranges.items()} == {
        "depthwise_kernel_min": [4 * multiplier], "depthwise_kernel_max": [4 * multiplier],
    }
    quantized(images(), training=True)  # weight ranges follow the weights at every training step
    kernel = model.get_layer("dw").get_weights()[0]
    widest = np.abs(kernel.reshape(3, 3, -1)).max(axis=(0, 1))
    np.testing.assert_allclose(ranges["depthwise_kernel_max"].numpy(), widest, rtol=1e-6)
    np.testing.assert_allclose(ranges["depthwise_kernel_min"].numpy(), -widest, rtol=1e-6)
    quantizer = wrapper.quantize_config.weight_quantizer
    fake = quantizer(kernel, False, {"min_var": ranges["depthwise_kernel_min"], "max_var": ranges["depthwise_kernel_max"]})
    np.testing.assert_allclose(fake.numpy(), per_channel_fake_quant(kernel), rtol=1e-5, atol=1e-7)


def test_the_int8_file_scales_each_depthwise_channel_by_its_own_range():
    quantized, _ = quantize_model(depthwise_net())
    data = images()
    calibrate_activation_ranges(quantized, [data[:8], data[8:]], steps=2)
    quantized(data, training=True)
    interpreter = Interpreter(model_content=convert(quantized, "int8"))
    (weights,) = [
        tensor for tensor in interpreter.get_tensor_details()
        if tensor["dtype"] == np.int8 and tensor["shape"].tolist() == [1, 3, 3, 8]
    ]
    scales = weights["quantization_parameters"]["scales"]
    kernel = depthwise_net().get_layer("dw").get_weights()[0]
    # TFMOT's own quantizer gave all 8 channels the widest one's scale: the small ones rounded to 0.
    np.testing.assert_allclose(scales, np.abs(kernel.reshape(3, 3, -1)).max(axis=(0, 1)) / 127.0, rtol=1e-5)


def test_a_model_with_per_channel_depthwise_ranges_saves_and_loads(tmp_path):
    quantized, _ = quantize_model(depthwise_net())
    data = images()
    quantized(data, training=True)
    save_model(quantized, tmp_path / "qat.h5")
    loaded = load_model(tmp_path / "qat.h5")
    assert isinstance(depthwise_wrapper(loaded).quantize_config, DepthwiseQuantizeConfig)
    np.testing.assert_allclose(loaded(data).numpy(), quantized(data).numpy(), atol=1e-6)


def test_the_quantizer_ignores_a_saved_config():
    # `LastValueQuantizer.get_config` saves its four settings; restoring them must not change the quantizer.
    quantizer = DepthwiseWeightsQuantizer(**DepthwiseWeightsQuantizer().get_config())
    assert quantizer.get_config() == {"num_bits": 8, "per_axis": True, "symmetric": True, "narrow_range": True}
