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
importance = channel_importance(model, "taylor", data=train.take(16), loss="sparse_categorical_crossentropy")
widths = allocate(find_groups(model), importance, table, target_latency=0.6)
apply_widths(model, widths, importance)  # in place: the other channels are zero
slim = shrink(model)
```
"""

import numbers

import numpy as np

from edgekeras import backend
from edgekeras.channels.groups import analyse
from edgekeras.channels.masks import WEIGHT_SCORES, channel_scores, group_weights, zero_channels

__all__ = ["IMPORTANCE_SCORES", "apply_widths", "channel_importance", "removed_share"]


IMPORTANCE_SCORES = (*WEIGHT_SCORES, "taylor")


def _taylor_places(places):
    """`{group index: [(variable, axis, start), ...]}` per layer: the gates a channel's Taylor term is read from."""
    gated = {}
    for index, entries in places.items():
        wanted = ("gamma", "beta") if any(entry[1] == "gamma" for entry in entries) else ("kernel", "bias")
        by_layer = {}
        for layer, role, variable, axis, start in entries:
            if role in wanted:
                by_layer.setdefault(id(layer), []).append((variable, axis, start))
        gated[index] = list(by_layer.values())
    return gated


def _taylor(model, channel_graph, places, data, loss):
    """First-order Taylor importance (Molchanov et al., CVPR 2019), summed over batches and the group's layers."""
    import tensorflow as tf

    gated = {index: layers for index, layers in _taylor_places(places).items() if channel_graph.groups[index].prunable}
    variables = list({id(v): v for layers in gated.values() for layer in layers for v, _, _ in layer}.values())
    positions = {id(variable): position for position, variable in enumerate(variables)}
    totals = {index: np.zeros(channel_graph.groups[index].size) for index in gated}
    batches = 0
    for images, labels in data:
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(labels, model(images, training=False)))
        gradients = tape.gradient(value, variables)
        products = [
            np.zeros(()) if gradient is None else backend.for_model(model).to_numpy(variable) * np.asarray(gradient)
            for variable, gradient in zip(variables, gradients)
        ]
        for index, layers in gated.items():
            size = channel_graph.groups[index].size
            for layer in layers:
                # The loss change when the channel's gate (its scale and offset) goes to zero, to first order.
                change = np.zeros(size)
                for variable, axis, start in layer:
                    product = products[positions[id(variable)]]
                    if product.ndim:
                        change += np.moveaxis(product, axis, -1)[..., start : start + size].reshape(-1, size).sum(axis=0)
                totals[index] += change**2
        batches += 1
    if not batches:
        raise ValueError("Argument `data` must yield at least one (images, labels) batch for score='taylor'. Received: no batch")
    return {channel_graph.groups[index].name: total / batches for index, total in totals.items()}


def _check_loss(model, loss):
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError("Argument `loss` is needed for score='taylor' when the model is not compiled with one. Received: loss=None")
    if isinstance(loss, str):
        loss = backend.for_model(model).keras.losses.get(loss)
    if not callable(loss):
        raise ValueError(f"Argument `loss` must be a loss name or a callable (labels, predictions) -> loss. Received: loss={loss!r}")
    return loss


def channel_importance(model, score="bn", data=None, loss=None):
    """The importance of every channel of each prunable group, for `allocate` and `apply_widths`.

    `allocate` compares scores *across* groups, so it needs a score on one
    scale for all of them: `"taylor"` (an estimate of the loss each channel
    costs) or `"gamma"`. `"bn"` and `"l2"` rank the channels within a group
    only (every group's mean is the number of its layers).

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model.
        score: `"bn"` (BatchNormalization |gamma|, the kernel norms where a
            group has none) or `"l2"` (the producers' kernel norms), each
            layer's values normalized to mean 1 and summed over the group's
            layers (see `edgekeras.channels.masks`); `"gamma"`, the same
            |gamma| (or kernel norms) un-normalized; or `"taylor"`, the
            first-order Taylor estimate of the loss change when a channel's
            BatchNormalization scale and offset (kernel and bias where the
            group has none) go to zero: per batch and layer
            `(sum of weight x gradient over the channel)^2`, summed over the
            group's layers and averaged over the batches (Molchanov et al.,
            "Importance estimation for neural network pruning", CVPR 2019).
        data: for `"taylor"`: an iterable of `(images, labels)` batches
            (a few training batches are enough), run in inference mode.
        loss: for `"taylor"`: a loss name or a callable
            `(labels, predictions)`; the model's compiled loss when omitted.
            Needs the TensorFlow backend (tf_keras, or Keras 3 on
            TensorFlow).

    Returns:
        `{group name: float array of the group's size}` for every prunable
        group.

    Raises:
        ValueError: an unknown `score`, or `"taylor"` without `data`, with
            `data` that yields no batch or without a loss.

    Example:

    ```python
    importance = channel_importance(model)
    importance["block_1_expand"].shape  # (96,)
    sensitivity = channel_importance(model, "taylor", data=train_batches.take(8), loss="sparse_categorical_crossentropy")
    ```
    """
    if score not in IMPORTANCE_SCORES:
        raise ValueError(f"Argument `score` must be one of {', '.join(map(repr, IMPORTANCE_SCORES))}. Received: score={score!r}")
    channel_graph = analyse(model)
    places = group_weights(channel_graph)
    if score == "taylor":
        if data is None:
            raise ValueError("Argument `data` is needed for score='taylor': (images, labels) batches. Received: data=None")
        return _taylor(model, channel_graph, places, data, _check_loss(model, loss))
    return {
        group.name: channel_scores(channel_graph, index, score, places)
        for index, group in enumerate(channel_graph.groups)
        if group.prunable
    }


def removed_share(groups, widths):
    """The share of the named groups' channels that `widths` removes (what a channel-pruning ramp ends at).

    Args:
        groups: `ChannelGroup`s of the model.
        widths: `{group name: channels kept}`; names of no group are left out.

    Returns:
        A float in [0, 1] (0 when `widths` names no group).

    Example:

    ```python
    removed_share(find_groups(model), {"block_1_expand": 48})  # 0.5 of its 96 channels
    ```
    """
    sizes = {group.name: group.size for group in groups}
    named = [name for name in widths if name in sizes]
    total = sum(sizes[name] for name in named)
    return sum(max(0, sizes[name] - widths[name]) for name in named) / total if total else 0.0


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
            `"bn"`, `"l2"` or `"gamma"` (see `channel_importance`), or
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
        if scores not in WEIGHT_SCORES:
            names = ", ".join(map(repr, WEIGHT_SCORES))
            raise ValueError(f"Argument `scores` must be one of {names} or a dict. Received: scores={scores!r}")
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
