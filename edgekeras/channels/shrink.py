"""Shrink: a channel-pruned model rebuilt narrower, without its zeroed channels.

`ChannelPruning` leaves a model of the same shape whose removed channels are
exact zeros; the int8 kernels would still multiply them. `shrink` finds, for
every prunable group, the channels that reach every consumer as exact zeros
(the zeros are followed through the graph: a masked kernel and bias, a
BatchNormalization whose scale and offset are both zero, an activation that
keeps zero at zero, a squeeze-excite `Multiply` by a zero), and rebuilds the
model from its config with narrower layers (same names, weights sliced).
Only channels that contribute nothing are removed, so the narrower model's
float predictions equal the masked model's up to summation order.

Each group keeps a multiple of `round_to` channels (some zero channels are
kept to reach it): the int8 kernels of this CPU run a width that is a
multiple of the SIMD width no slower than the narrower odd one
(`benchmarks/channel_rounding.py` measured the default).
"""

import math
import numbers

import numpy as np

from edgekeras import backend
from edgekeras.channels import groups as groups_module
from edgekeras.channels.groups import CHANNELWISE, CONCAT, DEPTHWISE, MERGE, NORM, PRODUCER, RESHAPE

__all__ = ["DEFAULT_ROUND_TO", "kept_channels", "removable_channels", "shrink"]

# benchmarks/channel_rounding.py (2026-12-07, this x86 CPU with AVX-512,
# LiteRT's XNNPACK int8 kernels, one thread): the latency of inverted-residual
# blocks is a staircase in the expand width, flat within each run of 16
# channels and one step up past every multiple of 16 (17-32: 0.30-0.32 ms,
# 33-48: 0.38-0.40, 49-64: 0.45-0.48, 65-80: 0.53-0.55). Rounding up to 16
# costs no latency against any finer rounding and keeps up to 15 channels
# more; 16 is a multiple of the 8- and 16-channel tiles of ARM kernels too.
DEFAULT_ROUND_TO = 16


def _check_round_to(round_to):
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ValueError(f"Argument `round_to` must be a positive integer. Received: round_to={round_to!r}")
    return int(round_to)


def _all_zero(array, keep_axis):
    return np.all(np.moveaxis(array, keep_axis, -1).reshape(-1, array.shape[keep_axis]) == 0, axis=0)


def _bias_zero(layer, channels):
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    return np.ones(channels, bool) if bias is None else backend.for_model(layer).to_numpy(bias) == 0


def _norm_zero(layer, in_zero):
    to_numpy = backend.for_model(layer).to_numpy
    channels = in_zero.shape[0]
    gamma = to_numpy(layer.gamma) if layer.scale else np.ones(channels, "float32")
    beta = to_numpy(layer.beta) if layer.center else np.zeros(channels, "float32")
    scale = gamma / np.sqrt(to_numpy(layer.moving_variance) + layer.epsilon)
    # Inference computes x * scale + (beta - mean * scale): zero for any x
    # when gamma and beta are, zero for x = 0 when the offset is.
    offset = beta - to_numpy(layer.moving_mean) * scale
    return ((gamma == 0) & (beta == 0)) | (in_zero & (offset == 0))


def _node_zero(node, kind, shapes, zeros):
    """Which channels of `node`'s output are exact zeros, given its inputs'."""
    layer = node.layer
    out_shape = shapes[node.outputs[0]]
    channels = out_shape[-1]
    ins = [zeros[key] for key in node.inputs]
    if kind == PRODUCER:
        return _all_zero(backend.for_model(layer).to_numpy(layer.kernel), -1) & _bias_zero(layer, channels)
    if kind == DEPTHWISE:
        kernel = backend.for_model(layer).to_numpy(backend.for_model(layer).prunable_weight(layer))
        return (ins[0] | _all_zero(kernel, -2)) & _bias_zero(layer, channels)
    if kind == NORM:
        return _norm_zero(layer, ins[0])
    if kind in (CHANNELWISE, RESHAPE):
        dims = [1] + [3 if d is None else d for d in shapes[node.inputs[0]][1:]]
        at_zero = node.call([np.zeros(dims, "float32")])[0]
        return ins[0] & _all_zero(at_zero, -1)
    if kind == CONCAT:
        return np.concatenate(ins)
    if kind == MERGE:
        # A per-pixel gate (one channel) broadcasts over the channels.
        stacked = np.stack([np.broadcast_to(z, (channels,)) for z in ins])
        return stacked.any(axis=0) if type(layer).__name__ == "Multiply" else stacked.all(axis=0)
    return np.zeros(channels, bool)


def _zero_channels(channel_graph):
    graph = channel_graph.graph
    zeros = {key: np.zeros(graph.shapes[key][-1], bool) for key in graph.inputs}
    for node, kind in zip(graph.nodes, channel_graph.kinds):
        zeros[node.outputs[0]] = _node_zero(node, kind, graph.shapes, zeros) if len(node.outputs) == 1 else None
        for key in node.outputs[1:]:
            zeros[key] = None
    return zeros


