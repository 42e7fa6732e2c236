"""Channel pruning: remove whole filters so the deployed file is smaller *and* faster.

- `groups`: `find_groups(model)`, the sets of channels removed together
  (`ChannelGroup`), and `analyse(model)`, the graph they run through.
- `masks`: where a group's channels live in the weights, importance scores,
  masks, `zero_channels`.
- `shrink`: `shrink(model)`, the narrower dense model without the zeroed
  channels; `kept_channels(model)`, the widths it would have.

The callback that ramps channels to zero during `fit` is
`edgekeras.callbacks.ChannelPruning`.
"""

from edgekeras.channels.groups import ChannelGraph, ChannelGroup, analyse, find_groups
from edgekeras.channels.masks import SCORES, channel_masks, channel_scores, group_weights, zero_channels
from edgekeras.channels.shrink import DEFAULT_ROUND_TO, kept_channels, shrink

__all__ = [
    "DEFAULT_ROUND_TO",
    "SCORES",
    "ChannelGraph",
    "ChannelGroup",
    "analyse",
    "channel_masks",
    "channel_scores",
    "find_groups",
    "group_weights",
    "kept_channels",
    "shrink",
    "zero_channels",
]
