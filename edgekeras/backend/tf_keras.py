"""The tf_keras (Keras 2) side of the seam: what pruning needs from a tf_keras model.

Layer traversal follows `_flatten_layers` (tracking order, through nested
models and TFMOT's wrappers), kernels held by a `QuantizeWrapper` are found in
the wrapper, and the optimizer's slots are read from its internals (legacy
optimizers by slot name, the others by `_index_dict`), because tf_keras has
no public mapping from a weight to its slots. The masks are applied by one
traced `tf.function` per batch.
"""

import warnings

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tf_keras.src.saving.serialization_lib import SafeModeScope

from edgekeras.backend.tf_keras_graph import clone_model, flatten, is_graph_model, is_nested, layer_graph, model_from_config

__all__ = [
    "name",
    "keras",
    "Callback",
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
    "check_tensorflow",
    "save_file",
    "load_file",
]

name = "tf_keras"
# The file a model of this Keras is saved to when the caller picks no format
# (`.keras` cannot reload TFMOT's quantization-aware models).
model_file_extension = ".h5"

# tf_keras' CallbackList calls private hooks (`_implements_train_batch_hooks`,
# `_supports_tf_logs`) on every callback; Keras 3's only calls the public
# ones, so a tf_keras Callback is the base both `fit`s accept.
Callback = keras.callbacks.Callback


def is_model(obj):
    """True if `obj` is a tf_keras model."""
    return isinstance(obj, keras.Model)


def layers(model):
    """The layers under `model`, in tracking order, through nested models and wrappers."""
    seen, found = set(), []
    # `_flatten_layers` follows tracking order (the order layers were
    # assigned or added) and recurses into nested models and wrappers;
    # `model.submodules` would sort them by attribute name instead.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def _attribute(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise_kernel"
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return None
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return "kernel"
    return None


def _short_name(variable):
    return variable.name.rsplit("/", 1)[-1].split(":")[0]


def _wrapped_variables(model):
    # A QuantizeWrapper moves the kernel out of the wrapped layer's weights
    # and sets the layer attribute to the fake-quantized tensor of its last
    # call; the variable is kept in the wrapper's `_weight_vars`.
    found = {}
    for layer in layers(model):
        inner = getattr(layer, "layer", None)
        for entry in getattr(layer, "_weight_vars", ()) if inner is not None else ():
            variable = entry[0]
            if isinstance(variable, tf.Variable):
                found[(id(inner), _short_name(variable))] = variable
    return found


def prunable_weight(layer, model=None):
    """The variable pruning acts on for `layer` (see `edgekeras.sparsity.prunable_weight`)."""
    attribute = _attribute(layer)
    if attribute is None:
        return None
    value = getattr(layer, attribute, None)
    if isinstance(value, tf.Variable):
        return value
    if model is not None:
        return _wrapped_variables(model).get((id(layer), attribute))
    return None


def prunable_weights(model):
    """`[(layer, variable)]` for every prunable layer of `model`, in order."""
    wrapped = _wrapped_variables(model)
    pairs = []
    for layer in layers(model):
        attribute = _attribute(layer)
        if attribute is None:
            continue
        value = getattr(layer, attribute, None)
        if not isinstance(value, tf.Variable):
            value = wrapped.get((id(layer), attribute))
        if value is not None:
            pairs.append((layer, value))
    return pairs


def is_conv(layer):
    """True for a 2D convolution (DepthwiseConv2D included: it subclasses Conv2D in tf_keras)."""
    return isinstance(layer, keras.layers.Conv2D)


def is_dense(layer):
    """True for a Dense layer."""
    return isinstance(layer, keras.layers.Dense)


def build_optimizer(optimizer, variables):
    """Creates the optimizer's slots for `variables` now; False if this optimizer cannot.

    Building early is what `apply_gradients` does on the first step anyway
    (it is idempotent); it lets mask updates reach the slots from the start.
    """
    try:
        if isinstance(optimizer, keras.optimizers.legacy.Optimizer):
            optimizer._create_all_weights(variables)
        elif isinstance(optimizer, keras.optimizers.Optimizer):
            with tf.init_scope():
                optimizer.build(variables)
        else:
            return False
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return False  # unusual optimizer: its slots appear on the first batch
    return True


def slot_variables(optimizer, weight):
    """The optimizer variables shadowing `weight` (momentum, m, v, ...)."""
    if hasattr(optimizer, "get_slot_names"):  # legacy optimizers
        slots = []
        for slot_name in optimizer.get_slot_names():
            try:
                slots.append(optimizer.get_slot(weight, slot_name))
            except (KeyError, ValueError):
                continue
        return slots
    index_dict = getattr(optimizer, "_index_dict", None)
    if not index_dict:
        return []
    index = index_dict.get(optimizer._var_key(weight))
    if index is None:  # frozen weight: the optimizer does not track it
        return []
    slots = []
    # New-style optimizers keep one list per slot kind (`_momentums`,
    # `_velocities`, `momentums`, ...), aligned with the variable index.
    for attribute, value in vars(optimizer).items():
        if attribute == "_variables" or not isinstance(value, (list, tuple)):
            continue
        if len(value) != len(index_dict):
            continue
        candidate = value[index]
        if isinstance(candidate, tf.Variable) and candidate.shape == weight.shape:
            slots.append(candidate)
    return slots


