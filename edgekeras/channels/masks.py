"""Which weights hold a channel group, how important each channel is, and masks that zero channels.

A group's channel `c` lives in: each producer's kernel (last axis) and bias,
each depthwise kernel (axis -2) and bias, each BatchNormalization's scale
and offset. Zeroing all of them makes the channel an exact zero wherever it
goes; the offset matters too: a BatchNormalization with a zero scale still
adds its offset, a constant that would reach the consumers and make removing
the channel change the predictions (and, after a padded depthwise
convolution, not even a constant one). The moving statistics need no mask:
with scale and offset zero the normalized channel is zero whatever they are.

Importance scores (higher is kept first):

- `"l2"`: the L2 norm of the producers' kernel slices, normalized per layer
  to mean 1 so that layers of different scales in one coupled group weigh
  alike.
- `"bn"`: `|gamma|` of the group's BatchNormalizations (network slimming),
  the L2 norm where the group has none, normalized per layer likewise: it
  ranks the channels *within* a group, and every group's mean is the number
  of its layers, so it says nothing about which group matters more.
- `"gamma"`: the same `|gamma|` (or kernel norms) summed over the group's
  layers *without* that normalization, on the weights' own scale, so that
  groups can be compared with each other.

`edgekeras.channels.slimming.channel_importance` adds `"taylor"`, which
needs data.
"""

import numpy as np

from edgekeras import backend
from edgekeras.channels.groups import DEPTHWISE, NORM, PRODUCER

__all__ = ["SCORES", "WEIGHT_SCORES", "group_weights", "channel_scores", "channel_masks", "zero_channels"]

# The scores that rank channels within a group (what `ChannelPruning` takes), and all scores read from the weights.
SCORES = ("l2", "bn")
WEIGHT_SCORES = (*SCORES, "gamma")


def group_weights(channel_graph):
    """Where each group's channels live in the model's variables.

    Args:
        channel_graph: `edgekeras.channels.groups.analyse(model)`.

    Returns:
        `{group index: [(layer, role, variable, axis, start)]}`: channel `c`
        of the group is index `start + c` along `axis` of `variable`;
        `role` is `"kernel"`, `"bias"`, `"depthwise"`, `"gamma"` or `"beta"`.

    Example:

    ```python
    places = group_weights(analyse(model))
    ```
    """
    found = {index: [] for index in range(len(channel_graph.groups))}
    for node, kind in zip(channel_graph.graph.nodes, channel_graph.kinds):
        layer = node.layer
        if kind == PRODUCER:
            roles = [("kernel", layer.kernel, -1), ("bias", layer.bias if layer.use_bias else None, -1)]
        elif kind == DEPTHWISE:
            kernel = backend.for_model(layer).prunable_weight(layer)  # `depthwise_kernel` on tf_keras, `kernel` on Keras 3
            roles = [("depthwise", kernel, -2), ("bias", layer.bias if layer.use_bias else None, -1)]
        elif kind == NORM:
            roles = [
                ("gamma", layer.gamma if layer.scale else None, -1),
                ("beta", layer.beta if layer.center else None, -1),
            ]
        else:
            continue
        for index, start in channel_graph.slices(node.outputs[0]):
            found[index] += [(layer, role, variable, axis, start) for role, variable, axis in roles if variable is not None]
    return found


def _per_channel_norm(values, axis, start, size, normalize=True):
    values = np.moveaxis(values, axis, -1)[..., start : start + size]
    norms = np.sqrt(np.sum(values.reshape(-1, size) ** 2, axis=0))
    return norms / max(float(norms.mean()), 1e-12) if normalize else norms


def channel_scores(channel_graph, index, score="l2", places=None):
    """The importance of each channel of group `index` (higher: kept longer).

    Args:
        channel_graph: `edgekeras.channels.groups.analyse(model)`.
        index: the group's index in `channel_graph.groups`.
        score: `"l2"`, `"bn"` or `"gamma"` (see the module's docstring).
        places: `group_weights(channel_graph)`, when already computed.

    Returns:
        A float array of the group's size.

    Raises:
        ValueError: an unknown `score`.

    Example:

    ```python
    scores = channel_scores(analyse(model), 3, "bn")
    ```
    """
    if score not in WEIGHT_SCORES:
        raise ValueError(f"Argument `score` must be one of {', '.join(map(repr, WEIGHT_SCORES))}. Received: score={score!r}")
    places = group_weights(channel_graph) if places is None else places
    size = channel_graph.groups[index].size
    has_gamma = any(place[1] == "gamma" for place in places[index])
    wanted = ("gamma",) if score in ("bn", "gamma") and has_gamma else ("kernel",)
    total = np.zeros(size)
    for layer, role, variable, axis, start in places[index]:
        if role in wanted:
            values = backend.for_model(layer).to_numpy(variable)
            total += _per_channel_norm(np.abs(values), axis, start, size, normalize=score != "gamma")
    return total


def channel_masks(channel_graph, removed, places=None):
    """Masks that zero the `removed` channels of each group.

    Args:
        channel_graph: `edgekeras.channels.groups.analyse(model)`.
        removed: `{group index: boolean array of the group's size}`, True
            where the channel goes.
        places: `group_weights(channel_graph)`, when already computed.

    Returns:
        `[(variable, mask)]`, one per variable of the groups in `removed`,
        the mask a float32 array of the variable's shape.

    Example:

    ```python
    for variable, mask in channel_masks(graph, {3: gone}):
        variable.assign(variable * mask)
    ```
    """
    places = group_weights(channel_graph) if places is None else places
    masks = {}
    for index, gone in removed.items():
        for layer, _, variable, axis, start in places[index]:
            if id(variable) not in masks:
                masks[id(variable)] = (variable, np.ones(tuple(variable.shape), "float32"))
            view = np.moveaxis(masks[id(variable)][1], axis, -1)
            view[..., start : start + len(gone)][..., np.asarray(gone, bool)] = 0.0
    return list(masks.values())


def zero_channels(channel_graph, removed):
    """Sets the `removed` channels of each group to zero in the model's weights, now.

    Args:
        channel_graph: `edgekeras.channels.groups.analyse(model)`.
        removed: `{group name or index: channel indices or boolean array}`.

    Returns:
        None.

    Raises:
        KeyError: a group name the model does not have.

    Example:

    ```python
    zero_channels(analyse(model), {"block_1_expand": [0, 5, 7]})
    shrink(model)  # block_1_expand keeps 93 channels, rounded up
    ```
    """
    names = {group.name: index for index, group in enumerate(channel_graph.groups)}
    masks = {}
    for group, channels in removed.items():
        if isinstance(group, str) and group not in names:
            raise KeyError(f"No channel group named {group!r}; the model's groups: {', '.join(names)}")
        index = names[group] if isinstance(group, str) else group
        gone = np.zeros(channel_graph.groups[index].size, bool)
        gone[np.asarray(channels)] = True
        masks[index] = gone
    for variable, mask in channel_masks(channel_graph, masks):
        variable.assign(backend.for_model(variable).to_numpy(variable) * mask)
