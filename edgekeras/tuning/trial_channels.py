"""The channel widths of `EdgeTuner` trials that search the latency target.

A trial whose `target_latency` hyperparameter is below 1 prunes whole
channels after its float phase (`edgekeras.tuning.training`). `TrialWidths`
decides how many channels each group keeps: it measures the model's
per-layer latency table once per search and architecture
(`edgekeras.channels.measure_table`, 20-40 s for MobileNetV2 at 96 px), then
spreads the target over the channel groups, by importance ("latency",
`edgekeras.channels.allocate`) or uniformly (`uniform_at_latency`).

Example:

```python
from edgekeras.tuning.trial_channels import TrialWidths

widths = TrialWidths("latency").widths(model, 0.6)  # {"block_1_expand": 48, ...}
```
"""

import time

import keras_tuner

from edgekeras import channels
from edgekeras.arguments import check_positive_int
from edgekeras.choices import CHANNEL_ALLOCATIONS

__all__ = ["TrialWidths", "train_every_layer"]


def _architecture_key(model):
    """What a latency table depends on: the layers' names, kinds and output shapes."""
    return tuple((layer.name, type(layer).__name__, str(getattr(layer, "output_shape", None))) for layer in model.layers)


def train_every_layer(model):
    """Makes every layer of `model` but BatchNormalization trainable; returns `{layer name: trainable}` as it was.

    The channel-pruning phase trains the whole model: channels of a frozen
    prefix (a pretrained base) go too, and the layers around them recover.
    Frozen BatchNormalizations keep their statistics, as in fine-tuning;
    their channels are removed all the same.

    Args:
        model: a tf_keras or Keras 3 model.

    Returns:
        The flags to restore afterwards (by layer name: `shrink` keeps the names).

    Example:

    ```python
    flags = train_every_layer(model)
    ```
    """
    flags = {layer.name: layer.trainable for layer in model.layers}
    for layer in model.layers:
        if "BatchNormalization" not in type(layer).__name__:
            layer.trainable = True
    return flags


class TrialWidths:
    """Channel widths for a latency target, from a latency table measured once per search and architecture.

    Args:
        allocation: "latency" (the channels that save the most predicted
            latency per importance go first) or "uniform" (every group keeps
            the same share, the widest that meets the target).
        latency_threads: LiteRT threads the table is measured with.
        verbose: print when a table is measured.

    Raises:
        ValueError: an unknown `allocation` or `latency_threads` that is not
            a positive integer.

    Example:

    ```python
    widths = TrialWidths("uniform", latency_threads=1).widths(model, 0.7)
    ```
    """

    def __init__(self, allocation="latency", latency_threads=1, verbose=1):
        if allocation not in CHANNEL_ALLOCATIONS:
            raise ValueError(
                f"Argument `channel_allocation` must be one of {', '.join(map(repr, CHANNEL_ALLOCATIONS))}. "
                f"Received: channel_allocation={allocation!r}"
            )
        check_positive_int(latency_threads, "latency_threads")
        self.allocation = allocation
        self.latency_threads = latency_threads
        self.verbose = verbose
        # {architecture key: LatencyTable}; tables are small, every one is kept.
        self._tables = {}

    def widths(self, model, target_latency):
        """The channels each group of `model` keeps for `target_latency`.

        Args:
            model: the float-trained tf_keras model (its BatchNormalization
                scales rank the channels of the "latency" allocation).
            target_latency: the slimmed int8 file's predicted latency as a
                fraction of the dense one's, in (0, 1).

        Returns:
            `{group name: channels kept}` of the groups that lose channels
            (empty when rounding to multiples of 16 keeps them all).

        Raises:
            keras_tuner.errors.FatalValueError: no latency table can be
                measured on the model (a Keras 3 or nested model).
            ValueError: the target is out of reach.
        """
        groups = channels.find_groups(model)
        table = self.table(model, groups)
        try:
            if self.allocation == "uniform":
                widths = channels.uniform_at_latency(groups, table, target_latency)
            else:
                importance = channels.channel_importance(model, "bn")
                widths = channels.allocate(
                    groups, {g.name: importance[g.name] for g in groups if g.prunable}, table, target_latency
                )
        except ValueError as error:
            raise ValueError(f"Hyperparameter `target_latency` cannot be met on model {model.name!r}: {error}") from error
        sizes = {group.name: group.size for group in groups}
        return {name: kept for name, kept in widths.items() if kept < sizes[name]}

    def table(self, model, groups):
        """The model's per-layer `LatencyTable`, measured on the first call for its architecture.

        Args:
            model: a flat tf_keras functional model.
            groups: its `ChannelGroup`s (`edgekeras.channels.find_groups`).

        Returns:
            A `LatencyTable`.

        Raises:
            keras_tuner.errors.FatalValueError: the table cannot be measured
                (every trial of this model would fail the same way).
        """
        key = _architecture_key(model)
        if key not in self._tables:
            start = time.perf_counter()
            try:
                table = channels.measure_table(model, groups=groups, num_threads=self.latency_threads,
                                               round_to=channels.DEFAULT_ROUND_TO)
            except (TypeError, ValueError) as error:
                raise keras_tuner.errors.FatalValueError(
                    f"Hyperparameter `target_latency` below 1 needs a latency table of the model, which cannot be "
                    f"measured: {error} Search with target_latency = 1.0 (no channel pruning), or build a flat "
                    "tf_keras functional model."
                ) from error
            self._tables[key] = table
            if self.verbose:
                print(
                    f"[edgekeras tune] latency table of {model.name!r} measured with LiteRT "
                    f"({self.latency_threads} thread(s)) in {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
        return self._tables[key]
