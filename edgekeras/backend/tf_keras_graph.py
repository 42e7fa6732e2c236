"""Graph surgery on tf_keras models: nested sub-models inlined, clones made.

The tf_keras counterparts of `edgekeras.backend.keras3_graph`, written
against tf_keras' functional internals (`_nodes_by_depth`, node arguments).
"""

import collections

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.saving.serialization_lib import SafeModeScope

__all__ = ["GraphNode", "is_graph_model", "is_nested", "flatten", "clone_model", "layer_graph", "model_from_config"]

# One call of a layer in a functional graph: tensors are named by hashable
# keys, `shapes` maps each key to its static shape (a tuple, None where
# unknown), `call(values)` runs the node again on numpy inputs (constants of
# the original call kept) and returns its outputs as numpy arrays.
GraphNode = collections.namedtuple("GraphNode", "layer inputs outputs call")
LayerGraph = collections.namedtuple("LayerGraph", "inputs outputs nodes shapes")


def is_graph_model(layer):
    """Returns True if `layer` is a tf_keras functional or Sequential model (it has a graph)."""
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def is_nested(model):
    """Returns True if a layer of `model` is itself a functional or Sequential model."""
    return any(is_graph_model(layer) for layer in model.layers)


def _replay(model, inputs, training=None):
    """Calls the layers of `model`'s graph on `inputs`, recursing into sub-models."""
    tensor_dict = {}
    usage = model._tensor_usage_count
    for reference, tensor in zip(model.inputs, tf.nest.flatten(inputs)):
        key = str(id(reference))
        tensor_dict[key] = [tensor] * usage[key]
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = node.map_arguments(tensor_dict)
            if training is not None and "training" in kwargs:
                kwargs["training"] = training
            elif training is not None and getattr(node.layer, "_expects_training_arg", False):
                kwargs["training"] = training
            if is_graph_model(node.layer):
                # A nested call like `base(x, training=False)` keeps its meaning
                # for every inner layer once flattened.
                inner_training = kwargs.pop("training", training)
                kwargs.pop("mask", None)
                if kwargs:
                    raise ValueError(
                        f"Cannot flatten sub-model {node.layer.name!r}: it is "
                        f"called with arguments {sorted(kwargs)}, which a flat "
                        "graph cannot express."
                    )
                outputs = _replay(node.layer, args[0] if len(args) == 1 else args, inner_training)
            else:
                outputs = node.layer(*args, **kwargs)
            for key, tensor in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensor_dict[key] = [tensor] * usage[key]
    outputs = [tensor_dict[str(id(reference))].pop() for reference in model.outputs]
    return tf.nest.pack_sequence_as(model._nested_outputs, outputs)


def flatten(model, name=None):
    """Returns a flat functional tf_keras model sharing `model`'s layers, or `model` if already flat.

    Raises:
        ValueError: `model` is subclassed (it has no graph), or a sub-model
            is called with arguments a flat graph cannot express.
    """
    if not is_graph_model(model):
        raise ValueError(
            f"Argument `model` must be a functional or Sequential model to be "
            f"flattened. Received: model={model.name!r} of subclassed type "
            f"{type(model).__name__}."
        )
    if not is_nested(model):
        return model
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=layer.name)
        for tensor, layer in zip(model.inputs, model._input_layers)
    ]
    nested_inputs = tf.nest.pack_sequence_as(model._nested_inputs, inputs)
    outputs = _replay(model, inputs)
    return keras.Model(nested_inputs, outputs, name=name or model.name)


def clone_model(model, custom_objects=None):
    """`keras.models.clone_model` with `custom_objects` in scope and safe mode off (in-memory Lambdas)."""
    with keras.utils.custom_object_scope(custom_objects or {}), SafeModeScope(safe_mode=False):
        return keras.models.clone_model(model)


def _node_call(node):
    def call(values):
        tensor_dict = {key: [tf.convert_to_tensor(value)] for key, value in zip(node.flat_input_ids, values)}
        args, kwargs = node.map_arguments(tensor_dict)
        if getattr(node.layer, "_expects_training_arg", False):
            kwargs["training"] = False
        return [np.asarray(value) for value in tf.nest.flatten(node.layer(*args, **kwargs))]

    return call


def layer_graph(model):
    """The graph of a flat functional tf_keras model, node by node in topological order.

    Args:
        model: a flat functional or Sequential tf_keras model.

    Returns:
        `LayerGraph(inputs, outputs, nodes, shapes)`: the keys of the model's
        input and output tensors, the `GraphNode`s (input layers left out)
        and every tensor's static shape.

    Example:

    ```python
    graph = layer_graph(model)
    producers = {key: node.layer.name for node in graph.nodes for key in node.outputs}
    ```
    """
    shapes, nodes = {}, []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            for key, tensor in zip(node.flat_output_ids, tf.nest.flatten(node.outputs)):
                shapes[key] = tuple(tensor.shape.as_list())
            if not node.is_input:
                nodes.append(GraphNode(node.layer, tuple(node.flat_input_ids), tuple(node.flat_output_ids), _node_call(node)))
    inputs = tuple(str(id(tensor)) for tensor in model.inputs)
    outputs = tuple(str(id(tensor)) for tensor in model.outputs)
    return LayerGraph(inputs, outputs, nodes, shapes)


def model_from_config(model, config, custom_objects=None):
    """A new model of `model`'s class from `config` (its `get_config()`, edited), safe mode off.

    Example:

    ```python
    narrower = model_from_config(model, edited_config)
    ```
    """
    with keras.utils.custom_object_scope(custom_objects or {}), SafeModeScope(safe_mode=False):
        return type(model).from_config(config)
