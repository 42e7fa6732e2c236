"""The channel-pruning stage of `edgekeras run`: the float model slimmed to a narrower, faster one.

`[channels]` (`edgekeras.app.channel_section`) says how many channels each
group keeps: one removed fraction for every group, or a latency target
spread over the groups by a per-layer latency table (measured here with
LiteRT, or timed on the target device). `check_slimming` runs before any
training, with the trial conversions: it checks the keys that name layers
and groups, measures (or reads) the latency table, and converts the
untrained model slimmed at those widths to int8, so that nothing about
slimming fails after the float phase. `slim` then fine-tunes a copy of the
float model on the images while `ChannelPruning` ramps the chosen channels
to zero, removes them, and leaves the narrower model in `models["slim"]`.

Example:

```python
from edgekeras.app.slim import SLIM_DIR

print(SLIM_DIR)  # the run directory's sub-directory for the table and widths
```
"""

import dataclasses
import os

import numpy as np

from edgekeras import channels
from edgekeras.app.config import ConfigError
from edgekeras.app.factories import make_trainer, prune_schedule
from edgekeras.app.state import log
from edgekeras.callbacks import ChannelPruning
from edgekeras.data import resolve_steps_per_epoch
from edgekeras.io import atomic_write_json, read_json
from edgekeras.litert.trial import trial_conversion
from edgekeras.models import clone_with_weights, freeze_before
from edgekeras.schedules import polynomial_ramp

__all__ = ["SLIM_DIR", "check_slimming", "slim", "slim_widths"]

SLIM_DIR = "channels"


def _trainable(model, config):
    """`model` with the layers from `channels.trainable_from` on trainable (BatchNorm per `model.train_batchnorm`)."""
    start = config.channels.trainable_from or 0
    try:
        return freeze_before(model, start, train_batchnorm=config.model.train_batchnorm)
    except ValueError as error:
        raise ConfigError(
            f"Config key `channels.trainable_from` must name a layer of the model. {error} "
            f"Received: channels.trainable_from={config.channels.trainable_from!r}"
        ) from error


def _groups(model, section):
    """The model's channel groups, those in `skip_groups` or with frozen producers marked unprunable."""
    groups = channels.find_groups(model)
    names = {group.name for group in groups if group.prunable}
    unknown = [name for name in section.skip_groups if name not in names]
    if unknown:
        raise ConfigError(
            f"Config key `channels.skip_groups` must name prunable channel groups of the model ({', '.join(sorted(names))}). "
            f"Received: channels.skip_groups={list(section.skip_groups)!r}; unknown: {unknown}"
        )
    frozen = {layer.name for layer in model.layers if not layer.trainable}
    return [
        dataclasses.replace(group, prunable=False)
        if group.name in section.skip_groups or frozen & set(group.producers) else group
        for group in groups
    ]


def _latency_table(context, model):
    """The `channels.latency_table` file, else the run's own table (measured once, kept in the run directory)."""
    section = context.config.channels
    if section.latency_table:
        try:
            return channels.LatencyTable.load(section.latency_table)
        except (OSError, channels.LatencyTableError) as error:
            raise ConfigError(
                f"Config key `channels.latency_table` must name a latency table JSON "
                f"(edgekeras.channels.LatencyTable.save). {error} Received: channels.latency_table={section.latency_table!r}"
            ) from error
    path = context.path(SLIM_DIR, "latency_table.json")
    if os.path.isfile(path):
        return channels.LatencyTable.load(path)
    try:
        table = channels.measure_table(model, groups=channels.find_groups(model), num_threads=section.latency_threads,
                                       round_to=section.round_to)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"The latency table of `channels.target_latency` cannot be measured on this model: {error}. "
            "Set `channels.latency_table` to a table timed elsewhere, or `channels.target_latency` = 0. "
            f"Received: channels.target_latency={section.target_latency!r}"
        ) from error
    if context.chief:
        table.save(path)
    log(f"latency table measured with LiteRT ({section.latency_threads} thread(s)): {path}")
    return table


def _held_out(context):
    """The images choices are made on: the held-out end of the training split (the training split without one)."""
    return context.data.validation if context.data.validation is not None else context.data.train


def _calibration(context):
    """`channels.calibration_examples` images of the held-out end of the training split, as one numpy array.

    The images int8 calibration reads too: unshuffled, unaugmented, never the test split.
    """
    wanted, found = context.config.channels.calibration_examples, []
    for images, _ in _held_out(context):
        found.append(np.asarray(images))
        if sum(len(batch) for batch in found) >= wanted:
            break
    return np.concatenate(found)[:wanted]


def _importance(context, model):
    """Per-channel importance on one scale for every group, for the latency allocation: first-order Taylor.

    Measured on 16 batches of the held-out images (`edgekeras.channels.channel_importance`): the
    only score with which `allocate` beat uniform slimming at equal latency
    (benchmarks/channel_allocation.py).
    """
    return channels.channel_importance(model, "taylor", data=_held_out(context).take(16),
                                       loss="sparse_categorical_crossentropy")


