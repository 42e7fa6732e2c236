"""Graph surgery on Keras 3 models: nested sub-models inlined, clones made.

The Keras 3 counterparts of `edgekeras.backend.tf_keras_graph`, written
against Keras 3's functional graph (`Functional._run_through_graph`).
"""

import collections

import keras
from keras.src.saving.serialization_lib import SafeModeScope

__all__ = ["GraphNode", "is_graph_model", "is_nested", "flatten", "clone_model", "layer_graph", "model_from_config"]

# The records of `edgekeras.backend.tf_keras_graph.layer_graph`, for Keras 3.
GraphNode = collections.namedtuple("GraphNode", "layer inputs outputs call")
LayerGraph = collections.namedtuple("LayerGraph", "inputs outputs nodes shapes")


def is_graph_model(layer):
    """Returns True if `layer` is a Keras 3 functional or Sequential model (it has a graph)."""
    return isinstance(layer, (keras.Sequential, keras.src.models.Functional))


def is_nested(model):
    """Returns True if a layer of `model` is itself a functional or Sequential model."""
    return any(is_graph_model(layer) for layer in model.layers)


def _graph_of(model):
    # A Sequential model keeps its graph in a Functional it builds.
    return model._functional if isinstance(model, keras.Sequential) else model


def _replay(model, inputs, training=None):
    """Calls `model`'s layers on `inputs`, recursing into sub-models; returns the outputs."""
    graph = _graph_of(model)

    def call(layer, *args, **kwargs):
        if training is not None and "training" in kwargs:
            kwargs["training"] = training
        if is_graph_model(layer):
            # A nested call like `base(x, training=False)` keeps its meaning
            # for every inner layer once flattened.
            # (Keras 3 sub-models take only `training` and `mask`.)
            inner_training = kwargs.pop("training", training)
            return _replay(layer, args[0] if len(args) == 1 else list(args), inner_training)
        if training is not None and _takes_training(layer):
            kwargs["training"] = training
        return layer(*args, **kwargs)

    return graph._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call)


def _takes_training(layer):
    return "training" in getattr(layer, "_call_signature_parameters", ())


def flatten(model, name=None):
    """Returns a flat functional Keras 3 model sharing `model`'s layers and weights.

    Args:
        model: a Keras 3 functional or Sequential model.
        name: the flat model's name (default: `model`'s).

    Returns:
        The flat model, or `model` itself when no layer is a sub-model.

    Raises:
        ValueError: `model` is subclassed (it has no graph).

    Example:

    ```python
    flat = flatten(keras.Model(inputs, head(base(inputs))))
    ```
    """
    if not is_graph_model(model):
        raise ValueError(
            f"Argument `model` must be a functional or Sequential model to be flattened. "
            f"Received: model={model.name!r} of subclassed type {type(model).__name__}."
        )
    if not is_nested(model):
        return model
    graph = _graph_of(model)
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor._keras_history.operation.name)
        for tensor in graph.inputs
    ]
    structure = keras.tree.pack_sequence_as(graph._inputs_struct, inputs)
    return keras.Model(structure, _replay(model, inputs), name=name or model.name)


def clone_model(model, custom_objects=None):
    """`keras.models.clone_model` with `custom_objects` in scope (weights are not copied)."""
    with keras.saving.custom_object_scope(custom_objects or {}):
        return keras.models.clone_model(model)


def _node_call(node):
    def call(values):
        tensor_dict = {id(tensor): keras.ops.convert_to_tensor(value) for tensor, value in zip(node.input_tensors, values)}
        args, kwargs = node.arguments.fill_in(tensor_dict)
        if _takes_training(node.operation):
            kwargs["training"] = False
        return [keras.ops.convert_to_numpy(value) for value in keras.tree.flatten(node.operation(*args, **kwargs))]

    return call


def layer_graph(model):
    """The graph of a flat functional Keras 3 model, node by node in topological order.

    Operations called on symbolic tensors (`x + 3.0`) are nodes like layers.

    Args:
        model: a flat functional or Sequential Keras 3 model.

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
    graph = _graph_of(model)
    shapes, nodes = {}, []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            for tensor in node.output_tensors:
                shapes[id(tensor)] = tuple(tensor.shape)
            if not node.is_input:
                inputs = tuple(id(tensor) for tensor in node.input_tensors)
                outputs = tuple(id(tensor) for tensor in node.output_tensors)
                nodes.append(GraphNode(node.operation, inputs, outputs, _node_call(node)))
    inputs = tuple(id(tensor) for tensor in graph.inputs)
    outputs = tuple(id(tensor) for tensor in graph.outputs)
    return LayerGraph(inputs, outputs, nodes, shapes)


def model_from_config(model, config, custom_objects=None):
    """A new model of `model`'s class from `config` (its `get_config()`, edited), safe mode off.

    Example:

    ```python
    narrower = model_from_config(model, edited_config)
    ```
    """
    with keras.saving.custom_object_scope(custom_objects or {}), SafeModeScope(safe_mode=False):
        return type(model).from_config(config)
