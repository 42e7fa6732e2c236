"""Channel groups: the sets of channels of a model that must be removed together.

Removing output channel `c` of a convolution also removes input channel `c`
of every layer that reads it: the BatchNormalization after it, a depthwise
convolution (whose output channel `c` goes too), the next convolution's input
channel. Outputs joined by a residual `Add`, a `Concatenate`'s slice or a
squeeze-excite `Multiply` are coupled: one kept/removed decision for all of
them. A `ChannelGroup` names one such set by the layers it touches.

`find_groups` reads them off the functional graph (the model's own Keras
walks it: `edgekeras.backend`'s `layer_graph`). Every tensor's channel axis is
a list of segments, each a slice owned by one channel space: a convolution or
`Dense` starts a new space, channel-wise layers pass their input's segments
on, `Add`/`Multiply` unite their inputs' spaces and a `Concatenate` on the
channel axis lines its inputs' segments up. Anything else (a layer that mixes
channels, or that edgekeras does not know and cannot prove channel-wise)
makes every space it touches non-prunable: a group is never wrong, at worst
it is kept whole.
"""

import collections
import dataclasses

import numpy as np

from edgekeras import backend, models

__all__ = ["ChannelGroup", "ChannelGraph", "analyse", "find_groups"]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """One set of channels that is kept or removed as a whole.

    Attributes:
        name: the group's name (its first producer's layer name; `"input"`
            or `"input_<i>"` for the model's inputs).
        size: channels in the group.
        producers: layers whose output channels (the kernel's last axis of a
            `Conv2D`/`Dense`) are the group's channels, in graph order.
        passthrough: layers that carry the channels one to one and lose the
            removed ones too: `BatchNormalization`, `DepthwiseConv2D`
            (kernel axis 2), activations, pooling.
        consumers: layers whose input channels (a `Conv2D`/`Dense` kernel's
            second-to-last axis) are the group's channels.
        prunable: False when the channels are tied to the model's input or
            output (the classifier's classes, the image's RGB), so no channel
            may go.

    Example:

    ```python
    group = ChannelGroup(
        name="block_1_expand", size=96,
        producers=("block_1_expand",),
        passthrough=("block_1_expand_BN", "block_1_expand_relu", "block_1_depthwise",
                     "block_1_depthwise_BN", "block_1_depthwise_relu"),
        consumers=("block_1_project",),
        prunable=True,
    )
    ```
    """

    name: str
    size: int
    producers: tuple
    passthrough: tuple
    consumers: tuple
    prunable: bool = True


# Layer kinds, by class name (the same in both Kerases).
PRODUCER, DEPTHWISE, NORM, CHANNELWISE, RESHAPE, MERGE, CONCAT, MIXING = (
    "producer", "depthwise", "norm", "channelwise", "reshape", "merge", "concat", "mixing"
)
PRODUCERS = ("Conv1D", "Conv2D", "Dense")
DEPTHWISES = ("DepthwiseConv2D",)
# Keras 3's `x + y` on symbolic tensors is an operation named like the layer.
MERGES = ("Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply")
CHANNELWISES = (
    "Activation", "ReLU", "ELU", "LeakyReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "MaxPooling1D", "MaxPooling2D",
    "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D",
)
# Activations that mix the channel axis.
MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclasses.dataclass
class ChannelGraph:
    """A model's graph with its channel groups: what `find_groups` and `shrink` share.

    Attributes:
        model: the flat model the graph is of.
        graph: the backend's `LayerGraph` (inputs, outputs, nodes, shapes).
        kinds: per node (by index), its kind: `PRODUCER`, `DEPTHWISE`,
            `NORM`, `CHANNELWISE`, `RESHAPE`, `MERGE`, `CONCAT` or `MIXING`.
        segments: per tensor key, the group index of each slice of its
            channel axis, in order.
        groups: the `ChannelGroup`s, in graph order.
    """

    model: object
    graph: object
    kinds: list
    segments: dict
    groups: list

    def slices(self, key):
        """`[(group index, start)]`: where each group's channels begin on tensor `key`'s channel axis."""
        start, found = 0, []
        for index in self.segments[key]:
            found.append((index, start))
            start += self.groups[index].size
        return found


class _Spaces:
    """Union-find over channel spaces, with what each space has collected."""

    def __init__(self):
        self.parent = []
        self.info = []

    def new(self, size, prunable=True, name=None):
        self.parent.append(len(self.parent))
        self.info.append(
            {"size": size, "prunable": prunable, "name": name, "producers": [], "passthrough": [], "consumers": []}
        )
        return len(self.parent) - 1

    def root(self, space):
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def add(self, space, role, name):
        self.info[self.root(space)][role].append(name)

    def forbid(self, space):
        self.info[self.root(space)]["prunable"] = False

    def unite(self, first, second):
        first, second = sorted((self.root(first), self.root(second)))
        if first == second:
            return
        self.parent[second] = first
        keep, gone = self.info[first], self.info[second]
        keep["prunable"] = keep["prunable"] and gone["prunable"]
        for role in ("producers", "passthrough", "consumers"):
            keep[role] += gone[role]