def slim_widths(context, model, importance=None):
    """`{group name: channels kept}` of the groups `[channels]` narrows, for `model` (trainable flags set).

    Args:
        context: the run's `RunContext`.
        model: the model to slim, its layers' `trainable` flags as the phase trains them.
        importance: per-channel scores for the latency allocation (default:
            `channel_importance(model, channels.score)`).

    Returns:
        The widths, only of groups that lose channels.

    Raises:
        ConfigError: a key names no layer or group, the latency table cannot be
            had, or the latency target is out of reach.
    """
    section = context.config.channels
    groups = _groups(model, section)
    if not section.target_latency:
        widths = channels.uniform(groups, 1.0 - section.remove_fraction, section.round_to)
    else:
        table = _latency_table(context, model)
        try:
            if section.allocation == "uniform":
                widths = channels.uniform_at_latency(groups, table, section.target_latency, section.round_to)
            else:
                scores = importance or _importance(context, model)
                widths = channels.allocate(
                    groups, {g.name: scores[g.name] for g in groups if g.prunable}, table, section.target_latency,
                    round_to=section.round_to, min_fraction=section.min_fraction,
                )
        except ValueError as error:
            raise ConfigError(f"Config key `channels.target_latency` cannot be met: {error}") from error
    sizes = {group.name: group.size for group in groups}
    narrowed = {name: kept for name, kept in widths.items() if kept < sizes[name]}
    if not narrowed:
        raise ConfigError(
            "Config key `channels.remove_fraction` / `channels.target_latency` removes no channel: every group keeps all "
            f"of its channels at multiples of channels.round_to={section.round_to}. Received: "
            f"channels.remove_fraction={section.remove_fraction}, channels.target_latency={section.target_latency}"
        )
    return narrowed


def check_slimming(context, model, settings):
    """Before training: the [channels] keys checked on the untrained model, which is slimmed and converted to int8.

    Args:
        context: the run's `RunContext`.
        model: the untrained full model (not changed).
        settings: `trial_conversion` keywords (representative data, I/O dtype, log path).
    """
    section = context.config.channels
    trial = _trainable(clone_with_weights(model), context.config)
    # Untrained weights rank channels arbitrarily; the widths and the conversion are what can fail.
    widths = slim_widths(context, trial, importance={g.name: [1.0] * g.size for g in channels.find_groups(trial)})
    channels.apply_widths(trial, widths, "l2")
    slimmed = channels.shrink(trial, round_to=section.round_to)
    trial_conversion(slimmed, tuple(section.conversions), float_layers=context.config.export.int8_float_layers, **settings)
    log(f"slimming checked: {len(widths)} channel groups narrowed, the slimmed model converts to "
        f"{', '.join(section.conversions)}")


def slim(context, fit_callbacks):
    """Stage body: channel pruning of a copy of the float model on the images, then `models["slim"]`.

    Args:
        context: the run's `RunContext` (`models["float"]` set).
        fit_callbacks: `(name, model) -> callbacks` of the run (TensorBoard, epoch lines).
    """
    config = context.config
    section = config.channels
    data = context.data
    steps = resolve_steps_per_epoch(data.train, section.steps_per_epoch or None, batch_size=config.data.batch_size,
                                    num_examples=data.num_train, needed_for="to lay out the channel-pruning ramp")
    with context.strategy.scope():
        model = _trainable(clone_with_weights(context.models["float"]), config)
    widths_path = context.path(SLIM_DIR, "widths.json")
    # A resumed run keeps the widths it chose (from the same float model) rather than re-measuring.
    widths = read_json(widths_path) or slim_widths(context, model)
    if context.chief:
        atomic_write_json(widths_path, widths)
    groups = channels.find_groups(model)
    log(f"channel pruning: {len(widths)} groups narrowed ({sum(widths.values())} channels kept of "
        f"{sum(g.size for g in groups if g.name in widths)}), {section.epochs} epoch(s)")
    # The ramp's final value is the share of the narrowed groups' channels that goes, as logged.
    removed = channels.removed_share(groups, widths)
    pruning = ChannelPruning(
        polynomial_ramp(steps * section.epochs, removed, end=section.ramp_fraction, mask_updates=section.mask_updates),
        score=section.score, round_to=section.round_to, widths=widths, calibration=_calibration(context),
    )
    # With `channels.prune`, [prune]'s schedule and rate over this stage's own epochs, on the narrower model.
    sparse = dataclasses.replace(config.prune, epochs=section.prune_epochs) if section.prune else None
    trainer = make_trainer(model, config, None, context.strategy, context.path("checkpoints", "slim"),
                           channel_steps=steps * section.epochs, prune_steps=sparse and steps * sparse.epochs)
    train = data.train.repeat() if section.steps_per_epoch else data.train
    trainer.fit(
        train, validation_data=data.validation, channels=pruning, channel_epochs=section.epochs,
        prune=sparse and prune_schedule(sparse, steps), prune_epochs=sparse.epochs if sparse else 0,
        steps_per_epoch=section.steps_per_epoch or None, callbacks=fit_callbacks("slim", model), conversions=(),
        initial_epoch=config.train.epochs + (config.prune.epochs if config.prune.enabled else 0), verbose=2,
    )
    context.models["slim"] = context.local(trainer.slim_model)
    if sparse:
        context.models["slim_pruned"] = context.local(trainer.pruned_model)
    log("slimmed model: " + ", ".join(f"{name} {kept}" for name, kept in trainer.channel_widths.items()))
