"""The layers of a Keras 3 quantization-aware model (`edgekeras.qat.keras3`).

Four layers carry everything the TFLite converter needs to write an int8
file without representative data, all through TensorFlow's fake-quant ops
(`tf.quantization.fake_quant_with_min_max_vars[_per_channel]`), which the
converter turns into the ranges of the int8 tensors:

- `ActivationQuantizer`: a per-tensor, asymmetric 8-bit range held in two
  non-trainable variables, moved during training by an exponential moving
  average of each batch's min and max (TFMOT's `MovingAverageQuantizer`:
  decay 0.999, ranges always hold zero), or set by calibration.
- `QuantizedWeighted`: a Conv2D, DepthwiseConv2D, Conv1D or Dense with the
  BatchNormalization and constant arithmetic around it folded into its
  kernel and bias the way the converter folds them (the moving statistics:
  BN is frozen during QAT, its gamma and beta still train), the folded kernel
  fake-quantized per output channel (Dense, Conv1D: per tensor), symmetric,
  narrow range, and a ReLU or ReLU6 applied last, as the int8 kernel's
  fused activation. With
  `preserve_sparsity` the kernel is multiplied by its zero mask first; the
  fold scales whole output channels, so zeros stay zeros in the file.
- `FixedQuantizer`: the constant int8 range TFLite gives a sigmoid, softmax
  or tanh output (scale 1/256 or 1/128).
- `ConstantOp`: `x + c`, `x - c` or `x * c` with a constant (Rescaling,
  Normalization, hard-sigmoid and a standalone BatchNormalization are
  written as these, so each op of the file gets its own range).

Example:

```python
quantizer = ActivationQuantizer()
y = quantizer(keras.ops.ones((2, 4)))  # fake-quantized to the initial range [-6, 6]
```
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from edgekeras.qat.tfmot_ranges import RANGE_FLOOR

__all__ = ["ActivationQuantizer", "FixedQuantizer", "QuantizedWeighted", "ConstantOp", "CONSTANT_OPS", "FUSED_ACTIVATIONS"]

CONSTANT_OPS = ("add", "sub", "mul")
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# TFMOT's MovingAverageQuantizer decay and initial range.
_EMA_DECAY = 0.999
_INITIAL_RANGE = 6.0
_MIN_WIDTH = 1e-3


def _check_enabled(enabled):
    if not isinstance(enabled, bool):
        raise ValueError(f"Argument `enabled` must be a boolean. Received: enabled={enabled!r}")


@keras.saving.register_keras_serializable(package="edgekeras")
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor asymmetric 8-bit fake quantization with a moving-average range.

    Called with `observe=False` it applies its range without moving it: the
    inputs of a concatenation take the concatenation's range that way.

    Args:
        ema_decay: the decay of the moving average of the batch min and max in
            training, in [0, 1).
        enabled: False passes values through unchanged (the ranges still
            move in training); a way to compare with the float model.
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Raises:
        ValueError: `ema_decay` outside [0, 1), `enabled` not a boolean.

    Example:

    ```python
    quantizer = ActivationQuantizer(ema_decay=0.99)
    quantizer(x, training=True)  # moves the range 1 % towards x's, then fake-quantizes
    ```
    """

    def __init__(self, ema_decay=_EMA_DECAY, enabled=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay < 1:
            raise ValueError(f"Argument `ema_decay` must be in [0, 1). Received: ema_decay={ema_decay!r}")
        _check_enabled(enabled)
        self.ema_decay = float(ema_decay)
        self.enabled = enabled
        # Set by `edgekeras.qat.keras3.Keras3QAT.calibrate` (eager calls only): the observed ranges.
        self.observed = None

    def build(self, input_shape):
        def bound(name, value):
            # Replicas of a distributed fit each see their own batch: their ranges are averaged (as TFMOT does).
            return self.add_weight(
                name=name, shape=(), initializer=keras.initializers.Constant(value), trainable=False, aggregation="mean",
            )

        self.min_var = bound("min", -_INITIAL_RANGE)
        self.max_var = bound("max", _INITIAL_RANGE)

    def call(self, inputs, training=False, observe=True):
        low, high = self.min_var, self.max_var
        if observe and (self.observed is not None or training):
            # The range always holds zero, so that zero is exact (padding, ReLU).
            batch_low = ops.minimum(ops.min(inputs), 0.0)
            batch_high = ops.maximum(ops.max(inputs), 0.0)
            if self.observed is not None:
                low, high = batch_low, batch_high
                self.observed.append((float(low), float(high)))
            else:
                low = self.ema_decay * self.min_var + (1.0 - self.ema_decay) * batch_low
                high = self.ema_decay * self.max_var + (1.0 - self.ema_decay) * batch_high
            self.min_var.assign(low)
            self.max_var.assign(high)
        if not self.enabled:
            return inputs
        # A tensor that is always zero (a dead ReLU) still needs a usable int8 scale: the
        # interpreter refuses the file when a scale collapses next to its input's.
        high = ops.maximum(high, low + _MIN_WIDTH)
        return tf.quantization.fake_quant_with_min_max_vars(inputs, low, high, num_bits=8, narrow_range=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay, "enabled": self.enabled}


@keras.saving.register_keras_serializable(package="edgekeras")
class FixedQuantizer(keras.layers.Layer):
    """8-bit fake quantization to a constant range: the fixed output scale of TFLite's int8 sigmoid, softmax, tanh.

    Args:
        low: the range's minimum.
        high: the range's maximum (> low).
        enabled: False passes values through unchanged.
        **kwargs: `keras.layers.Layer` arguments.

    Raises:
        ValueError: `high <= low`, `enabled` not a boolean.

    Example:

    ```python
    FixedQuantizer(0.0, 255 / 256)(keras.ops.sigmoid(x))  # LOGISTIC's int8 output: scale 1/256
    ```
    """

    def __init__(self, low, high, enabled=True, **kwargs):
        super().__init__(**kwargs)
        if not float(high) > float(low):
            raise ValueError(f"Argument `high` must be greater than `low`. Received: low={low!r}, high={high!r}")
        _check_enabled(enabled)
        self.low, self.high, self.enabled = float(low), float(high), enabled

    def call(self, inputs):
        if not self.enabled:
            return inputs
        return tf.quantization.fake_quant_with_min_max_args(inputs, min=self.low, max=self.high, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high, "enabled": self.enabled}


@keras.saving.register_keras_serializable(package="edgekeras")
class ConstantOp(keras.layers.Layer):
    """`inputs <op> value` for a constant `value` that broadcasts against the inputs.

    Args:
        op: "add", "sub" or "mul".
        value: a number or a nested list (e.g. one value per channel).
        **kwargs: `keras.layers.Layer` arguments.

    Raises:
        ValueError: an unknown `op`.

    Example:

    ```python
    ConstantOp("mul", 1 / 127.5)(x)
    ```
    """

    def __init__(self, op, value, **kwargs):
        super().__init__(**kwargs)
        if op not in CONSTANT_OPS:
            raise ValueError(f"Argument `op` must be one of {CONSTANT_OPS}. Received: op={op!r}")
        self.op = op
        self.value = np.asarray(value, "float32").tolist()

    def call(self, inputs):
        value = ops.convert_to_tensor(np.asarray(self.value, "float32"))
        return {"add": ops.add, "sub": ops.subtract, "mul": ops.multiply}[self.op](inputs, value)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "value": self.value}


