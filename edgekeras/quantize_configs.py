"""Quantize configs for the layers of deployed architectures that TFMOT's 8-bit registry lacks.

TFMOT 0.8.1's `Default8BitQuantizeRegistry` knows convolutions, Dense, ReLU,
Add, Concatenate, pooling and reshaping layers. Deployed architectures also
use `Multiply` (squeeze-excite, hard-swish), `Rescaling` and `Normalization`
(preprocessing), Python arithmetic on tensors (`TFOpLambda`: MobileNetV3's
hard-sigmoid is `ReLU(6.)(x + 3.) * (1. / 6.)`), convolutions with a fused
`swish` (EfficientNet) and activations TFMOT refuses. Each layer gets a kind
after what the TFLite converter makes of it in an int8 file (`quantize_kind`):

| kind           | in the int8 .tflite file                          | QAT config                  |
| -------------- | ------------------------------------------------- | --------------------------- |
| `OUTPUT`       | one int8 kernel (MUL, SUB, ADD, MEAN, ...) that   | fake-quant on the output    |
|                | requantizes to its own output scale               | (`output_config()`)         |
| `FLOAT_INSIDE` | two or more ops with no range between them        | fake-quant on the output:   |
|                | (Rescaling with an offset: MUL, ADD), run in      | what follows is int8        |
|                | float between a DEQUANTIZE and a QUANTIZE         |                             |
| `PASS_THROUGH` | an op that keeps its input's scale (RESHAPE,      | none (`pass_through_config`)|
|                | TRANSPOSE, slicing) or has a fixed one (LOGISTIC) |                             |

`tests/test_quantization.py` converts a model holding every kind and checks
that only `FLOAT_INSIDE` layers leave float ops. `TFOpLambda` layers cannot
sit inside TFMOT's `QuantizeWrapperV2` (it infers their output shape by calling
them without the constants they were called with, and records their call as
a list), so `annotate_model` puts a TFMOT `QuantizeLayer` after them. A
convolution or Dense whose activation TFMOT would not quantize before it
(`swish`: the convolution would stay float) is annotated as a linear copy and
an `Activation` layer. Only TFMOT's classes and `depthwise_quantizer.py`'s
end up in the model: `models.load_model` (or `models.custom_objects`) loads it.

`EdgeQuantizeScheme` and `EdgePrunePreserveQuantizeScheme` are TFMOT's two
8-bit schemes with a registry that knows these layers (TFMOT's prune-preserve
registry claims every weightless layer, then fails on `Normalization`), and
with one range per output channel for depthwise kernels, as the int8 file
has (`depthwise_quantizer.py`). `annotate_model`'s example shows the use.
"""

import functools

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras import quantize_annotate, quantize_layer, quantizers
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as prune_preserve_scheme,
    prune_preserve_quantize_registry as prune_preserve_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs as configs,
    default_8bit_quantize_registry as default_registry,
    default_8bit_quantize_scheme as default_scheme,
)

from edgekeras.compat import keras
from edgekeras.depthwise_quantizer import DepthwiseQuantizeConfig

__all__ = [
    "OUTPUT", "FLOAT_INSIDE", "PASS_THROUGH", "LAYER_KINDS", "OP_KINDS", "ACTIVATION_KINDS",
    "EdgeQuantizeRegistry", "EdgePrunePreserveQuantizeRegistry", "EdgeQuantizeScheme", "EdgePrunePreserveQuantizeScheme",
    "annotate_model", "describe", "is_quantizable", "output_config", "pass_through_config", "quantize_kind",
    "quantize_scheme",
]

OUTPUT = "output"
FLOAT_INSIDE = "float-inside"
PASS_THROUGH = "pass-through"

_layers = keras.layers