def removable_channels(channel_graph):
    """Per prunable group, the channels that reach every consumer as exact zeros: those `shrink` removes.

    Args:
        channel_graph: `edgekeras.channels.groups.analyse(model)`.

    Returns:
        `{group index: boolean array of the group's size}` for the prunable
        groups some Conv/Dense layer reads.
    """
    zeros = _zero_channels(channel_graph)
    removable = {}
    for node, kind in zip(channel_graph.graph.nodes, channel_graph.kinds):
        if kind != PRODUCER:
            continue
        for index, start in channel_graph.slices(node.inputs[0]):
            group = channel_graph.groups[index]
            if group.prunable:
                seen = zeros[node.inputs[0]][start : start + group.size]
                removable[index] = removable.get(index, np.ones(group.size, bool)) & seen
    return removable


def _kept(channel_graph, round_to):
    """Per group index, the sorted channel indices the narrower model keeps."""
    removable = removable_channels(channel_graph)
    kept = {}
    for index, group in enumerate(channel_graph.groups):
        gone = removable.get(index, np.zeros(group.size, bool))
        keep = ~gone
        target = min(group.size, max(1, math.ceil(int(keep.sum()) / round_to)) * round_to)
        # Zero channels put back to reach a multiple of `round_to` change nothing.
        for channel in np.flatnonzero(gone)[: target - int(keep.sum())]:
            keep[channel] = True
        kept[index] = np.flatnonzero(keep)
    return kept


def kept_channels(model, round_to=DEFAULT_ROUND_TO):
    """How many channels each group of `model` keeps once shrunk.

    Args:
        model: a channel-pruned tf_keras or Keras 3 functional model.
        round_to: each group keeps a multiple of this many channels (or all).

    Returns:
        `{group name: kept channels}` for every group, prunable or not.

    Raises:
        ValueError: `round_to` is not a positive integer.

    Example:

    ```python
    widths = kept_channels(model)  # {"block_1_expand": 48, ...}
    ```
    """
    round_to = _check_round_to(round_to)
    channel_graph = groups_module.analyse(model)
    kept = _kept(channel_graph, round_to)
    return {group.name: len(kept[index]) for index, group in enumerate(channel_graph.groups)}


def _tensor_kept(channel_graph, kept):
    found = {}
    for key in channel_graph.segments:
        found[key] = np.concatenate([kept[index] + start for index, start in channel_graph.slices(key)] or [[]])
        found[key] = found[key].astype(int)
    return found


def _narrower_config(channel_graph, tensor_kept):
    config = channel_graph.model.get_config()
    for entry in config["layers"]:
        # A stored build shape (Keras 3) would build the layer at its old
        # width; the graph's calls build it at the new one.
        entry.pop("build_config", None)
    entries = {entry["config"]["name"]: entry["config"] for entry in config["layers"]}
    for node, kind in zip(channel_graph.graph.nodes, channel_graph.kinds):
        width = len(tensor_kept[node.outputs[0]])
        entry = entries.get(node.layer.name)
        if entry is None:
            continue
        if kind == PRODUCER:
            entry["units" if "units" in entry else "filters"] = width
        elif kind == RESHAPE and "target_shape" in entry:
            entry["target_shape"] = (*tuple(entry["target_shape"])[:-1], width)
    return config


def _narrower_weights(node, kind, tensor_kept, values):
    """`node.layer`'s weights with the removed channels taken out."""
    keep_in, keep_out = tensor_kept[node.inputs[0]], tensor_kept[node.outputs[0]]
    if kind == PRODUCER:
        kernel = values[0].take(keep_in, axis=-2).take(keep_out, axis=-1)
        return [kernel] + [value.take(keep_out, axis=-1) for value in values[1:]]
    if kind == DEPTHWISE:
        return [values[0].take(keep_out, axis=-2)] + [value.take(keep_out, axis=-1) for value in values[1:]]
    if kind == NORM:
        return [value.take(keep_out, axis=-1) for value in values]
    return values


def shrink(model, round_to=DEFAULT_ROUND_TO, custom_objects=None):
    """Removes a channel-pruned model's zeroed channels: a narrower dense model.

    The channels of a prunable group that reach every consumer as exact
    zeros (what `ChannelPruning` leaves) are removed from every layer of
    the group; the model is rebuilt from its config with the same layer
    names, narrower `filters`/`units`, and the remaining weights. Its float
    predictions equal `model`'s (within float rounding), and it exports
    through `edgekeras.litert` like any model.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model (nested
            models are flattened first); not modified.
        round_to: each group keeps a multiple of this many channels (or all
            of them): zero channels are kept to reach it.
        custom_objects: the classes of your own layers, for rebuilding.

    Returns:
        The narrower model, flat, with `model`'s name.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: `round_to` is not a positive integer, or `model` is
            subclassed.

    Example:

    ```python
    from edgekeras.channels import shrink
    from edgekeras.litert import export_tflite

    slim = shrink(model)  # after fit with ChannelPruning
    export_tflite(slim, "slim_int8.tflite", representative_data=images)
    ```
    """
    round_to = _check_round_to(round_to)
    channel_graph = groups_module.analyse(model)
    tensor_kept = _tensor_kept(channel_graph, _kept(channel_graph, round_to))
    flat = channel_graph.model
    narrow = backend.for_model(flat).model_from_config(flat, _narrower_config(channel_graph, tensor_kept), custom_objects)
    for node, kind in zip(channel_graph.graph.nodes, channel_graph.kinds):
        values = node.layer.get_weights() if hasattr(node.layer, "get_weights") else []
        if not values:
            continue
        target = narrow.get_layer(node.layer.name)
        target.set_weights(_narrower_weights(node, kind, tensor_kept, values))
        target.trainable = node.layer.trainable
    return narrow
