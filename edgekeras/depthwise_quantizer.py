"""Depthwise kernels fake-quantized per output channel, as TFLite quantizes them.

TFLite's int8 DEPTHWISE_CONV_2D holds one weight scale per output channel,
and the converter takes a QAT model's weight fake-quant ranges as those
scales. TFMOT 0.8.1 gives Conv2D and DepthwiseConv2D the same weight
quantizer, with one range per entry of the kernel's last axis: a Conv2D's
output channels, but a depthwise kernel `(rows, cols, channels, multiplier)`
has the depth multiplier there, usually 1, so the whole kernel shares one
range (tensorflow/model-optimization#808). Its widest channel then sets the
rounding step of every other channel, in the Keras model and in the file
(MobileNetV2's depthwise channels differ in scale by orders of magnitude).

`DepthwiseWeightsQuantizer` keeps one range per output channel
(`channels * multiplier`, TFLite's order) by quantizing the kernel reshaped
to `(rows, cols, 1, channels * multiplier)`; `DepthwiseQuantizeConfig` is
TFMOT's convolution config with that quantizer, which `EdgeQuantizeRegistry`
gives every DepthwiseConv2D. Both are plain TFMOT subclasses, so a model
holding them saves and loads like any QAT model (`models.custom_objects`
names them).

Example:

```python
layer = keras.layers.DepthwiseConv2D(3)
config = DepthwiseQuantizeConfig()
config.get_weights_and_quantizers(layer)  # [(depthwise_kernel, DepthwiseWeightsQuantizer)]
```
"""

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras import quantizers
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as default_registry,
)

from edgekeras.compat import keras

__all__ = ["DepthwiseWeightsQuantizer", "DepthwiseQuantizeConfig"]


class DepthwiseWeightsQuantizer(quantizers.LastValueQuantizer):
    """Symmetric 8-bit fake quantization of a depthwise kernel with one range per output channel.

    The ranges are the last batch's (each channel's largest absolute
    weight), recomputed at every training step like TFMOT's convolution
    weights; they start at [-6, 6] until the first training call.

    Args:
        **config: accepted and ignored, so that a saved config (TFMOT's
            `LastValueQuantizer.get_config`) restores this quantizer.

    Example:

    ```python
    quantizer = DepthwiseWeightsQuantizer()
    ranges = quantizer.build(tf.TensorShape([3, 3, 32, 1]), "depthwise_kernel", layer)
    ranges["min_var"].shape  # (32,)
    ```
    """

    def __init__(self, **config):
        del config  # always 8 bits, per channel, symmetric, narrow range: what TFLite's kernel needs
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])

        def bound(suffix, value):
            return layer.add_weight(
                name + suffix, shape=(channels,), initializer=keras.initializers.Constant(value), trainable=False,
            )

        return {"min_var": bound("_min", -6.0), "max_var": bound("_max", 6.0)}

    def __call__(self, inputs, training, weights, **kwargs):
        shape = tf.shape(inputs)
        # (rows, cols, channels, multiplier) -> (rows, cols, 1, channels * multiplier): output
        # channel c * multiplier + m on the last axis, where TFMOT's per-axis op reads its ranges.
        per_channel = tf.reshape(inputs, tf.concat([shape[:2], [1, -1]], axis=0))
        return tf.reshape(super().__call__(per_channel, training, weights, **kwargs), shape)


class DepthwiseQuantizeConfig(default_registry.Default8BitConvQuantizeConfig):
    """TFMOT's DepthwiseConv2D config with `DepthwiseWeightsQuantizer` on the kernel.

    Args:
        weight_attrs: the kernel attribute (TFMOT's config keyword).
        activation_attrs: the fused activation attribute.
        quantize_output: whether the layer's output is fake-quantized too
            (TFMOT quantizes the activation instead).

    Example:

    ```python
    config = DepthwiseQuantizeConfig()
    config.get_weights_and_quantizers(keras.layers.DepthwiseConv2D(3))  # the per-channel quantizer
    ```
    """

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseWeightsQuantizer()