# Layer classes TFMOT's registry lacks -> kind (Rescaling: see quantize_kind).
LAYER_KINDS = {
    _layers.Multiply: OUTPUT,  # MUL
    _layers.Subtract: OUTPUT,  # SUB
    _layers.Average: FLOAT_INSIDE,  # ADD, then MUL by 1/n
    _layers.Normalization: FLOAT_INSIDE,  # SUB, then MUL by constants
    # Only asked for when TFMOT's layout transform did not fold it into the
    # convolution before it (after Add, Concatenate, an input): MUL then ADD.
    _layers.BatchNormalization: FLOAT_INSIDE,
    # AVERAGE_POOL_2D keeps its input's scale: TFMOT's output fake-quant cost a requantize op.
    _layers.AveragePooling1D: PASS_THROUGH,
    _layers.AveragePooling2D: PASS_THROUGH,
    _layers.SpatialDropout2D: PASS_THROUGH,
    _layers.GaussianNoise: PASS_THROUGH,
    _layers.GaussianDropout: PASS_THROUGH,
}

# `TFOpLambda.symbol` (the TensorFlow function a Python expression on tensors
# called) -> kind. Anything not listed is reported as unquantizable.
OP_KINDS = {
    "__operators__.add": OUTPUT,
    "math.add": OUTPUT,
    "math.subtract": OUTPUT,
    "math.multiply": OUTPUT,
    "math.truediv": OUTPUT,  # by a constant: the converter makes it a MUL
    "math.maximum": OUTPUT,
    "math.minimum": OUTPUT,
    "clip_by_value": OUTPUT,
    "nn.relu": OUTPUT,
    "nn.relu6": OUTPUT,
    "nn.silu": OUTPUT,  # LOGISTIC (fixed scale), then MUL
    "math.reduce_mean": OUTPUT,
    "math.negative": FLOAT_INSIDE,  # no int8 NEG kernel
    "math.sigmoid": PASS_THROUGH,  # fixed output scale
    "math.tanh": PASS_THROUGH,  # fixed output scale
    "reshape": PASS_THROUGH,
    "expand_dims": PASS_THROUGH,
    "compat.v1.squeeze": PASS_THROUGH,
    "compat.v1.transpose": PASS_THROUGH,
    "__operators__.getitem": PASS_THROUGH,
}

# `Activation` functions TFMOT's Default8BitActivationQuantizeConfig refuses.
ACTIVATION_KINDS = {
    "hard_sigmoid": FLOAT_INSIDE,  # MUL, ADD, MINIMUM, RELU
    "elu": FLOAT_INSIDE,  # the converter keeps ELU in float
}

# The activations TFMOT's own Activation config handles.
_TFMOT_ACTIVATIONS = frozenset({"relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh"})
# Activations TFMOT's QuantizeAwareActivation quantizes correctly inside a
# convolution or Dense: the others are split off (`annotate_model`).
_FUSED_ACTIVATIONS = frozenset({"linear", "relu", "softmax", "sigmoid", "tanh", "gelu"})
_SPLIT_LAYERS = (_layers.Conv2D, _layers.DepthwiseConv2D, _layers.Dense, _layers.SeparableConv2D)
# TFMOT's layout transform rewrites these into layers its registry knows.
_TRANSFORMED_LAYERS = (_layers.SeparableConv1D, _layers.SeparableConv2D)


def _is_op_layer(layer):
    # TFOpLambda and SlicingOpLambda record the TF symbol they call; a Lambda has none.
    return getattr(layer, "symbol", None) is not None and not isinstance(layer, _layers.Lambda)


def _activation_name(layer):
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _split_activation(layer):
    """The activation name to split off `layer`, or None."""
    name = _activation_name(layer) if type(layer) in _SPLIT_LAYERS else None
    return None if name in _FUSED_ACTIVATIONS else name


def _activation_supported(name):
    return name in _TFMOT_ACTIVATIONS or name in ACTIVATION_KINDS


def quantize_kind(layer):
    """Returns `OUTPUT`, `FLOAT_INSIDE` or `PASS_THROUGH` for a layer this module covers, else None.

    Args:
        layer: a tf_keras layer.

    Returns:
        The kind (see the module's table), or None for layers left to TFMOT's
        registry, or to nobody.

    Example:

    ```python
    quantize_kind(keras.layers.Multiply())  # "output"
    ```
    """
    if _is_op_layer(layer):
        return OP_KINDS.get(layer.symbol)
    if type(layer) is _layers.Activation:
        return ACTIVATION_KINDS.get(_activation_name(layer))
    if type(layer) is _layers.Rescaling:
        # x * scale + offset: one MUL (or ADD) unless both are used.
        both = np.any(np.asarray(layer.scale) != 1) and np.any(np.asarray(layer.offset) != 0)
        return FLOAT_INSIDE if both else OUTPUT
    return LAYER_KINDS.get(type(layer))


