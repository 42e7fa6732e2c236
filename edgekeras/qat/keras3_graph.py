"""The plan of a Keras 3 quantization-aware model: which op of the int8 file each tensor becomes.

`plan(model)` flattens a functional (or Sequential) Keras 3 model, nested
models included, into `Step`s in topological order, one per op the TFLite
converter writes, and decides where a fake-quant range goes. The converter
decides the rules; each was measured by converting the float model with
representative data (post-training int8) and reading the op list:

| step kind  | from                                          | range on its output            |
| ---------- | --------------------------------------------- | ------------------------------ |
| `input`    | a model input                                 | yes (the file's QUANTIZE)      |
| `weighted` | Conv1D/Conv2D, DepthwiseConv2D, Dense         | yes, after what it absorbs     |
| `bn`       | BatchNormalization                            | absorbed, else MUL and ADD     |
| `const`    | `x + c`, `x * c` (ops, Rescaling,             | yes, unless absorbed (folded   |
|            | Normalization, hard-sigmoid's `+3` and `/6`)  | into the convolution before)   |
| `relu`     | ReLU, ReLU6                                   | yes, unless fused              |
| `binary`   | Add, Subtract, Multiply                       | yes, unless a ReLU is fused    |
| `concat`   | Concatenate, Maximum, Minimum                 | yes, shared with its inputs    |
| `output`   | pooling means, hard-swish, leaky ReLU         | yes                            |
| `fixed`    | sigmoid, tanh, softmax (and swish's sigmoid)  | the op's fixed int8 range      |
| `pass`     | pooling max and average, reshaping, dropout,  | no: the op keeps its input's   |
|            | padding (same-scale ops)                      | scale                          |

A convolution absorbs the chain after it that the converter folds into its
kernel and bias (one BatchNormalization, constant add/sub/mul per channel),
then a ReLU/ReLU6 (the fused activation), and the scalar constants before it
that the converter folds (`x * c` always, `x + c` and `x - c` when the
convolution pads nothing: a padded border would not see the constant). A
ReLU after an ADD, SUB or MUL is fused too, so the op before it gets no
range. The inputs of a Concatenate,
Maximum or Minimum take its range (their int8 kernels need one scale: with
ranges of their own, the converter would requantize them), read from the
op's output quantizer without moving it; through a pooling or reshape in
between, the op that produces its input takes it.
"""

import keras
import numpy as np

from edgekeras.models import flatten

__all__ = ["Step", "Plan", "plan"]

_L = keras.layers
_WEIGHTED = (_L.Conv1D, _L.Conv2D, _L.DepthwiseConv2D, _L.Dense)
_PASS = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.AveragePooling1D, _L.AveragePooling2D, _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D, _L.Reshape, _L.Flatten, _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D,
    _L.GaussianNoise, _L.GaussianDropout, _L.ZeroPadding1D, _L.ZeroPadding2D, _L.Cropping1D, _L.Cropping2D,
    _L.UpSampling2D, _L.Permute, _L.Identity, _L.ActivityRegularization,
)
_OUTPUT = (_L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.LeakyReLU)
_BINARY = (_L.Add, _L.Subtract, _L.Multiply)
_SAME_SCALE = (_L.Concatenate, _L.Maximum, _L.Minimum)
# keras.ops calls recorded in a functional graph (`x + 3.0`), by class name.
_OP_CONSTANT = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Divide": "div", "TrueDivide": "div"}
_OP_BINARY = {"Add": "binary", "Subtract": "binary", "Multiply": "binary", "Maximum": "concat", "Minimum": "concat"}
# Activation function name -> step kind; hard_sigmoid and silu (swish) are written as their ops.
_ACTIVATIONS = {
    "linear": "pass", "relu": "relu", "relu6": "relu", "hard_silu": "output",
    "leaky_relu": "output", "sigmoid": "fixed", "tanh": "fixed", "softmax": "fixed",
}
# Ops with a fused-activation field in TFLite.
_FUSES_RELU = ("weighted", "const", "binary", "bn")


