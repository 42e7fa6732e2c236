"""Slimming a model to chosen widths: which channels each group keeps.

`allocate` and `uniform_at_latency` (`edgekeras.channels.allocation`) say
*how many* channels each group keeps; `apply_widths` decides *which*: in
each group it zeroes the least important channels down to the allocated
count (the masks `zero_channels` writes, so the model keeps its shape and
`shrink` then removes exactly those channels). `channel_importance` gives
the per-group scores in the form `allocate` takes, so the channels the
allocation counted as lost are the ones `apply_widths` removes.

Example:

```python
importance = channel_importance(model, "bn")
widths = allocate(find_groups(model), importance, table, target_latency=0.6)
apply_widths(model, widths, importance)  # in place: the other channels are zero
slim = shrink(model)
```
"""

import numbers

import numpy as np

from edgekeras.channels.groups import analyse
from edgekeras.channels.masks import SCORES, channel_scores, group_weights, zero_channels

__all__ = ["apply_widths", "channel_importance"]


def channel_importance(model, score="bn"):
    """The importance of every channel of each prunable group, for `allocate` and `apply_widths`.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model.
        score: `"bn"` (BatchNormalization |gamma|, the kernel norms where a
            group has none) or `"l2"` (the producers' kernel norms); see
            `edgekeras.channels.masks`. Each layer's values are normalized
            to mean 1 and summed over the group's layers, so a channel that
            runs through more BatchNormalizations weighs more.

    Returns:
        `{group name: float array of the group's size}` for every prunable
        group.

    Raises:
        ValueError: an unknown `score`.

    Example:

    ```python
    importance = channel_importance(model)
    importance["block_1_expand"].shape  # (96,)
    ```
    """
    if score not in SCORES:
        raise ValueError(f"Argument `score` must be one of {', '.join(map(repr, SCORES))}. Received: score={score!r}")
    channel_graph = analyse(model)
    places = group_weights(channel_graph)
    return {
        group.name: channel_scores(channel_graph, index, score, places)
        for index, group in enumerate(channel_graph.groups)
        if group.prunable
    }


def _check_widths(groups, widths):
    """`{group index: kept}` of the groups `widths` narrows."""
    if not isinstance(widths, dict):
        raise ValueError(f"Argument `widths` must be a dict of group name -> kept channels. Received: {type(widths).__name__}")
    by_name = {group.name: index for index, group in enumerate(groups)}
    unknown = sorted(set(widths) - set(by_name), key=str)
    if unknown:
        raise ValueError(f"Argument `widths` names no channel group of the model: {unknown}. Groups: {sorted(by_name)}")
    narrowed = {}
    for name, kept in widths.items():
        group = groups[by_name[name]]
        if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 1 <= kept <= group.size:
            raise ValueError(
                f"Argument `widths` must keep between 1 and {group.size} channels of group {name!r}. Received: widths[{name!r}]={kept!r}"
            )
        if kept < group.size and not group.prunable:
            raise ValueError(
                f"Argument `widths` narrows group {name!r}, which is not prunable (its channels are tied to the model's "
                f"input or output, or to a layer that mixes channels). Received: widths[{name!r}]={kept}, its size is {group.size}"
            )
        if kept < group.size:
            narrowed[by_name[name]] = int(kept)
    return narrowed


def _scores_for(channel_graph, index, scores, places):
    group = channel_graph.groups[index]
    if isinstance(scores, str):
        return channel_scores(channel_graph, index, scores, places)
    if group.name not in scores:
        raise ValueError(f"Argument `scores` must score every group `widths` narrows. Missing: {group.name!r}")
    values = np.asarray(scores[group.name], dtype=np.float64).reshape(-1)
    if values.shape != (group.size,) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"Argument `scores` must hold {group.size} finite scores for group {group.name!r}. "
            f"Received: shape {np.shape(scores[group.name])}"
        )
    return values


def apply_widths(model, widths, scores="bn"):
    """Zeroes, in place, each group's least important channels so that it keeps `widths[group]`.

    The model keeps its shape; the zeroed channels are exact zeros wherever
    they live (kernels, biases, depthwise kernels, BatchNormalization scale
    and offset), so `shrink(model)` removes them and its predictions equal
    the zeroed model's. Channels that are zero already score lowest under
    `"bn"` and `"l2"`, so a channel-pruned model loses those first.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model; its
            weights are changed.
        widths: `{group name: kept channels}`, e.g. from `allocate` or
            `uniform_at_latency`; groups not named keep every channel. Give
            `shrink` the same `round_to` as the allocation, or it keeps zero
            channels to reach its multiple.
        scores: how to rank each group's channels (lowest removed first):
            `"bn"` or `"l2"` (see `channel_importance`), or
            `{group name: per-channel scores}`, e.g. the `importance` given
            to `allocate`.

    Returns:
        `{group name: sorted indices of the channels zeroed}` for each group
        `widths` narrows.

    Raises:
        ValueError: `widths` is not a dict, names a group the model does not
            have, keeps a count outside [1, the group's size] or narrows a
            group that is not prunable; `scores` is an unknown name or lacks
            or mis-sizes a narrowed group's scores.

    Example:

    ```python
    slim_source = clone_with_weights(model)  # keep the dense model as it is
    apply_widths(slim_source, {"block_1_expand": 48, "Conv_1": 640})
    slim = shrink(slim_source)
    ```
    """
    if isinstance(scores, str):
        if scores not in SCORES:
            raise ValueError(f"Argument `scores` must be one of {', '.join(map(repr, SCORES))} or a dict. Received: scores={scores!r}")
    elif not isinstance(scores, dict):
        raise ValueError(f"Argument `scores` must be a score name or a dict of group name -> scores. Received: {type(scores).__name__}")
    channel_graph = analyse(model)
    narrowed = _check_widths(channel_graph.groups, widths)
    places = group_weights(channel_graph)
    removed = {}
    for index, kept in narrowed.items():
        values = _scores_for(channel_graph, index, scores, places)
        removed[index] = np.sort(np.argsort(values, kind="stable")[: channel_graph.groups[index].size - kept])
    if removed:
        zero_channels(channel_graph, removed)
    return {channel_graph.groups[index].name: channels for index, channels in removed.items()}