def is_quantizable(layer):
    """Returns whether `annotate_model` and this module's schemes can quantize `layer`.

    Args:
        layer: a tf_keras layer (input layers count as quantizable).

    Returns:
        True when a config exists for the layer and for its activation.

    Example:

    ```python
    unquantizable = [layer.name for layer in model.layers if not is_quantizable(layer)]
    ```
    """
    if isinstance(layer, _layers.InputLayer) or quantize_kind(layer) is not None:
        return True
    split = _split_activation(layer)
    if split is not None and not _activation_supported(split):
        return False
    return isinstance(layer, _TRANSFORMED_LAYERS) or _registry().supports(layer)


def describe(layer):
    """Returns the class name of `layer`, with what makes it unquantizable when that is not the class.

    Args:
        layer: a tf_keras layer.

    Returns:
        E.g. `"Lambda"`, `"Activation 'selu'"`, `"Conv2D with activation 'selu'"`,
        `"TFOpLambda tf.math.erf"`.

    Example:

    ```python
    describe(keras.layers.Activation("selu"))  # "Activation 'selu'"
    ```
    """
    kind = type(layer).__name__
    if _is_op_layer(layer):
        return f"{kind} tf.{layer.symbol}"
    if type(layer) is _layers.Activation:
        return f"{kind} {_activation_name(layer)!r}"
    split = _split_activation(layer)
    if split is not None and not _activation_supported(split):
        return f"{kind} with activation {split!r}"
    return kind


@functools.lru_cache(maxsize=1)
def _registry():
    # For `supports` only: `quantize_apply` gets a new registry (TFMOT's transforms change the configs it hands out in place).
    return EdgeQuantizeRegistry()


def _config(kind):
    # A new instance per layer: TFMOT's Concatenate transform switches off the output quantizer of the config it is handed, in place.
    return pass_through_config() if kind == PASS_THROUGH else output_config()


class EdgeQuantizeRegistry(default_registry.Default8BitQuantizeRegistry):
    """TFMOT's default 8-bit registry, completed with `LAYER_KINDS` and `ACTIVATION_KINDS`.

    DepthwiseConv2D kernels get one range per output channel, as in the int8
    file (`DepthwiseQuantizeConfig`; TFMOT's shares one). `supports` is also exact for `Activation` layers: TFMOT's registry
    accepts every one and fails later, inside `quantize_apply`, on
    activations its config does not know. Op layers (`OP_KINDS`) are never
    wrapped: `annotate_model` puts a `QuantizeLayer` after them.

    Example:

    ```python
    EdgeQuantizeRegistry().get_quantize_config(keras.layers.Multiply())
    ```
    """

    def __init__(self, disable_per_axis=False):
        super().__init__(disable_per_axis)
        if not disable_per_axis:
            self._layer_quantize_map[_layers.DepthwiseConv2D] = DepthwiseQuantizeConfig()

    def supports(self, layer):
        if _is_op_layer(layer):
            return False
        if quantize_kind(layer) is not None:
            return True
        if type(layer) is _layers.Activation and not _activation_supported(_activation_name(layer)):
            return False
        return super().supports(layer)

    def get_quantize_config(self, layer):
        if not self.supports(layer):
            raise ValueError(
                f"`get_quantize_config()` called on an unsupported layer {layer.name!r} "
                f"({type(layer).__name__}): edgekeras has no 8-bit config for it."
            )
        kind = quantize_kind(layer)
        return _config(kind) if kind is not None else super().get_quantize_config(layer)