class Step:
    """One op of the int8 file (or one absorbed into the op before it).

    Attributes:
        kind: see the module's table.
        layer: the float model's layer or keras op, or None for a step edgekeras writes.
        node: the float graph's node (its call arguments), or None.
        inputs / output: tensor keys.
        info: kind-specific values (`op`/`value` of a const, `max_value` of a relu, ...).
        quantized: whether a range follows the output.
        share: the same-scale step (Concatenate, Maximum, Minimum) after it whose range
            its output takes, or None.
        absorbed: whether a weighted step before it took it in.
        chain: of a weighted step, the steps after it that it absorbed, in order.
        pre_chain: of a weighted step, the scalar constant steps before it that it absorbed, in order.
    """

    def __init__(self, kind, layer, node, inputs, output, **info):
        self.kind, self.layer, self.node, self.inputs, self.output, self.info = kind, layer, node, inputs, output, info
        self.quantized = kind not in ("pass", "fixed")
        self.share = None
        self.absorbed = False
        self.chain, self.pre_chain = [], []

    @property
    def name(self):
        return self.info.get("name") or getattr(self.layer, "name", self.kind)


class Plan:
    """The steps of a flattened model, with the keys of its inputs and outputs.

    Attributes:
        steps: `Step`s in topological order.
        inputs: the float model's input tensors.
        outputs: the output keys, in the model's order.
        unsupported: `(name, description)` of every layer no step kind covers.
    """

    def __init__(self):
        self.steps, self.inputs, self.outputs, self.unsupported = [], [], [], []
        self._next = 0
        self.seen_weighted = set()

    def key(self, tensor):
        return id(tensor)

    def synthetic(self):
        self._next -= 1
        return self._next

    def add(self, kind, layer, node, inputs, output, **info):
        self.steps.append(Step(kind, layer, node, inputs, output, **info))
        return output


def _activation_name(layer):
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _relu_max(layer):
    """max_value of a plain ReLU/ReLU6 layer, 0 for a ReLU with no cap, None for other ReLUs."""
    if layer.negative_slope or layer.threshold or layer.max_value not in (None, 6.0):
        return None
    return layer.max_value or 0


def _constant_of(node):
    """`(tensor, constant, tensor_first)` of a keras op called on one tensor and one constant, else None."""
    args = node.arguments.args
    if len(args) != 2 or node.arguments.kwargs:
        return None
    first, second = (isinstance(a, keras.KerasTensor) for a in args)
    if first == second:
        return None
    constant = args[1] if first else args[0]
    if not isinstance(constant, (int, float, np.ndarray, np.number)) or isinstance(constant, bool):
        return None
    return (args[0] if first else args[1]), np.asarray(constant, "float32"), first


def _add_activation(graph, name, layer, node, source, output, label):
    """Adds the steps of activation `name` from `source` to `output`; False when unsupported."""
    if name == "hard_sigmoid":  # relu6(x + 3) / 6, as Keras 3's TensorFlow backend computes it
        added = graph.add("const", None, None, [source], graph.synthetic(), op="add", value=3.0, name=f"{label}_add")
        relu = graph.add("relu", None, None, [added], graph.synthetic(), max_value=6.0, name=f"{label}_relu6")
        graph.add("const", None, None, [relu], output, op="mul", value=1.0 / 6.0, name=f"{label}_mul")
        return True
    if name == "silu":  # x * sigmoid(x): the file's LOGISTIC (a fixed range) and MUL
        gate = graph.add("fixed", None, None, [source], graph.synthetic(), activation="sigmoid", name=f"{label}_sigmoid")
        graph.add("binary", None, None, [source, gate], output, name=f"{label}_mul")
        return True
    kind = _ACTIVATIONS.get(name)
    if kind is None:
        return False
    max_value = 6.0 if name == "relu6" else 0
    graph.add(kind, layer, node, [source], output, activation=name, max_value=max_value, name=label)
    return True


def _add_op(graph, op, node, inputs, output):
    """The steps of a keras op node (`x + 3.0`, `ops.multiply(a, b)`); False when unsupported."""
    name = type(op).__name__
    constant = _constant_of(node) if name in _OP_CONSTANT else None
    if constant is not None:
        tensor, value, tensor_first = constant
        kind = _OP_CONSTANT[name]
        if kind == "div" and tensor_first and np.all(value != 0):
            kind, value = "mul", 1.0 / value
        if kind == "div" or (kind == "sub" and not tensor_first):
            return False
        graph.add("const", op, node, [graph.key(tensor)], output, op=kind, value=value, name=op.name)
        return True
    if name in _OP_BINARY and len(inputs) == 2:
        graph.add(_OP_BINARY[name], op, node, inputs, output)
        return True
    if name in ("Relu", "Relu6"):
        graph.add("relu", op, node, inputs, output, max_value=6.0 if name == "Relu6" else 0)
        return True
    return False


