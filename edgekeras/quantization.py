"""Quantization-aware copies of a model with TFMOT, with errors a user can act on.

`quantize_model` annotates a flat functional or Sequential model
(`edgekeras.quantize_configs.annotate_model`), picks TFMOT's default 8-bit
scheme, or its prune-preserving variant (TFMOT's
`Default8BitPrunePreserveQuantizeScheme`) when the model is sparse, both with
edgekeras' registry of the layers TFMOT lacks (Multiply, Rescaling,
Normalization, TFOpLambda arithmetic, ...: `edgekeras.quantize_configs`), and
returns the `quantize_apply` result with the original layers' `trainable`
flags re-applied: TFMOT rebuilds every layer from its config, and edgekeras
promises that frozen layers stay frozen. What has no config is reported, all
of it in one `UnquantizableLayersError`, before anything is built.

Plain QAT after pruning destroys the zeros (the fake-quantized weights are
trained densely); the prune-preserving scheme multiplies Conv2D and Dense
kernels by their sparsity mask inside the weight quantizer. It does not do so
for DepthwiseConv2D, which is why `EdgeTrainer` also runs
`edgekeras.callbacks.PreserveSparsity` during QAT of a sparse model.
"""

import re

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tf_keras.src.saving.serialization_lib import SafeModeScope

from edgekeras import sparsity
from edgekeras.compat import check_model, keras
from edgekeras.errors import EdgekerasError
from edgekeras.models import is_nested, is_quantization_aware
from edgekeras.quantize_configs import annotate_model, describe, is_quantizable, quantize_scheme

__all__ = [
    "SCHEMES",
    "UnquantizableLayersError",
    "is_sparse",
    "unquantizable_layers",
    "check_quantizable",
    "quantize_model",
    "is_quantization_aware",
    "check_layer_names",
    "frozen_weights_made_trainable",
    "calibrate_activation_ranges",
    "activation_ranges",
]

SCHEMES = ("auto", "default", "prune_preserve")

# A kernel with this many exact zeros was pruned: dense training never
# produces exact zeros at this rate.
SPARSE_THRESHOLD = 0.05


class UnquantizableLayersError(EdgekerasError, ValueError):
    """Layers of the model have no 8-bit quantization config.

    Attributes:
        layers: list of `(layer name, description)` pairs; the description
            is the class name, with the activation or TensorFlow op when
            that is what has no config (`edgekeras.quantize_configs.describe`).
    """

    def __init__(self, layers, detail=""):
        self.layers = list(layers)
        names = ", ".join(f"{name!r} ({cls})" for name, cls in self.layers)
        listed = ", ".join(repr(name) for name, _ in self.layers)
        super().__init__(
            f"Argument `model` has layers that TFMOT's 8-bit quantization-aware training cannot quantize. "
            f"Received: {names}. "
            f"Fix: keep them in float with `quantize_skip=[{listed}]` (config: `qat.skip_layers`; the int8 "
            "file computes them in float between DEQUANTIZE and QUANTIZE ops), or, where TFLite has an int8 "
            "kernel for what they compute, give each a `tfmot.quantization.keras.QuantizeConfig` with "
            "`quantize_configs={name: config}` (e.g. `edgekeras.quantize_configs.output_config()`, which "
            "quantizes the output only)." + (f" ({detail})" if detail else "")
        )


def is_sparse(model, threshold=SPARSE_THRESHOLD):
    """True if any prunable kernel of `model` has at least `threshold` exact zeros.

    Args:
        model: a tf_keras model.
        threshold: the fraction of exact zeros that marks a pruned kernel.

    Returns:
        Whether `model` was pruned (and QAT should preserve its zeros).

    Example:

    ```python
    scheme = "prune_preserve" if is_sparse(model) else "default"
    ```
    """
    return any(value >= threshold for value in sparsity.layer_sparsities(model).values())


def check_layer_names(values, argument):
    """Returns `values` as a tuple of layer names, or raises a ValueError naming `argument`.

    Args:
        values: a list of layer names, or None for none.
        argument: the argument's name, for the message.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: `values` is a string or holds something other than strings.

    Example:

    ```python
    check_layer_names(["doubler"], "quantize_skip")  # ("doubler",)
    ```
    """
    if values is None:
        return ()
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ValueError(
            f"Argument `{argument}` must be a list of layer names. Received: {argument}={values!r}"
        )
    return tuple(values)


def _check_graph_model(model, argument="model"):
    check_model(model, argument)
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise ValueError(
            f"Argument `{argument}` must be a functional or Sequential model for "
            f"quantization-aware training (TFMOT rebuilds it layer by layer). Received: "
            f"{argument}={model.name!r} of subclassed type {type(model).__name__}. Rebuild it "
            "with the functional API, or prune it with edgekeras.callbacks.MagnitudePruning "
            "and export it without QAT."
        )
    if is_nested(model):
        raise ValueError(
            f"Argument `{argument}` holds nested models, which TFMOT cannot quantize. "
            f"Flatten it first: edgekeras.models.flatten({argument})."
        )