def _channel_vector(value, channels):
    value = np.asarray(value, "float32")
    return np.broadcast_to(value.reshape(-1) if value.size == channels else value, (channels,))


@keras.saving.register_keras_serializable(package="edgekeras")
class QuantizedWeighted(keras.layers.Layer):
    """A convolution or Dense with BN and constant arithmetic folded in, fake-quantized weights.

    Args:
        layer: the Conv1D/Conv2D, DepthwiseConv2D or Dense (a built copy whose
            weights it uses; its `activation` must be linear).
        batch_norm: the BatchNormalization after it, or None.
        steps: the folded chain after the layer, in order: `["bn", None]`
            for `batch_norm`, or `[op, value]` with op in `CONSTANT_OPS` and
            value a number or one number per output channel.
        activation: "linear", "relu" or "relu6", applied after the fold.
        input_steps: the scalar `[op, value]` constants applied to the input
            before the layer, folded into its kernel (`mul`) and bias (`add`,
            `sub`: only for a layer that pads nothing).
        preserve_sparsity: multiply the kernel by a mask of its nonzero
            entries (set with `set_mask`), so that pruned weights stay zero.
        enabled: False leaves the folded kernel unquantized.
        **kwargs: `keras.layers.Layer` arguments.

    Raises:
        ValueError: an unknown activation or step.

    Example:

    ```python
    layer = QuantizedWeighted(conv, batch_norm=bn, steps=[["bn", None]], activation="relu6")
    ```
    """

    def __init__(
        self, layer, batch_norm=None, steps=(), activation="linear", input_steps=(), preserve_sparsity=False, enabled=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"Argument `activation` must be one of {FUSED_ACTIVATIONS}. Received: activation={activation!r}")
        _check_enabled(enabled)
        for op, _ in steps:
            if op != "bn" and op not in CONSTANT_OPS:
                raise ValueError(f"Argument `steps` holds an unknown op. Received: steps={steps!r}")
        for op, value in input_steps:
            if op not in CONSTANT_OPS or np.size(value) != 1:
                raise ValueError(f"Argument `input_steps` must hold scalar constant ops. Received: input_steps={input_steps!r}")
        self.layer = layer
        self.batch_norm = batch_norm
        self.steps = [[op, None if value is None else np.asarray(value, "float32").tolist()] for op, value in steps]
        self.activation = activation
        self.input_steps = [[op, float(np.reshape(value, ()))] for op, value in input_steps]
        self.preserve_sparsity = bool(preserve_sparsity)
        self.enabled = enabled
        self.depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(self.layer.compute_output_shape(input_shape))
        if self.preserve_sparsity:
            self.mask = self.add_weight(name="mask", shape=tuple(self.layer.kernel.shape), initializer="ones", trainable=False)

    def set_mask(self):
        """Sets the sparsity mask to the kernel's nonzero entries (a no-op without `preserve_sparsity`)."""
        if self.preserve_sparsity:
            self.mask.assign(ops.cast(ops.not_equal(self.layer.kernel, 0.0), "float32"))

    def _fold(self, channels, shift):
        """Returns the per-channel `(scale, shift)` of `layer output * scale + shift` after the steps."""
        scale = ops.ones((channels,))
        for op, value in self.steps:
            if op == "bn":
                bn = self.batch_norm
                gamma = bn.gamma if bn.scale else 1.0
                beta = bn.beta if bn.center else 0.0
                factor = gamma / ops.sqrt(bn.moving_variance + bn.epsilon)
                scale, shift = scale * factor, (shift - bn.moving_mean) * factor + beta
            elif op == "mul":
                value = _channel_vector(value, channels)
                scale, shift = scale * value, shift * value
            else:
                shift = shift + _channel_vector(value, channels) * (1.0 if op == "add" else -1.0)
        return scale, shift

    def folded_kernel(self):
        """Returns `(kernel, bias)` as the file holds them before quantization: masked and folded."""
        kernel = self.layer.kernel
        if self.preserve_sparsity:
            kernel = kernel * self.mask
        shape = tuple(kernel.shape)
        channels = shape[-2] * shape[-1] if self.depthwise else shape[-1]
        bias = self.layer.bias if self.layer.use_bias else ops.zeros((channels,))
        # layer(x * a + b) = layer(x) with kernel a * k, plus b * (the kernel's sum per output channel):
        # exact when no padding reads the border, which the plan checks for a nonzero b.
        input_scale, input_shift = 1.0, 0.0
        for op, value in self.input_steps:
            if op == "mul":
                input_scale, input_shift = input_scale * value, input_shift * value
            else:
                input_shift += value if op == "add" else -value
        if input_shift:
            sums = ops.sum(kernel, axis=(0, 1) if self.depthwise else tuple(range(len(shape) - 1)))
            bias = bias + input_shift * ops.reshape(sums, (channels,))
        kernel = kernel * input_scale
        scale, shift = self._fold(channels, bias)
        return kernel * ops.reshape(scale, shape[-2:] if self.depthwise else (channels,)), shift

    def _quantize(self, kernel):
        shape = tuple(kernel.shape)
        if isinstance(self.layer, (keras.layers.Dense, keras.layers.Conv1D)):
            # One range for the whole kernel, as TFMOT quantizes Dense: the converter transposes a Dense
            # kernel into FULLY_CONNECTED's (units, inputs), and expands a Conv1D kernel to 2-D, and
            # refuses a per-channel range across either.
            bound = ops.stop_gradient(ops.max(ops.abs(kernel)))
            bound = ops.where(bound > 0, bound, 1.0)
            return tf.quantization.fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=8, narrow_range=True)
        # Depthwise kernels (rows, cols, channels, multiplier) get one range per output channel,
        # channel * multiplier + m, the order of TFLite's DEPTHWISE_CONV_2D weights.
        per_channel = ops.reshape(kernel, shape[:-2] + (1, shape[-2] * shape[-1])) if self.depthwise else kernel
        reduce_axes = tuple(range(len(per_channel.shape) - 1))
        bound = ops.stop_gradient(ops.max(ops.abs(per_channel), axis=reduce_axes))
        # An all-zero channel keeps a nonzero range: its weights quantize to exact zeros either way.
        bound = ops.where(bound > 0, bound, ops.ones_like(bound))
        # A near-empty channel's range is floored (its weights round to 0, what they are worth): at its own
        # tiny scale the file's int32 bias (input scale x weight scale) would overflow and be clamped.
        bound = ops.maximum(bound, RANGE_FLOOR * ops.max(bound))
        quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(per_channel, -bound, bound, num_bits=8, narrow_range=True)
        return ops.reshape(quantized, shape)

    def call(self, inputs):
        kernel, bias = self.folded_kernel()
        if self.enabled:
            kernel = self._quantize(kernel)
        layer = self.layer
        if self.depthwise:
            outputs = ops.depthwise_conv(
                inputs, kernel, strides=layer.strides, padding=layer.padding,
                dilation_rate=layer.dilation_rate, data_format=layer.data_format,
            )
        elif isinstance(layer, keras.layers.Dense):
            outputs = ops.matmul(inputs, kernel)
        else:
            outputs = layer.convolution_op(inputs, kernel)
        outputs = outputs + bias
        if self.activation == "relu":
            return ops.relu(outputs)
        return ops.relu6(outputs) if self.activation == "relu6" else outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "layer": serialize(self.layer),
            "batch_norm": None if self.batch_norm is None else serialize(self.batch_norm),
            "steps": self.steps,
            "activation": self.activation,
            "input_steps": self.input_steps,
            "preserve_sparsity": self.preserve_sparsity,
            "enabled": self.enabled,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        if config.get("batch_norm") is not None:
            config["batch_norm"] = keras.saving.deserialize_keras_object(config["batch_norm"])
        return cls(**config)
