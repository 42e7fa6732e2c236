"""Graph surgery on tf_keras models: flatten, clone, split, inspect.

TFMOT's quantization-aware training rejects functional models that contain
other models as layers ("nested" models), which is how transfer models are
usually written (`base = MobileNetV2(...); outputs = head(base(inputs))`).
`flatten` turns a user's nested functional model into an equivalent flat one
that shares its layers and so its weights. `split_model` cuts a model before
its first trainable layer (the frozen prefix's activations can then be
cached), `assemble_with_weights` puts a trained part back into a copy of the
whole. `custom_objects` names the TFMOT classes models of every phase may hold.
"""

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry as prune_preserve,
)

from edgekeras.backend import check_model, for_model
from edgekeras.depthwise_quantizer import DepthwiseQuantizeConfig, DepthwiseWeightsQuantizer

__all__ = [
    "assemble_with_weights",
    "clone_with_weights",
    "custom_objects",
    "flatten",
    "is_nested",
    "is_pruning_wrapped",
    "is_quantization_aware",
    "split_model",
]


def _is_graph_model(layer):
    return for_model(layer).is_graph_model(layer)


def is_nested(model):
    """Returns True if a model holds other functional/Sequential models as layers.

    Args:
        model: a tf_keras or Keras 3 model.

    Returns:
        Whether any layer of `model` is itself a functional or Sequential model.

    Example:

    ```python
    model = flatten(model) if is_nested(model) else model
    ```
    """
    return for_model(model).is_nested(model)


def flatten(model, name=None):
    """Returns a flat functional model equivalent to `model`.

    Functional and Sequential sub-models are inlined: their layers become
    layers of the returned model. The layers are shared, not copied, so the
    flat model has the same weights and computes the same outputs. A
    sub-model called with `training=False` keeps what that means in the
    model's Keras for all of its layers. Subclassed sub-models cannot be
    inlined and stay single layers.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model.
        name: name of the flat model (default: the model's name).

    Returns:
        A flat functional model, or `model` itself if it is already flat.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: `model` is subclassed, so it has no graph to flatten.

    Example:

    ```python
    base = keras.Sequential([keras.layers.Dense(4, input_shape=(3,))])
    inputs = keras.Input((3,))
    nested = keras.Model(inputs, keras.layers.Dense(2)(base(inputs)))
    flat = flatten(nested)
    ```
    """
    check_model(model)
    return for_model(model).flatten(model, name)


def clone_with_weights(model):
    """A new model with `model`'s graph, weights and `trainable` flags, sharing nothing.

    Works on quantization-aware models of either engine (TFMOT's classes are
    in scope) and on the user's in-memory Lambda layers. The clone's
    variables belong to the `tf.distribute` strategy whose scope is current,
    so calling this outside any scope gives a plain copy of a distributed
    model (what the TFLite converter and file writers need).

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model.

    Returns:
        The copy.

    Example:

    ```python
    snapshot = clone_with_weights(model)  # later training of `model` leaves it alone
    ```
    """
    copy = for_model(model).clone_model(model, custom_objects())
    copy.set_weights(model.get_weights())
    for source, target in zip(model.layers, copy.layers):
        target.trainable = source.trainable
    return copy