class EdgePrunePreserveQuantizeRegistry(prune_preserve_registry.Default8bitPrunePreserveQuantizeRegistry):
    """TFMOT's prune-preserving registry on top of `EdgeQuantizeRegistry`.

    Conv2D and Dense kernels get TFMOT's sparsity-preserving weight
    quantizers; every other layer gets `EdgeQuantizeRegistry`'s config
    (TFMOT's raises for any other layer with trainable weights, and for
    weightless layers the default registry does not know).

    Example:

    ```python
    EdgePrunePreserveQuantizeRegistry().supports(keras.layers.Normalization())  # True
    ```
    """

    def __init__(self):
        super().__init__()
        self._base = EdgeQuantizeRegistry()

    def supports(self, layer):
        return self._base.supports(layer)

    def get_quantize_config(self, layer):
        config = self._base.get_quantize_config(layer)
        if type(layer) in self._LAYERS_CONFIG_MAP and layer.trainable_weights:
            return self.apply_sparsity_preserve_quantize_config(layer, config)
        return config


class EdgeQuantizeScheme(default_scheme.Default8BitQuantizeScheme):
    """TFMOT's default 8-bit scheme with `EdgeQuantizeRegistry` (see `quantize_scheme`)."""

    def get_quantize_registry(self):
        return EdgeQuantizeRegistry()


class EdgePrunePreserveQuantizeScheme(prune_preserve_scheme.Default8BitPrunePreserveQuantizeScheme):
    """TFMOT's prune-preserving 8-bit scheme with `EdgePrunePreserveQuantizeRegistry` (see `quantize_scheme`)."""

    def get_quantize_registry(self):
        return EdgePrunePreserveQuantizeRegistry()


def quantize_scheme(name):
    """Returns the scheme object for `"default"` or `"prune_preserve"`.

    Args:
        name: `"default"` or `"prune_preserve"`.

    Returns:
        A TFMOT `QuantizeScheme`.

    Raises:
        ValueError: another name.

    Example:

    ```python
    scheme = quantize_scheme("prune_preserve")
    ```
    """
    schemes = {"prune_preserve": EdgePrunePreserveQuantizeScheme, "default": EdgeQuantizeScheme}
    if name in schemes:
        return schemes[name]()
    raise ValueError(f"Argument `name` must be 'default' or 'prune_preserve'. Received: name={name!r}")


def output_config():
    """Returns a config that quantizes only a layer's output (TFMOT's `Default8BitOutputQuantizeConfig`).

    For a layer TFLite computes with one int8 kernel (an elementwise op, a
    `Lambda` doing arithmetic) that TFMOT does not know.

    Returns:
        A new `QuantizeConfig`.

    Example:

    ```python
    quantize_model(model, quantize_configs={"doubler": output_config()})
    ```
    """
    return configs.Default8BitOutputQuantizeConfig()


def pass_through_config():
    """Returns a config that quantizes nothing (TFMOT's `NoOpQuantizeConfig`).

    For a layer that moves values without computing (TFLite keeps its scale).

    Returns:
        A new `QuantizeConfig`.

    Example:

    ```python
    quantize_model(model, quantize_configs={"crop": pass_through_config()})
    ```
    """
    return configs.NoOpQuantizeConfig()


def _quantize_output(name, quantizer=None):
    """Applies `quantizer` (default: TFMOT's activation quantizer), as a `QuantizeLayer`, to a single float output."""
    if quantizer is None:
        quantizer = quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
    created = []  # one layer, however often a shared layer is called

    def apply(outputs):
        if not tf.is_tensor(outputs) or not outputs.dtype.is_floating:
            return outputs
        if not created:
            created.append(quantize_layer.QuantizeLayer(quantizer, name=f"{name}_output_quant"))
        return created[0](outputs)

    return apply


