"""The schedules of `EdgeTrainer.fit`'s pruning phases, made from the numbers and dicts it accepts.

`fit(prune=0.75)` and `fit(channels=0.5)` (or `channels={group: kept}`) are
short for a schedule object: a polynomial ramp over the first 2/3 of the
phase, the rest left to recover at the final sparsity. A fraction of
channels is removed from every prunable channel group, least important
(BatchNorm |gamma|) first; a dict of widths narrows the groups it names,
each through its own share of the ramp; a `ChannelPruning` callback brings
its own schedule, score and rounding (its steps count from the phase's
start). The float model stays the distillation teacher of the later phases.
"""

from edgekeras import channels as channels_module
from edgekeras.callbacks import ChannelPruning
from edgekeras.schedules import PruningSchedule, polynomial_ramp

__all__ = ["MASK_UPDATES", "RAMP_FRACTION", "channel_pruning_callback", "pruning_schedule"]

# The sparsity ramp of `prune=<float>` covers this share of the pruning
# phase; the rest lets the network recover at the final sparsity.
RAMP_FRACTION = 2 / 3
MASK_UPDATES = 10


def pruning_schedule(prune, steps):
    """`fit(prune=...)`'s schedule: the one given, or a polynomial ramp to that sparsity over `steps`.

    Args:
        prune: a target sparsity in (0, 1) or a `PruningSchedule`.
        steps: optimizer steps of the pruning phase.

    Returns:
        A `PruningSchedule`.

    Example:

    ```python
    schedule = pruning_schedule(0.75, steps=3000)  # 0.75 reached at step 2000
    ```
    """
    if isinstance(prune, PruningSchedule):
        return prune
    return polynomial_ramp(steps, float(prune), end=RAMP_FRACTION, mask_updates=MASK_UPDATES)


def channel_pruning_callback(channels, steps, model):
    """`fit(channels=...)`'s `ChannelPruning`: the one given, or a ramp over `steps` to a fraction or to widths.

    Args:
        channels: a fraction of channels to remove in (0, 1), `{group name:
            channels kept}`, or a `ChannelPruning`.
        steps: optimizer steps of the channel-pruning phase (unused for a
            `ChannelPruning`).
        model: the model the phase trains (for the groups' sizes).

    Returns:
        A `ChannelPruning` callback.

    Example:

    ```python
    pruning = channel_pruning_callback(0.5, steps=600, model=model)
    ```
    """
    if isinstance(channels, ChannelPruning):
        return channels
    if not isinstance(channels, dict):
        return ChannelPruning(polynomial_ramp(steps, float(channels), end=RAMP_FRACTION, mask_updates=MASK_UPDATES))
    # The ramp's final value is the share of the named groups' channels that goes, as logged.
    final = min(max(channels_module.removed_share(channels_module.find_groups(model), channels), 1e-3), 0.999)
    return ChannelPruning(polynomial_ramp(steps, final, end=RAMP_FRACTION, mask_updates=MASK_UPDATES), widths=channels)