def unquantizable_layers(model, quantize_skip=(), quantize_configs=None):
    """Returns `(name, description)` of the layers 8-bit QAT cannot quantize, all of them.

    A layer is quantizable when TFMOT's registry or edgekeras' configs
    (`edgekeras.quantize_configs.is_quantizable`) cover it and its
    activation. Layers in `quantize_skip` or `quantize_configs` are not
    reported.

    Args:
        model: a flat tf_keras model.
        quantize_skip: names of layers left in float.
        quantize_configs: `{layer name: tfmot QuantizeConfig}`.

    Returns:
        A list of `(layer name, description)` pairs; empty when QAT can proceed.

    Example:

    ```python
    unquantizable_layers(model, quantize_skip=["doubler"])
    ```
    """
    handled = set(quantize_skip) | set(quantize_configs or {})
    found = []
    for layer in model.layers:
        if layer.name in handled or is_quantizable(layer):
            continue
        found.append((layer.name, describe(layer)))
    return found


def frozen_weights_made_trainable(model):
    """Returns the variables of frozen layers that TFMOT's wrappers train anyway.

    `QuantizeWrapperV2.build` appends the quantized weights (kernels) to the
    wrapper's own trainable weights whatever the wrapped layer's `trainable`
    flag says, so a frozen Conv2D's kernel is trained during QAT. Moving the
    variables to the non-trainable list would change the weight order that
    `.h5` files rely on; `EdgeTrainer` restores them after every batch instead.

    Args:
        model: a quantization-aware model (from `quantize_model`).

    Returns:
        A list of `tf.Variable`s to hold at their values while training.

    Example:

    ```python
    frozen = frozen_weights_made_trainable(qat_model)
    ```
    """
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None or inner.trainable or not hasattr(layer, "_weight_vars"):
            continue
        trainable = {id(v) for v in layer.trainable_weights}
        found.extend(entry[0] for entry in layer._weight_vars if id(entry[0]) in trainable)
    return found


def _restore_trainable(quantized, original):
    flags = {layer.name: layer.trainable for layer in original.layers}
    for layer in quantized.layers:
        inner = getattr(layer, "layer", layer)
        if inner.name in flags:
            inner.trainable = flags[inner.name]


def check_quantizable(model, quantize_skip=(), quantize_configs=None):
    """Raises before any training when TFMOT could not make `model` quantization-aware.

    Args:
        model: a flat functional or Sequential tf_keras model.
        quantize_skip: names of layers to leave in float.
        quantize_configs: `{layer name: tfmot QuantizeConfig}`.

    Raises:
        UnquantizableLayersError: some layers have no quantization config.
        ValueError: a subclassed or nested model.

    Example:

    ```python
    check_quantizable(model, quantize_skip=["doubler"])
    ```
    """
    _check_graph_model(model)
    missing = unquantizable_layers(model, quantize_skip, quantize_configs)
    if missing:
        raise UnquantizableLayersError(missing)


def quantize_model(model, scheme="auto", quantize_skip=(), quantize_configs=None):
    """Returns a quantization-aware copy of `model` and the scheme used.

    Args:
        model: a flat functional or Sequential tf_keras model.
        scheme: `"auto"` (prune-preserving when `is_sparse(model)`, else
            default), `"default"` or `"prune_preserve"`.
        quantize_skip: names of layers to leave in float.
        quantize_configs: `{layer name: tfmot QuantizeConfig}` for layers the
            default registry does not know.

    Returns:
        `(qat_model, scheme_name)`; the copy has the model's weights and
        `trainable` flags, and is not compiled.

    Raises:
        UnquantizableLayersError: some layers have no quantization config.
        ValueError: bad argument, subclassed or nested model.

    Example:

    ```python
    qat_model, scheme = quantize_model(model)
    qat_model.compile("adam", "sparse_categorical_crossentropy")
    ```
    """
    _check_graph_model(model)
    if scheme not in SCHEMES:
        raise ValueError(f"Argument `scheme` must be one of {SCHEMES}. Received: scheme={scheme!r}")
    quantize_skip = check_layer_names(quantize_skip, "quantize_skip")
    quantize_configs = dict(quantize_configs or {})
    names = {layer.name for layer in model.layers}
    unknown = [name for name in (*quantize_skip, *quantize_configs) if name not in names]
    if unknown:
        raise ValueError(
            f"Arguments `quantize_skip` / `quantize_configs` name layers the model does not have: "
            f"{unknown}. Layer names: {sorted(names)[:20]}"
        )
    check_quantizable(model, quantize_skip, quantize_configs)
    if scheme == "auto":
        scheme = "prune_preserve" if is_sparse(model) else "default"

    # Cloning goes through layer configs; Keras' safe mode would refuse the
    # user's own Lambda layers, but this model is in memory, not untrusted data.
    with tfmot.quantization.keras.quantize_scope(), SafeModeScope(safe_mode=False):
        annotated = annotate_model(model, quantize_skip, quantize_configs)
        try:
            quantized = tfmot.quantization.keras.quantize_apply(annotated, scheme=quantize_scheme(scheme))
        except RuntimeError as error:
            # `quantize_apply`'s "Layer <name>:<class ...> is not supported": a
            # layer `check_quantizable` let through; still one message, with the fix.
            match = re.search(r"Layer (\S+?):<class '[\w.]*?(\w+)'>", str(error))
            if match is None:
                raise
            pairs = [(layer.name, describe(layer)) for layer in model.layers if layer.name == match.group(1)]
            raise UnquantizableLayersError(pairs or [(match.group(1), match.group(2))], detail=f"scheme {scheme!r}: {error}") from error
    _restore_trainable(quantized, model)
    return quantized, scheme