class _Annotator:
    """What `annotate_model` calls for each layer of the model, and after it."""

    def __init__(self, quantize_skip, quantize_configs, followers):
        self.skip, self.configs, self.followers = set(quantize_skip), dict(quantize_configs), followers
        self.replaced = {}  # id(original layer) -> (layer to call, [layers applied to its output])
        self.linear_copies = []  # (copy, original): weights are set once the copy is built

    def __call__(self, layer):
        if id(layer) not in self.replaced:
            self.replaced[id(layer)] = self._replace(layer)
        return self.replaced[id(layer)]

    def _replace(self, layer):
        config = self.configs.get(layer.name)
        if _is_op_layer(layer):
            return layer, self._after_op(layer, config)
        if config is not None:
            return quantize_annotate.QuantizeAnnotate(layer, quantize_config=config), []
        if layer.name in self.skip:
            # Float; its output quantized where int8 follows, not inside a run of skipped layers (TFMOT quantizes
            # only layers it knows): a range there clipped the float conv output, e.g. before its BatchNorm.
            followers = self.followers.get(layer.name, set())
            return layer, [_quantize_output(layer.name)] if not followers or followers - self.skip else []
        split = _split_activation(layer)
        if split is None:
            return quantize_annotate.QuantizeAnnotate(layer), []
        linear = type(layer).from_config({**layer.get_config(), "activation": "linear"})
        linear.trainable = layer.trainable
        self.linear_copies.append((linear, layer))
        activation = _layers.Activation(layer.activation, name=f"{layer.name}_{split}")
        return quantize_annotate.QuantizeAnnotate(linear), [quantize_annotate.QuantizeAnnotate(activation)]

    def _after_op(self, layer, config):
        # Op layers are never wrapped (see the module docstring): the output
        # quantizer, the user's config's own if given, follows in a QuantizeLayer.
        if config is not None:
            output_quantizers = config.get_output_quantizers(layer)
            return [_quantize_output(layer.name, output_quantizers[0])] if output_quantizers else []
        if layer.name in self.skip or quantize_kind(layer) in (OUTPUT, FLOAT_INSIDE):
            return [_quantize_output(layer.name)]
        return []


def _replay(model, annotator):
    """Calls `annotator`'s layers along `model`'s graph; returns the new model."""
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=layer.name)
        for tensor, layer in zip(model.inputs, model._input_layers)
    ]
    usage = model._tensor_usage_count
    computed = {str(id(reference)): [tensor] * usage[str(id(reference))] for reference, tensor in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = node.map_arguments(computed)
            layer, after = annotator(node.layer)
            outputs = layer(*args, **kwargs)
            for follower in after:
                outputs = follower(outputs)
            for key, tensor in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                computed[key] = [tensor] * usage[key]
    outputs = [computed[str(id(reference))].pop() for reference in model.outputs]
    return keras.Model(
        tf.nest.pack_sequence_as(model._nested_inputs, inputs),
        tf.nest.pack_sequence_as(model._nested_outputs, outputs),
        name=model.name,
    )


def annotate_model(model, quantize_skip=(), quantize_configs=None):
    """Returns `model` annotated for `quantize_apply` with one of this module's schemes.

    Every layer is annotated (its config then comes from the scheme's
    registry) except input layers, layers in `quantize_skip` (kept in float,
    their output quantized where a quantized layer takes it) and op layers
    (`TFOpLambda`), which are never wrapped: a `QuantizeLayer` after them
    quantizes their output when their kind (or the output quantizer of the
    config given for them) says so. A Conv2D/DepthwiseConv2D/Dense/
    SeparableConv2D with an activation TFMOT cannot quantize inside it
    (`swish`, ...) becomes a linear copy (same weights) and an `Activation`
    layer. Other layers in `quantize_configs` get the config given.

    Args:
        model: a flat functional or Sequential tf_keras model.
        quantize_skip: names of layers to leave in float.
        quantize_configs: `{layer name: QuantizeConfig}`.

    Returns:
        A new model sharing `model`'s layers, annotated; `model` is unchanged.

    Example:

    ```python
    annotated = annotate_model(model, quantize_skip=["doubler"])
    with tfmot.quantization.keras.quantize_scope():
        qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme=quantize_scheme("default"))
    ```
    """
    followers = {}  # a skipped layer's output is quantized only where a quantized layer takes it
    for node in (node for nodes in model._nodes_by_depth.values() for node in nodes if not node.is_input):
        for inbound in tf.nest.flatten(node.inbound_layers):
            followers.setdefault(inbound.name, set()).add(node.layer.name)
    annotator = _Annotator(quantize_skip, quantize_configs or {}, followers)
    annotated = _replay(model, annotator)
    for linear, original in annotator.linear_copies:
        linear.set_weights(original.get_weights())
    return annotated
