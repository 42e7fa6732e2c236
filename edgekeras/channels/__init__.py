"""Channel pruning: remove whole filters so the deployed file is smaller *and* faster.

- `groups`: `find_groups(model)`, the sets of channels removed together
  (`ChannelGroup`), and `analyse(model)`, the graph they run through.
- `masks`: where a group's channels live in the weights, importance scores,
  masks, `zero_channels`.
- `shrink`: `shrink(model)`, the narrower dense model without the zeroed
  channels; `kept_channels(model)`, the widths it would have.
- `latency` / `measure`: `LatencyTable`, a per-layer latency table measured
  with LiteRT (`measure_table`) or read from `edgekeras bench` results
  (`table_from_bench`), predicting a slimmed model's latency.
- `allocation`: `allocate`, the channels each group keeps for a latency
  target (NetAdapt-style), and the uniform baselines.
- `slimming`: `apply_widths`, zeroing each group's least important channels
  down to such widths (then `shrink`), and `channel_importance`, the scores
  `allocate` takes.

The callback that ramps channels to zero during `fit` is
`edgekeras.callbacks.ChannelPruning`.
"""

from edgekeras.channels.groups import ChannelGraph, ChannelGroup, analyse, find_groups
from edgekeras.channels.masks import SCORES, channel_masks, channel_scores, group_weights, zero_channels
from edgekeras.channels.shrink import DEFAULT_ROUND_TO, kept_channels, removable_channels, shrink
from edgekeras.channels.latency import LatencyTable, LatencyTableError
from edgekeras.channels.measure import alternating_medians, measure_table, table_from_bench, write_layer_files
from edgekeras.channels.allocation import allocate, uniform, uniform_at_latency
from edgekeras.channels.slimming import apply_widths, channel_importance, removed_share

__all__ = [
    "DEFAULT_ROUND_TO",
    "SCORES",
    "ChannelGraph",
    "ChannelGroup",
    "LatencyTable",
    "LatencyTableError",
    "allocate",
    "alternating_medians",
    "analyse",
    "apply_widths",
    "channel_importance",
    "channel_masks",
    "channel_scores",
    "find_groups",
    "group_weights",
    "kept_channels",
    "measure_table",
    "removable_channels",
    "removed_share",
    "shrink",
    "table_from_bench",
    "uniform",
    "uniform_at_latency",
    "write_layer_files",
    "zero_channels",
]
