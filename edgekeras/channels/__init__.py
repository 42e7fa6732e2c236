"""Channel pruning: remove whole filters so the deployed file is smaller *and* faster."""

from edgekeras.channels.groups import ChannelGroup

__all__ = ["ChannelGroup"]