def learning_rate(optimizer):
    """The optimizer's learning rate at its current step as a float, NaN when unreadable."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        rate = getattr(optimizer, "lr", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    try:
        return float(keras.backend.get_value(rate))
    except (TypeError, ValueError):
        return float("nan")


def step(optimizer):
    """`optimizer.iterations` as an int."""
    # get_value reads a MirroredVariable (under a tf.distribute strategy) as
    # well as a plain one; int() of a MirroredVariable fails.
    return int(keras.backend.get_value(optimizer.iterations))


def sync_state(model):
    """Nothing to do: tf_keras trains on the variables themselves."""


def to_numpy(variable):
    """The value of a variable as a numpy array."""
    return np.asarray(keras.backend.get_value(variable))


def mask_variable(weight):
    """A variable of ones shaped like `weight`, outside any traced function."""
    with tf.init_scope():
        return tf.Variable(tf.ones_like(weight), trainable=False, name="edgekeras_mask")


def apply_masks(weights, masks, slots=None):
    """Multiplies every weight (and each of its slots, if given) by its mask, now."""
    for weight, mask in zip(weights, masks):
        weight.assign(weight * mask)
    for mask, weight_slots in zip(masks, slots or ()):
        for slot in weight_slots:
            slot.assign(slot * mask)


def batch_function(model, weights, masks, slots, graph_masks=None, masks_at=None):
    """Returns the function run after every training batch: one traced `tf.function`.

    Args:
        model: the model being trained.
        weights: the pruned variables.
        masks: their mask variables.
        slots: per weight, its optimizer slot variables.
        graph_masks: None (masks never change) or `graph_masks(step)` ->
            `(should_update, thunk returning the new masks)`, traceable.
        masks_at: the eager form of `graph_masks` (used by Keras 3); unused here.

    Returns:
        A function of no argument.
    """
    del masks_at
    iterations = model.optimizer.iterations

    def update_masks():
        should_update, computed = graph_masks(tf.identity(iterations))

        def assign():
            ops = []
            for mask, value, weight_slots in zip(masks, computed(), slots):
                ops.append(mask.assign(value, read_value=False))
                ops.extend(slot.assign(slot * value, read_value=False) for slot in weight_slots)
            with tf.control_dependencies(ops):
                return tf.constant(True)

        return tf.cond(should_update, assign, lambda: tf.constant(False))

    @tf.function(autograph=False)
    def run():
        deps = [update_masks()] if graph_masks is not None else []
        with tf.control_dependencies(deps):
            for weight, mask in zip(weights, masks):
                weight.assign(weight * mask, read_value=False)

    return run


def tf_variables(model):
    """`model`'s variables, which are TensorFlow variables already."""
    return list(model.weights)


def input_names(model):
    """The names `fit` matches data to `model`'s inputs by, in `model.inputs` order (dict inputs by key)."""
    nested = getattr(model, "_nested_inputs", None)
    if isinstance(nested, dict):  # Keras matches a dict of data to a dict of inputs by key, in sorted order
        return sorted(nested)
    return list(model.input_names)


def input_shapes(model):
    """The shape of each of `model.inputs` as a tuple (None for a free dimension)."""
    return [tuple(tensor.shape.as_list()) for tensor in model.inputs]


def check_tensorflow():
    """tf_keras always runs on TensorFlow: nothing to check."""


def save_file(model, path, kind, include_optimizer=False, custom_objects=None):
    """Writes `model` to `path` (`kind` "keras", "h5" or "tf") with `custom_objects` (TFMOT's) in scope."""
    with tfmot.quantization.keras.quantize_scope(custom_objects or {}):
        if kind == "keras":  # the .keras format always stores the compiled optimizer
            model.save(path)
            return
        with warnings.catch_warnings():
            # Keras calls .h5 "legacy"; for QAT models it is one of
            # the two formats that reload, and it was asked for.
            warnings.filterwarnings("ignore", message=r".*HDF5 file via `model.save\(\)`")
            model.save(path, include_optimizer=include_optimizer)


def load_file(path, compile, custom_objects, safe_mode):  # noqa: A002 - Keras' own keyword
    """Loads a tf_keras model file with `custom_objects` (TFMOT's) in scope and Keras' safe mode set."""
    with tfmot.quantization.keras.quantize_scope(custom_objects or {}), SafeModeScope(safe_mode):
        return keras.models.load_model(path, compile=compile, safe_mode=safe_mode)