def _add_preprocessing(graph, layer, source, output):
    """Rescaling and Normalization as their constant ops; False for what they cannot be."""
    if isinstance(layer, _L.Rescaling):
        steps = [("mul", np.asarray(layer.scale, "float32")), ("add", np.asarray(layer.offset, "float32"))]
        steps = [(op, value) for op, value in steps if np.any(value != (1.0 if op == "mul" else 0.0))]
    else:
        if layer.invert or layer.mean is None:
            return False
        mean = keras.ops.convert_to_numpy(layer.mean).astype("float32")
        std = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance)), keras.backend.epsilon())
        steps = [("sub", mean), ("mul", (1.0 / std).astype("float32"))]
    if not steps:
        graph.add("pass", layer, None, [source], output)
    for index, (op, value) in enumerate(steps):
        last = index == len(steps) - 1
        graph.add("const", layer, None, [source], output if last else graph.synthetic(), op=op, value=value,
                  name=f"{layer.name}_{op}")
        source = graph.steps[-1].output
    return True


def _simple_kind(layer, node):
    """The step kind of a layer that is one step as it is, or None."""
    if isinstance(layer, _L.BatchNormalization):
        return "bn" if layer.axis in (-1, len(node.outputs[0].shape) - 1) else None
    if type(layer) is _L.ReLU:
        return "relu" if _relu_max(layer) is not None else "output"
    if type(layer) is _L.Softmax:
        return "fixed"
    for kind, classes in (("pass", _PASS), ("output", _OUTPUT), ("binary", _BINARY), ("concat", _SAME_SCALE)):
        if type(layer) in classes:
            return kind
    return None


def _add_weighted(graph, layer, node, inputs, output):
    if getattr(layer, "groups", 1) != 1 or getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    if id(layer) in graph.seen_weighted:  # a shared layer would be trained as two copies
        return False
    graph.seen_weighted.add(id(layer))
    name = _activation_name(layer)
    if name == "linear":
        graph.add("weighted", layer, node, inputs, output)
        return True
    middle = graph.add("weighted", layer, node, inputs, graph.synthetic())
    return _add_activation(graph, name, None, None, middle, output, f"{layer.name}_{name}")


def _add_layer(graph, layer, node, inputs, output, overrides):
    """The steps of one layer node; False when no step kind covers it."""
    if layer.name in overrides:
        graph.add(overrides[layer.name], layer, node, inputs, output)
        return True
    if len(node.outputs) != 1:
        return False
    if isinstance(layer, _WEIGHTED):
        return _add_weighted(graph, layer, node, inputs, output)
    if isinstance(layer, (_L.Rescaling, _L.Normalization)):
        return _add_preprocessing(graph, layer, inputs[0], output)
    if type(layer) is _L.Activation:
        return _add_activation(graph, _activation_name(layer), layer, node, inputs[0], output, layer.name)
    kind = _simple_kind(layer, node)
    if kind is None:
        return False
    graph.add(kind, layer, node, inputs, output, max_value=_relu_max(layer) if kind == "relu" else None)
    return True


def _walk(graph, model, overrides):
    functional = model._functional if isinstance(model, keras.Sequential) else model
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input:
                continue
            op = node.operation
            inputs = [graph.key(t) for t in node.input_tensors]
            output = id(node.outputs[0])
            if isinstance(op, _L.Layer):
                supported = _add_layer(graph, op, node, inputs, output, overrides)
            else:
                supported = _add_op(graph, op, node, inputs, output)
            if not supported:
                graph.unsupported.append((op.name, _describe(op)))


def _describe(op):
    name = _activation_name(op)
    kind = type(op).__name__
    if type(op) is _L.Activation:
        return f"{kind} {name!r}"
    if isinstance(op, _WEIGHTED) and name is not None and name != "linear":
        return f"{kind} with activation {name!r}"
    return kind if isinstance(op, _L.Layer) else f"keras.ops {kind}"