def _channel_axis_ok(axis, rank):
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return [a % rank for a in axes] == [rank - 1]


def _is_channelwise(node, shape):
    """True when `node` maps each channel to the same channel, by one function for all channels.

    Checked on random inputs: an input taking a random half of its channels
    from `x` and the rest from `y` must give `f(x)` on that half and `f(y)` on
    the rest (a layer that moves or mixes channels fails), and equal channels
    in must give equal channels out (no per-channel constant that a narrower
    model would have to slice).
    """
    dims = [1] + [3 if d is None else d for d in shape[1:]]
    rng = np.random.default_rng(0)
    x, y = (rng.uniform(0.5, 1.5, dims).astype("float32") for _ in range(2))
    channels = dims[-1]
    try:
        fx, fy = node.call([x])[0], node.call([y])[0]
        if fx.shape[-1] != channels:
            return False
        for _ in range(3):
            chosen = rng.random(channels) < 0.5
            fz = node.call([np.where(chosen, x, y)])[0]
            if not (np.allclose(fz[..., chosen], fx[..., chosen]) and np.allclose(fz[..., ~chosen], fy[..., ~chosen])):
                return False
        same = node.call([np.repeat(x[..., :1], channels, axis=-1)])[0]
    except Exception:  # noqa: BLE001 - a user layer that fails on the probe is simply not channel-wise
        return False
    return bool(np.allclose(same, np.repeat(same[..., :1], channels, axis=-1)))


def _keeps_channels(in_shape, out_shape):
    """A reshape that only adds or drops size-1 axes before the channel axis."""
    return in_shape[-1] == out_shape[-1] and all(d == 1 for d in (*in_shape[1:-1], *out_shape[1:-1]))


def _single_kind(node, layer, in_shape, out_shape):
    name = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return MIXING
    if name in PRODUCERS:
        return PRODUCER if getattr(layer, "groups", 1) == 1 else MIXING
    if name in DEPTHWISES:
        return DEPTHWISE if layer.depth_multiplier == 1 else MIXING
    if name == "BatchNormalization":
        return NORM if _channel_axis_ok(layer.axis, len(in_shape)) else MIXING
    if getattr(layer, "weights", None) or in_shape[-1] != out_shape[-1]:
        return MIXING
    if name == "Flatten" or (name == "Reshape" and hasattr(layer, "target_shape")):
        return RESHAPE if _keeps_channels(in_shape, out_shape) else MIXING
    if name in CHANNELWISES:
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        return MIXING if activation in MIXING_ACTIVATIONS else CHANNELWISE
    return CHANNELWISE if _is_channelwise(node, in_shape) else MIXING


def _kind(node, shapes, calls):
    layer = node.layer
    if calls[id(layer)] > 1 or len(node.outputs) != 1 or not node.inputs:
        return MIXING  # a shared layer's weights tie its calls together: kept whole
    in_shapes = [shapes[key] for key in node.inputs]
    out_shape = shapes[node.outputs[0]]
    if any(len(shape) < 2 or shape[-1] is None for shape in (*in_shapes, out_shape)):
        return MIXING
    name = type(layer).__name__
    if len(node.inputs) > 1:
        if name in MERGES:
            return MERGE
        if name == "Concatenate":
            return CONCAT if _channel_axis_ok(layer.axis, len(out_shape)) else MERGE
        return MIXING
    return _single_kind(node, layer, in_shapes[0], out_shape)


def _merge(spaces, name, inputs, shapes, segments):
    """Unites the spaces of an elementwise merge's inputs; returns the output's segments."""
    width = max(shapes[key][-1] for key in inputs)
    joined = [key for key in inputs if shapes[key][-1] == width]
    for key in inputs:
        if key not in joined:  # broadcast along channels (a per-pixel gate): it has no channels to remove
            for space in segments[key]:
                spaces.forbid(space)
    sizes = {tuple(spaces.info[spaces.root(s)]["size"] for s in segments[key]) for key in joined}
    first = segments[joined[0]]
    if len(sizes) == 1:
        for key in joined[1:]:
            for a, b in zip(first, segments[key]):
                spaces.unite(a, b)
    else:
        # Slices that do not line up (a Concatenate added to a convolution's
        # output) would split a space in two: kept whole instead.
        for key in joined:
            for space in segments[key]:
                spaces.forbid(space)
    for space in first:
        spaces.add(space, "passthrough", name)
    return list(first)


