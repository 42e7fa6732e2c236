"""The Keras 3 side of the seam: what pruning needs from a Keras 3 model, on any backend.

It goes through Keras 3's public API and `keras.ops`, so it works on the
TensorFlow, JAX and PyTorch backends alike: layers through `model.layers`
(`_flatten_layers` only for the sub-layers of a plain layer, which have no
public list), the optimizer's slots among `optimizer.variables` by the names
`add_variable_from_reference` gives them (the optimizer's own index only
where two weights share a path), masks as `keras.Variable`s applied with
`keras.ops`, in one `tf.function` or `jax.jit` per batch where the backend
has one.

Under JAX, `model.fit` keeps the weights and optimizer state outside the
variables during an epoch (the variables are emptied until the epoch ends).
`sync_state` writes that state back with the trainer's `jax_state_sync()`;
after it the trainer reads the variables again before its next step, so
masks assigned after a sync reach that step.
"""

import os

import keras
import numpy as np

from edgekeras.errors import EdgekerasError

from edgekeras.backend.keras3_graph import clone_model, flatten, is_graph_model, is_nested, layer_graph, model_from_config

__all__ = [
    "name",
    "keras",
    "is_model",
    "layers",
    "prunable_weight",
    "prunable_weights",
    "is_conv",
    "is_dense",
    "build_optimizer",
    "slot_variables",
    "learning_rate",
    "step",
    "sync_state",
    "to_numpy",
    "mask_variable",
    "apply_masks",
    "batch_function",
    "is_graph_model",
    "is_nested",
    "flatten",
    "clone_model",
    "layer_graph",
    "model_from_config",
    "tf_variables",
    "input_names",
    "input_shapes",
    "BackendError",
    "check_tensorflow",
    "save_file",
    "load_file",
]

name = "keras3"
# The file a model of this Keras is saved to when the caller picks no format
# (Keras 3's own format; its .h5 is a legacy one).
model_file_extension = ".keras"


class BackendError(EdgekerasError, ValueError):
    """Keras 3 runs on a backend that quantization-aware training and export cannot use."""


def check_tensorflow():
    """Raises `BackendError` unless Keras 3 runs on the TensorFlow backend (QAT and TFLite export need it)."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BackendError(
            f"Quantization-aware training and TFLite export of Keras 3 models need the TensorFlow backend. "
            f"Received: Keras 3 running on the {backend!r} backend. Fix: set KERAS_BACKEND=tensorflow before "
            "importing keras (pruning with edgekeras.callbacks.MagnitudePruning works on any backend; save the "
            "pruned model and load it under TensorFlow for QAT and export)."
        )


ops = keras.ops


def is_model(obj):
    """True if `obj` is a Keras 3 model."""
    return isinstance(obj, keras.Model)


def _children(layer):
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    # A plain layer holding sub-layers (a custom block, a wrapper) has no
    # public list of them; one level of its tracked layers, in order.
    return list(layer._flatten_layers(include_self=False, recursive=False))


def layers(model):
    """The layers under `model`, depth first in the order they were added, each once."""
    seen, found = set(), []

    def visit(layer):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            found.append(child)
            visit(child)

    visit(model)
    return found


_PRUNABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def prunable_weight(layer, model=None):
    """The variable pruning acts on for `layer`, or None (`model` is not needed on Keras 3).

    Keras 3 names the depthwise kernel `kernel` too; Conv2DTranspose is no
    Conv2D subclass here, so it is left out as on tf_keras.
    """
    del model
    if not isinstance(layer, _PRUNABLE):
        return None
    value = getattr(layer, "kernel", None)  # None while the layer is unbuilt
    # A LoRA-enabled or quantized layer returns a computed tensor: not prunable.
    return value if isinstance(value, keras.Variable) else None


def prunable_weights(model):
    """`[(layer, variable)]` for every prunable layer of `model`, in order."""
    pairs = []
    for layer in layers(model):
        weight = prunable_weight(layer)
        if weight is not None:
            pairs.append((layer, weight))
    return pairs


def is_conv(layer):
    """True for a 2D convolution, depthwise included (as tf_keras counts it)."""
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))


def is_dense(layer):
    """True for a Dense layer."""
    return isinstance(layer, keras.layers.Dense)


def build_optimizer(optimizer, variables):
    """Creates the optimizer's slots for `variables` if `fit` has not yet; False if it cannot."""
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return False
    if not optimizer.built:
        optimizer.build(variables)
    return True


def slot_variables(optimizer, weight):
    """The optimizer variables shadowing `weight` (momentum, velocity, averages, ...).

    `add_variable_from_reference` names a slot `<weight path with "/" as
    "_">_<slot name>` and gives it the weight's shape: that is the public
    link between a weight and its slots. Paths can repeat (two nested models
    each with a layer "stem"); then the slots are told apart the way the
    optimizer's own update step finds them, by the weight's index into its
    per-slot lists.
    """
    prefix = weight.path.replace("/", "_") + "_"
    shape = tuple(weight.shape)
    named = [v for v in optimizer.variables if v.name.startswith(prefix) and tuple(v.shape) == shape]
    if len({v.name for v in named}) == len(named):
        return named
    return _indexed_slots(optimizer, weight, named)