def split_model(model):
    """Splits `model` before its first layer with trainable weights.

    Returns `(prefix, top, cut_name)`: `prefix` maps the model's input to the
    activations entering the cut layer, `top` maps those activations to the
    output. `top` shares its layers with `model`, so training `top` trains
    `model`. Parameter-free layers such as Dropout right before the cut stay
    in `top`, since they behave differently in training. Returns
    `(None, model, None)` when the first layer is already trainable.

    Args:
        model: a flat tf_keras or Keras 3 functional model.

    Returns:
        `(prefix, top, cut_name)`.

    Raises:
        ValueError: the cut falls where a skip connection crosses it (the top
            would need a second input), or nothing is trainable.

    Example:

    ```python
    prefix, top, cut = split_model(build_transfer_model(10, 96, weights=None, trainable_from="block_16_expand"))
    ```
    """
    keras_module = for_model(model).keras
    layers = [layer for layer in model.layers if not isinstance(layer, keras_module.layers.InputLayer)]
    index = next((i for i, layer in enumerate(layers) if layer.trainable_weights), None)
    if index is None:
        raise ValueError(f"Model {model.name!r} has no trainable weights: nothing to train.")
    while index > 0 and isinstance(layers[index - 1], keras_module.layers.Dropout):
        index -= 1
    if index == 0:
        return None, model, None
    cut = layers[index]
    # One input or output is passed as a tensor, not a one-element list:
    # Keras 3 warns on every call whose structure differs from the model's.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    try:
        prefix = keras_module.Model(inputs, cut.input, name=f"{model.name}_frozen_prefix")
        top = keras_module.Model(cut.input, outputs, name=f"{model.name}_top")
    except ValueError as error:
        raise ValueError(
            f"Cannot cache the frozen part of {model.name!r} before layer {cut.name!r}: a skip "
            f"connection crosses that point ({error}). Start fine-tuning at a block boundary "
            '(e.g. model.trainable_from = "block_16_expand") or set train.cache_features = false.'
        ) from error
    return prefix, top, cut.name


def assemble_with_weights(full_model, trained):
    """A copy of `full_model` carrying `trained`'s weights where names match.

    Args:
        full_model: the whole model (e.g. before `split_model`).
        trained: a model sharing layer names with it (e.g. the trained top).

    Returns:
        A copy of `full_model`; `full_model` itself is not changed.

    Example:

    ```python
    prefix, top, _ = split_model(model)
    top.fit(...)
    deployed = assemble_with_weights(model, top)
    ```
    """
    assembled = clone_with_weights(full_model)
    names = {layer.name for layer in assembled.layers}
    for layer in trained.layers:
        if layer.weights and layer.name in names:
            assembled.get_layer(layer.name).set_weights(layer.get_weights())
    return assembled


def custom_objects():
    """Returns `{name: class}` for the TFMOT classes edgekeras models may hold.

    `load_model` applies these itself; this is for code that calls
    `keras.models.load_model` or `model_from_config` directly.

    Returns:
        A dict of class names to classes.

    Example:

    ```python
    with keras.utils.custom_object_scope(custom_objects()):
        model = keras.models.load_model("qat.h5")
    ```
    """
    objects = {
        "PrunePreserveDefaultWeightsQuantizer": prune_preserve.PrunePreserveDefaultWeightsQuantizer,
        "PrunePreserveDefault8BitWeightsQuantizer": prune_preserve.PrunePreserveDefault8BitWeightsQuantizer,
        "PrunePreserveDefault8BitConvWeightsQuantizer": prune_preserve.PrunePreserveDefault8BitConvWeightsQuantizer,
        "DepthwiseQuantizeConfig": DepthwiseQuantizeConfig,
        "DepthwiseWeightsQuantizer": DepthwiseWeightsQuantizer,
    }
    # quantize_scope() is a CustomObjectScope over TFMOT's own dictionaries.
    for mapping in tfmot.quantization.keras.quantize_scope().custom_objects:
        objects.update(mapping)
    return objects


_QUANTIZE_LAYER_TYPES = {"QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer"}


def _layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def is_quantization_aware(model):
    """Returns True if `model` has TFMOT quantization wrappers (QAT).

    Args:
        model: a tf_keras model.

    Returns:
        Whether `model` was made quantization-aware (`quantize_apply`).

    Example:

    ```python
    conversion = "int8" if is_quantization_aware(model) else "float32"
    ```
    """
    return bool(_layer_types(model) & _QUANTIZE_LAYER_TYPES)


def is_pruning_wrapped(model):
    """Returns True if `model` still holds TFMOT `PruneLowMagnitude` wrappers.

    Args:
        model: a tf_keras model.

    Returns:
        Whether `model` needs `strip_pruning` before export.

    Example:

    ```python
    if is_pruning_wrapped(model):
        model = tfmot.sparsity.keras.strip_pruning(model)
    ```
    """
    return "PruneLowMagnitude" in _layer_types(model)