# MovingAverageQuantizer.__call__ hard-codes this decay.
_EMA_DECAY = 0.999


def activation_ranges(model):
    """Returns the variables of every activation range that TFMOT learns during QAT.

    These are the ranges kept as a moving average of the observed values
    (`MovingAverageQuantizer`): layer inputs, activations and outputs. Weight
    ranges are left out: TFMOT recomputes them from the weights at every
    step, so there is nothing to calibrate or watch.

    Args:
        model: a quantization-aware model (from `quantize_model`).

    Returns:
        A list of `(min_var, max_var)` pairs of `tf.Variable`s; empty for a
        model without quantization wrappers.

    Example:

    ```python
    qat_model, _ = quantize_model(model)
    widths = [float(hi.numpy() - lo.numpy()) for lo, hi in activation_ranges(qat_model)]
    ```
    """
    moving = tfmot.quantization.keras.quantizers.MovingAverageQuantizer
    found = []

    def add(quantizer, variables):
        if isinstance(quantizer, moving) and variables:
            found.append((variables["min_var"], variables["max_var"]))

    for layer in model.layers:
        for activation in getattr(layer, "_quantize_activations", ()):
            add(activation.quantizer, getattr(activation, "_pre_activation_vars", None))
            add(activation.quantizer, getattr(activation, "_post_activation_vars", None))
        output_quantizers = getattr(layer, "_output_quantizers", None)
        if output_quantizers:
            add(output_quantizers[0], getattr(layer, "_output_quantizer_vars", None))
        if hasattr(layer, "quantizer_vars"):
            add(getattr(layer, "quantizer", None), layer.quantizer_vars)
    return found


_moving_average_ranges = activation_ranges  # its earlier private name


def _inputs_of(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate_activation_ranges(model, data, steps=16):
    """Sets a QAT model's activation ranges from data before fine-tuning.

    TFMOT starts every activation range at [-6, 6] and moves it towards the
    observed range by 0.1 % per training step (an EMA with decay 0.999), so a
    QAT fine-tuning of a few hundred steps keeps ranges far from the real
    ones, and the quantized model loses accuracy for it. This runs `steps`
    forward passes in training mode, recovers each batch's observed range
    from the EMA update (`batch = (new - 0.999 * old) / 0.001`), sets the
    range to it so that later layers see calibrated inputs on the next pass,
    and finally sets each range to the mean over the passes after the first.
    Weight ranges need nothing: TFMOT recomputes them from the weights at
    every training step.

    Args:
        model: a quantization-aware model (from `quantize_model`).
        data: a `tf.data.Dataset` or iterable of `(x, y)` / `x` batches.
        steps: number of batches to use (>= 2).

    Returns:
        The number of range pairs calibrated.

    Example:

    ```python
    qat_model, _ = quantize_model(model)
    calibrate_activation_ranges(qat_model, train_dataset, steps=16)
    ```
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"Argument `steps` must be an integer >= 2. Received: steps={steps!r}")
    ranges = activation_ranges(model)
    if not ranges:
        return 0
    variables = [v for pair in ranges for v in pair]
    totals = [np.zeros(v.shape, np.float64) for v in variables]
    counted = 0
    iterator = iter(data.take(steps) if isinstance(data, tf.data.Dataset) else data)
    for index in range(steps):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        before = [v.numpy().astype(np.float64) for v in variables]
        model(_inputs_of(batch), training=True)
        for position, (variable, old) in enumerate(zip(variables, before)):
            observed = (variable.numpy().astype(np.float64) - _EMA_DECAY * old) / (1.0 - _EMA_DECAY)
            variable.assign(observed.astype(variable.dtype.as_numpy_dtype))
            if index > 0:
                totals[position] += observed
        counted += index > 0
    if counted:
        for variable, total in zip(variables, totals):
            variable.assign((total / counted).astype(variable.dtype.as_numpy_dtype))
    return len(ranges)