def _indexed_slots(optimizer, weight, named):
    try:
        index = optimizer._get_variable_index(weight)
        count = len(optimizer._trainable_variables)
    except (AttributeError, KeyError):
        raise ValueError(
            f"Cannot tell the optimizer slots of weight {weight.path!r} apart from another weight's of the same "
            "path: give the layers unique names (nested models included)."
        ) from None
    candidates = {id(v) for v in named}
    slots = []
    # Each slot kind is a list aligned with the optimizer's variables
    # (`_momentums`, `_velocities`, `momentums`, ...).
    for value in vars(optimizer).values():
        if isinstance(value, (list, tuple)) and len(value) == count and id(value[index]) in candidates:
            slots.append(value[index])
    return slots


def learning_rate(optimizer):
    """The optimizer's learning rate at its current step as a float, NaN when unreadable."""
    try:
        return float(ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return float("nan")


def step(optimizer):
    """`optimizer.iterations` as an int."""
    return int(ops.convert_to_numpy(optimizer.iterations))


def sync_state(model):
    """Writes the state a JAX `fit` holds outside the variables back into them."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def to_numpy(variable):
    """The value of a variable as a numpy array."""
    return np.asarray(ops.convert_to_numpy(variable))


def mask_variable(weight):
    """A non-trainable `keras.Variable` of ones shaped like `weight`."""
    return keras.Variable(ops.ones(weight.shape, weight.dtype), dtype=weight.dtype, trainable=False, name="edgekeras_mask")


def apply_masks(weights, masks, slots=None):
    """Multiplies every weight (and each of its slots, if given) by its mask, now."""
    for weight, mask in zip(weights, masks):
        weight.assign(ops.multiply(weight, mask))
    for mask, weight_slots in zip(masks, slots or ()):
        for slot in weight_slots:
            slot.assign(ops.multiply(slot, ops.cast(mask, slot.dtype)))


def _compiled_apply(weights, masks):
    """`apply_masks(weights, masks)` compiled where the backend can: a call per batch, not two ops per weight.

    Eager `keras.ops` cost tens of microseconds per op and weight, as much as
    a small model's whole training step; one `tf.function` (TensorFlow) or
    one `jax.jit` of the products (JAX) does them all at once. Other backends
    run `apply_masks` as it is.
    """
    kind = keras.backend.backend()
    if kind == "tensorflow":
        import tensorflow as tf

        @tf.function(autograph=False)
        def apply_traced():
            for weight, mask in zip(weights, masks):
                weight.assign(ops.multiply(weight, mask))

        return apply_traced
    if kind == "jax":
        import jax

        products = jax.jit(lambda values, factors: [ops.multiply(v, f) for v, f in zip(values, factors)])

        def apply_jitted():
            for weight, value in zip(weights, products([w.value for w in weights], [m.value for m in masks])):
                weight.assign(value)

        return apply_jitted
    return lambda: apply_masks(weights, masks)


def batch_function(model, weights, masks, slots, graph_masks=None, masks_at=None):
    """Returns the function run after every training batch, on any backend.

    Args:
        model: the model being trained.
        weights: the pruned variables.
        masks: their mask variables.
        slots: per weight, its optimizer slot variables.
        graph_masks: the traced form of `masks_at` (used by tf_keras); unused here.
        masks_at: None (masks never change) or `masks_at(step)` -> the new
            masks as numpy arrays, or None when they do not change at `step`.

    Returns:
        A function of no argument.
    """
    del graph_masks
    apply = _compiled_apply(weights, masks)

    def run():
        sync_state(model)
        new = masks_at(step(model.optimizer)) if masks_at is not None else None
        if new is not None:
            for mask, value in zip(masks, new):
                mask.assign(value)
            apply_masks((), masks, slots)  # the slots, only when the masks change
        apply()

    return run


def tf_variables(model):
    """The TensorFlow variables under `model`'s Keras 3 variables (TensorFlow backend).

    `tf.distribute` asks them, not Keras 3's wrappers, which strategy made them.
    """
    return [variable.value for variable in model.weights]


def input_names(model):
    """The names `fit` matches data to `model`'s inputs by, in `model.inputs` order (dict inputs by key)."""
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        return sorted(structure)
    return [tensor._keras_history.operation.name for tensor in model.inputs]


def input_shapes(model):
    """The shape of each of `model.inputs` as a tuple (None for a free dimension)."""
    return [tuple(tensor.shape) for tensor in model.inputs]


def save_file(model, path, kind, include_optimizer=False, custom_objects=None):
    """Writes `model` to `path` (`kind` "keras" or "h5"; Keras 3 has no SavedModel format to reload).

    A `.keras` file always holds the compiled optimizer; `.h5` one only with
    `include_optimizer`.
    """
    if kind == "tf":
        raise ValueError(
            "Argument `path` has no extension (a SavedModel directory), which Keras 3 cannot load a model from. "
            f"Received: path={os.fspath(path)!r}. Save a Keras 3 model as .keras (or .h5)."
        )
    with keras.saving.custom_object_scope(custom_objects or {}):
        if kind == "keras":
            model.save(path)
        else:
            keras.src.legacy.saving.legacy_h5_format.save_model_to_hdf5(model, path, include_optimizer=include_optimizer)


def load_file(path, compile, custom_objects, safe_mode):  # noqa: A002 - Keras' own keyword
    """Loads a model file Keras 3 wrote; `safe_mode` refuses `Lambda` bytecode (Keras 3's own check)."""
    return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
