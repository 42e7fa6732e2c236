"""How many channels each group keeps: allocated by measured latency, or uniformly.

`allocate` is NetAdapt's greedy search (Yang et al., ECCV 2018) on a
`LatencyTable` instead of a device in the loop: starting from the dense
model, each step takes `round_to` channels (the least important ones) from
the one group where they save the most predicted latency per unit of
importance lost, re-predicting the layers around that group at their current
widths, until the predicted latency reaches the target. Groups whose
channels are cheap to keep and valuable stay wide; the costly channels of
high-resolution layers with little importance go first.

`uniform` keeps the same fraction of every group (the usual width multiplier),
`uniform_at_latency` the fraction that meets a latency target: the baseline
an allocation is compared with at equal predicted latency.

Example:

```python
widths = allocate(groups, importance, table, target_latency=0.6, round_to=8)
baseline = uniform_at_latency(groups, table, target_latency=0.6, round_to=8)
```
"""

import math

import numpy as np

from edgekeras.channels.latency import slimmed_widths
from edgekeras.channels.shrink import DEFAULT_ROUND_TO
from edgekeras.images import check_positive_int

__all__ = ["allocate", "uniform", "uniform_at_latency"]


def _check_fraction(value, argument, low_open=True):
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"Argument `{argument}` must be in {interval}. Received: {argument}={value!r}")


def _rounded(size, fraction, round_to):
    """`fraction` of `size` channels as a multiple of `round_to`, within [min(round_to, size), size]."""
    kept = int(round(size * fraction / round_to)) * round_to
    return min(max(kept, min(round_to, size)), size)


def _minimum(size, min_fraction, round_to):
    """The fewest channels a group may keep: `min_fraction` of it rounded up to `round_to`, at least one step."""
    kept = math.ceil(size * min_fraction / round_to) * round_to
    return min(max(kept, min(round_to, size)), size)


def uniform(groups, fraction, round_to=DEFAULT_ROUND_TO):
    """Every prunable group keeps `fraction` of its channels, rounded to a multiple of `round_to`.

    Args:
        groups: `ChannelGroup`s.
        fraction: the kept fraction, in (0, 1].
        round_to: kept counts are multiples of this (a group smaller than it
            keeps all its channels).

    Returns:
        `{group name: kept channels}`, unprunable groups at full size.

    Raises:
        ValueError: `fraction` outside (0, 1] or `round_to` not a positive integer.

    Example:

    ```python
    uniform(groups, 0.5, round_to=8)  # {"block_1_expand": 48, ...}
    ```
    """
    _check_fraction(fraction, "fraction")
    check_positive_int(round_to, "round_to")
    return {group.name: _rounded(group.size, fraction, round_to) if group.prunable else group.size for group in groups}


def uniform_at_latency(groups, table, target_latency, round_to=DEFAULT_ROUND_TO):
    """The uniform slimming with the most channels whose predicted latency meets the target.

    Args:
        groups: `ChannelGroup`s of the table's model.
        table: its `LatencyTable`.
        target_latency: the predicted latency as a fraction of the dense
            model's, in (0, 1].
        round_to: kept counts are multiples of this.

    Returns:
        `{group name: kept channels}` (the thinnest uniform slimming when
        no fraction reaches the target).

    Raises:
        ValueError: `target_latency` outside (0, 1] or `round_to` not a positive integer.

    Example:

    ```python
    baseline = uniform_at_latency(groups, table, 0.6)
    ```
    """
    _check_fraction(target_latency, "target_latency")
    check_positive_int(round_to, "round_to")
    target = target_latency * table.predict()
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        if table.predict(None, uniform(groups, max(middle, 1e-9), round_to), groups=groups) <= target:
            low = middle
        else:
            high = middle
    return uniform(groups, max(low, 1e-9), round_to)


def _check_importance(groups, importance):
    if not isinstance(importance, dict):
        raise ValueError(f"Argument `importance` must be a dict of group name -> per-channel scores. Received: {type(importance).__name__}")
    scores = {}
    for group in groups:
        if not group.prunable:
            continue
        if group.name not in importance:
            raise ValueError(f"Argument `importance` must score every prunable group. Missing: {group.name!r}")
        values = np.asarray(importance[group.name], dtype=np.float64).reshape(-1)
        if values.shape != (group.size,) or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(
                f"Argument `importance` must hold {group.size} finite non-negative scores for group {group.name!r}. "
                f"Received: shape {np.shape(importance[group.name])}"
            )
        scores[group.name] = np.sort(values)
    return scores


def _step_layers(groups, table):
    """`{group name: the table's layers whose cost changes with it}`."""
    return {
        group.name: sorted({*group.producers, *group.consumers, *group.passthrough} & set(table.layers))
        for group in groups
    }