def _visit(spaces, node, kind, shapes, segments):
    """Records one node's roles and returns its outputs' segments."""
    name = node.layer.name
    ins = [segments[key] for key in node.inputs]
    if kind == PRODUCER:
        for space in ins[0]:
            spaces.add(space, "consumers", name)
        space = spaces.new(shapes[node.outputs[0]][-1])
        spaces.add(space, "producers", name)
        return [[space]]
    if kind in (DEPTHWISE, NORM, CHANNELWISE, RESHAPE):
        for space in ins[0]:
            spaces.add(space, "passthrough", name)
        return [list(ins[0])]
    if kind == CONCAT:
        for space in (s for segs in ins for s in segs):
            spaces.add(space, "passthrough", name)
        return [[s for segs in ins for s in segs]]
    if kind == MERGE:
        return [_merge(spaces, name, node.inputs, shapes, segments)]
    for space in (s for segs in ins for s in segs):
        spaces.add(space, "consumers", name)
        spaces.forbid(space)
    out = []
    for key in node.outputs:
        shape = shapes[key]
        space = spaces.new(shape[-1] if shape and shape[-1] is not None else 0, prunable=False)
        spaces.add(space, "producers", name)
        out.append([space])
    return out


def _unique(names):
    return tuple(dict.fromkeys(names))


def _records(spaces, segments):
    """The groups, in the order their spaces were made, and the tensors' segments as group indices."""
    index, groups = {}, []
    for space in range(len(spaces.parent)):
        root = spaces.root(space)
        if root in index:
            continue
        info = spaces.info[root]
        producers, passthrough, consumers = (_unique(info[role]) for role in ("producers", "passthrough", "consumers"))
        name = info["name"] or (producers or passthrough or consumers)[0]
        # A group of one channel cannot lose a channel without losing the tensor.
        prunable = info["prunable"] and info["size"] > 1 and bool(producers) and bool(consumers)
        index[root] = len(groups)
        groups.append(ChannelGroup(name, int(info["size"]), producers, passthrough, consumers, prunable))
    return groups, {key: [index[spaces.root(s)] for s in segs] for key, segs in segments.items()}


def analyse(model):
    """Finds the channel groups of `model` and how they run through its graph.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model; nested
            models are flattened first (`edgekeras.models.flatten`).

    Returns:
        A `ChannelGraph` (`shrink` and the pruning callback use it).

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: `model` is subclassed (no graph to read).

    Example:

    ```python
    channel_graph = analyse(model)
    print(len(channel_graph.groups))
    ```
    """
    flat = models.flatten(model)
    graph = backend.for_model(flat).layer_graph(flat)
    calls = collections.Counter(id(node.layer) for node in graph.nodes)
    spaces, segments, kinds = _Spaces(), {}, []
    for index, key in enumerate(graph.inputs):
        name = "input" if len(graph.inputs) == 1 else f"input_{index}"
        segments[key] = [spaces.new(graph.shapes[key][-1] or 0, prunable=False, name=name)]
    for node in graph.nodes:
        kind = _kind(node, graph.shapes, calls)
        kinds.append(kind)
        for key, segs in zip(node.outputs, _visit(spaces, node, kind, graph.shapes, segments)):
            segments[key] = segs
    for key in graph.outputs:
        for space in segments[key]:
            spaces.forbid(space)
    groups, segments = _records(spaces, segments)
    return ChannelGraph(flat, graph, kinds, segments, groups)


def find_groups(model):
    """The channel groups of `model`: the sets of channels removed together.

    An inverted residual block's expand output, depthwise channels and
    project input are one free group; outputs joined by a residual `Add`,
    a squeeze-excite `Multiply` or a `Concatenate` (each input's slice) are
    one group. Groups tied to the model's inputs or outputs, of one
    channel, or touched by a layer that mixes channels in a way edgekeras
    does not model (a grouped or transposed convolution, `Softmax`, a
    reshape across the channel axis, a layer called twice, an unknown layer
    that is not provably channel-wise) are `prunable=False`; such a layer is
    listed as the producer of its output's group.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model (nested
            models are flattened first).

    Returns:
        The `ChannelGroup`s, in graph order (the model's inputs first).

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: `model` is subclassed (no graph to read).

    Example:

    ```python
    from edgekeras import keras
    from edgekeras.channels import find_groups

    model = keras.applications.MobileNetV2((32, 32, 3), weights=None, classes=10)
    free = [group for group in find_groups(model) if group.prunable]
    print(free[0].name, free[0].size)
    ```
    """
    return analyse(model).groups