def _per_channel(value, channels):
    """Whether a constant is one number, or one per channel along the last axis (what a bias can hold)."""
    shape = np.shape(value)
    return np.size(value) == 1 or (shape[-1] == channels and np.size(value) == channels)


def _absorb(graph, consumers, weighted):
    """Folds the BN/constant chain and the ReLU after `weighted` into it, as the converter does."""
    current, has_bn = weighted, False
    channels = weighted.layer.compute_output_shape(weighted.node.input_tensors[0].shape)[-1]
    while len(consumers[current.output]) == 1 and consumers[current.output][0] is not None:
        follower = consumers[current.output][0]
        if follower.kind == "bn" and not has_bn:
            has_bn = True
        elif not (follower.kind == "const" and _per_channel(follower.info["value"], channels)):
            break
        follower.absorbed = True
        weighted.chain.append(follower)
        current = follower
    _fuse_relu(consumers, current, weighted)


def _absorb_before(graph, consumers, weighted):
    """Folds the scalar `x * c` (any padding) and `x + c` (no padding) before `weighted` into it."""
    producers = {step.output: step for step in graph.steps}
    pads = getattr(weighted.layer, "padding", "valid") != "valid"
    current = weighted
    while current.inputs and current.inputs[0] in producers:
        producer = producers[current.inputs[0]]
        if producer.kind != "const" or producer.absorbed or consumers[producer.output] != [current]:
            break
        if np.size(producer.info["value"]) != 1 or (pads and producer.info["op"] != "mul"):
            break
        producer.absorbed = True
        weighted.pre_chain.insert(0, producer)
        current = producer


def _fuse_relu(consumers, producer, owner=None):
    """Marks the ReLU that a TFLite op with a fused activation takes in; its producer gets no range."""
    followers = consumers[producer.output]
    if len(followers) != 1 or followers[0] is None or followers[0].kind != "relu":
        return
    relu = followers[0]
    if owner is not None:
        relu.absorbed = True
        owner.chain.append(relu)
    producer.quantized = False


def plan(model, overrides=None):
    """Returns the `Plan` of a functional or Sequential Keras 3 model.

    Args:
        model: a built functional or Sequential Keras 3 model (nested models allowed).
        overrides: `{layer name: kind}` for layers the user places: "skip"
            (kept in float, a range on its output where a quantized op reads
            it), "output" or "pass".

    Returns:
        The `Plan`; its `unsupported` lists what cannot be quantized.

    Example:

    ```python
    steps = plan(model).steps
    [step.kind for step in steps]  # ["input", "weighted", ...]
    ```
    """
    graph = Plan()
    # Nested sub-models are inlined first, so the walk sees one graph.
    model = flatten(model)
    functional = model._functional if isinstance(model, keras.Sequential) else model
    graph.inputs = list(functional.inputs)
    for tensor in graph.inputs:
        graph.add("input", None, None, [], id(tensor), name=tensor.name)
    _walk(graph, model, overrides or {})
    graph.outputs = [graph.key(t) for t in functional.outputs]
    if graph.unsupported:  # the steps have gaps; nothing will be built
        return graph
    consumers = {step.output: [] for step in graph.steps}
    for step in graph.steps:
        for key in step.inputs:
            consumers[key].append(step)
    for key in graph.outputs:
        consumers[key].append(None)
    for step in graph.steps:
        if step.kind in ("input", "skip"):
            # A float run (skipped layers, and the model input before them) takes a range only where
            # it feeds a quantized op: with ranges on both sides the converter computes a skipped op in int8.
            step.quantized = any(f is not None and f.kind != "skip" for f in consumers[step.output])
    for step in graph.steps:
        if step.kind == "weighted":
            _absorb_before(graph, consumers, step)
            _absorb(graph, consumers, step)
        elif step.kind in _FUSES_RELU and not step.absorbed:
            _fuse_relu(consumers, step)
    for step in reversed(graph.steps):  # a same-scale op feeding another takes the range of the last
        shared = [f.share or f for f in consumers[step.output] if f is not None and f.kind == "concat"]
        # A pooling or reshape between a producer and the same-scale op keeps its input's scale, so
        # the producer takes the range (the converter would otherwise requantize).
        shared += [f.share for f in consumers[step.output] if f is not None and f.kind == "pass" and f.share is not None]
        if step.kind != "input" and shared:
            step.share = shared[0]
    return graph