class _Search:
    """The greedy search's state: each group's kept count and the layer widths they make."""

    def __init__(self, groups, scores, table, round_to, min_fraction):
        self.groups = {group.name: group for group in groups}
        self.scores, self.table, self.round_to = scores, table, round_to
        self.kept = {group.name: group.size for group in groups}
        self.floor = {name: _minimum(self.groups[name].size, min_fraction, round_to) for name in scores}
        self.layers = _step_layers(groups, table)
        self.widths = table.dense_widths()
        # A step changes the widths of its group's layers only: the savings of
        # the groups that share none of them stay valid.
        self.neighbours = {
            name: [other for other in self.layers if set(self.layers[other]) & set(layers)] for name, layers in self.layers.items()
        }
        self.savings = {}
        # Relative to the mean score, so that channels scored exactly zero are
        # free to remove and still ranked by the latency they save.
        total = sum(float(values.sum()) for values in scores.values())
        count = sum(values.size for values in scores.values())
        self.epsilon = 1e-9 * (total / count if count and total > 0 else 1.0)

    def next_count(self, name):
        """The group's next smaller multiple of `round_to` (None at its minimum)."""
        kept = self.kept[name]
        return max((kept - 1) // self.round_to * self.round_to, self.floor[name]) if kept > self.floor[name] else None

    def saving(self, name, count):
        """Predicted milliseconds saved by narrowing group `name` to `count` channels now."""
        if name not in self.savings:
            changed = slimmed_widths([self.groups[name]], {name: count}, self.widths)
            self.savings[name] = self.table.scale * sum(
                self.table.layer_cost(layer, *self.widths[layer]) - self.table.layer_cost(layer, *changed[layer])
                for layer in self.layers[name]
            )
        return self.savings[name]

    def lost(self, name, count):
        removed_before = self.groups[name].size - self.kept[name]
        return float(self.scores[name][removed_before : self.groups[name].size - count].sum())

    def best_step(self):
        best = None
        for name in self.scores:
            count = self.next_count(name)
            if count is None:
                continue
            saved = self.saving(name, count)
            if saved <= 0:
                continue
            ratio = saved / (self.lost(name, count) + self.epsilon)
            if best is None or ratio > best[0]:
                best = (ratio, name, count, saved)
        return best

    def apply(self, name, count):
        self.widths = slimmed_widths([self.groups[name]], {name: count}, self.widths)
        self.kept[name] = count
        for other in self.neighbours[name]:
            self.savings.pop(other, None)


def allocate(groups, importance, table, target_latency, *, round_to=DEFAULT_ROUND_TO, min_fraction=0.1):
    """Channels each group keeps so that the predicted latency meets `target_latency`, NetAdapt-style.

    Args:
        groups: `ChannelGroup`s of the table's model; unprunable ones keep
            every channel.
        importance: `{group name: per-channel scores}` (numpy arrays of
            length `group.size`, non-negative); every prunable group needs
            one. They must be comparable across groups:
            `channel_importance(model, "taylor", data=...)` (the loss each
            channel costs, to first order) is; `"bn"` is not (each layer is
            normalized to mean 1, so every group looks alike and the search
            follows latency alone: on ImageNet MobileNetV2 weights it starved
            the early blocks, see benchmarks/README.md).
        table: the model's `LatencyTable`.
        target_latency: the predicted latency to reach, as a fraction of the
            dense model's predicted latency, in (0, 1].
        round_to: kept counts are multiples of this (or the group's size);
            one step removes this many channels from one group.
        min_fraction: no group keeps fewer than this fraction of its
            channels (rounded up to `round_to`), in [0, 1].

    Returns:
        `{group name: kept channels}` for every group.

    Raises:
        ValueError: a bad argument, or a target that is out of reach with
            every group at its minimum (the message gives the reachable
            fraction).

    Example:

    ```python
    importance = channel_importance(model, "taylor", data=train.take(16), loss="sparse_categorical_crossentropy")
    widths = allocate(groups, importance, table, 0.6)
    ```
    """
    _check_fraction(target_latency, "target_latency")
    check_positive_int(round_to, "round_to")
    _check_fraction(min_fraction, "min_fraction", low_open=False)
    scores = _check_importance(groups, importance)
    search = _Search(groups, scores, table, round_to, min_fraction)
    dense = table.predict()
    latency = table.predict(search.widths)
    while latency > target_latency * dense:
        step = search.best_step()
        if step is None:
            raise ValueError(
                f"Argument `target_latency` cannot be reached: with every prunable group at its minimum "
                f"(min_fraction={min_fraction}) the predicted latency is {latency / dense:.3f} of the dense model's. "
                f"Received: target_latency={target_latency}. Lower `min_fraction` or raise `target_latency`."
            )
        _, name, count, saved = step
        search.apply(name, count)
        latency -= saved
    return dict(search.kept)
