"""[channels]: the channel-pruning phase of `edgekeras run` (a narrower, faster model).

Kept apart from `edgekeras.app.sections` (the other phases' sections) only by
size; it follows the same rules: a frozen dataclass whose fields are the
keys, `check(section)` for ranges and choices, nothing that imports
TensorFlow.

Example:

```python
from edgekeras.app.channel_section import ChannelsSection

ChannelsSection(enabled=True, target_latency=0.6).check("channels")
```
"""

import dataclasses

from edgekeras.app.sections import (
    LR_SCHEDULES, _at_least, _fail, _is_name, _items, _listed, _one_of, _positive, list_requirement,
)
from edgekeras.choices import CHANNEL_ALLOCATIONS, CHANNEL_SCORES, CONVERSIONS

__all__ = ["ChannelsSection"]


def _fraction(obj, section, key, low_open=True):
    value = getattr(obj, key)
    if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):
        _fail(f"{section}.{key}", "in (0, 1)" if low_open else "in [0, 1)", value)


@dataclasses.dataclass(frozen=True)
class ChannelsSection:
    """[channels]: channel pruning from the float model, then a narrower model (variants `slim_<conversion>`).

    The phase starts from the trained float model, ramps whole channel
    groups to zero (`edgekeras.callbacks.ChannelPruning`, least important
    first) while fine-tuning on the images, then removes them
    (`edgekeras.channels.shrink`): a dense model with fewer channels, whose
    int8 file runs faster on every runtime (unstructured zeros do not).

    Attributes:
        enabled: run the phase and export the slimmed variants.
        remove_fraction: share of every prunable group's channels removed,
            when `target_latency` is 0.
        target_latency: the slimmed int8 file's latency as a fraction of the
            dense one's, in (0, 1), predicted by a per-layer latency table;
            0: use `remove_fraction`.
        allocation: with `target_latency`: "latency" (NetAdapt-style: the
            channels that save the most latency per importance lost go
            first, `edgekeras.channels.allocate`, importance a first-order
            Taylor estimate on 16 validation batches) or "uniform" (one kept
            fraction for every group, the widest that meets the target).
        latency_table: a latency table JSON (`edgekeras.channels.LatencyTable`,
            e.g. timed on the target device with `edgekeras bench`); "":
            measured on this machine with LiteRT before training.
        latency_threads: LiteRT threads the table is measured with.
        score: how channels are ranked: "activation" (how much each varies
            where its consumers read it, times their weights, measured on
            `calibration_examples` images; the removed channels' means are
            folded into the consumers' biases), "bn" (BatchNorm |gamma|) or
            "l2" (kernel norms).
        calibration_examples: images the "activation" score and the
            absorbed means are measured on: the held-out end of the training
            split, as int8 calibration (the training split without one).
        round_to: every group keeps a multiple of this many channels (the
            int8 kernels' step: 16 on x86 with AVX).
        min_fraction: with the latency allocation, no group keeps less than
            this share of its channels.
        skip_groups: groups kept whole, named by their first producer layer
            (`edgekeras.channels.find_groups`).
        trainable_from: first layer the phase fine-tunes ("": every layer);
            BatchNormalization layers train only with `model.train_batchnorm`.
        epochs: epochs of the phase.
        steps_per_epoch: batches per epoch (0: the whole training split).
        learning_rate: the phase's learning rate.
        lr_schedule: "constant" or "cosine" (decay to 0 over the phase, after
            the warm-up).
        warmup_fraction: share of the phase whose rate rises from 0 (with
            "cosine").
        ramp_fraction: share of the phase the removal ramp takes; the rest
            recovers at the final widths.
        mask_updates: how many times the removed channels are chosen over
            the ramp.
        distill_weight: share of the loss that follows the float model's
            softened outputs (0: labels only).
        temperature: the softening temperature of the distillation.
        conversions: the slimmed model's .tflite files (`slim_<conversion>`).
        prune: then prune the slimmed model unstructured in the same fit
            ([prune]'s target sparsity, policy, allocation and learning
            rate, on the images, `prune_epochs` epochs of `steps_per_epoch`
            batches): the smallest file that is also the faster one.
        prune_epochs: epochs of that pruning phase.
        prune_conversions: its .tflite files (`slim_pruned_<conversion>`).
    """

    enabled: bool = False
    remove_fraction: float = 0.5
    target_latency: float = 0.0
    allocation: str = "latency"
    latency_table: str = ""
    latency_threads: int = 1
    score: str = "activation"
    calibration_examples: int = 256
    round_to: int = 16
    min_fraction: float = 0.1
    skip_groups: tuple = _listed((), "a list of channel group names (their first producer layer)")
    trainable_from: str = ""
    epochs: int = 1
    steps_per_epoch: int = 0
    learning_rate: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.0
    ramp_fraction: float = 0.67
    mask_updates: int = 10
    distill_weight: float = 0.0
    temperature: float = 4.0
    conversions: tuple = _listed(("float32", "int8"), "a non-empty list of conversions from " + ", ".join(CONVERSIONS))
    prune: bool = False
    prune_epochs: int = 1
    prune_conversions: tuple = _listed(("int8",), "a non-empty list of conversions from " + ", ".join(CONVERSIONS))

    def check(self, section):
        _fraction(self, section, "remove_fraction")
        _fraction(self, section, "target_latency", low_open=False)
        _fraction(self, section, "min_fraction", low_open=False)
        _fraction(self, section, "warmup_fraction", low_open=False)
        if not 0.0 < self.ramp_fraction <= 1.0:
            _fail(f"{section}.ramp_fraction", "in (0, 1]", self.ramp_fraction)
        if not 0.0 <= self.distill_weight <= 1.0:
            _fail(f"{section}.distill_weight", "in [0, 1]", self.distill_weight)
        if self.warmup_fraction and self.lr_schedule != "cosine":
            _fail(f"{section}.warmup_fraction", '0 unless lr_schedule = "cosine"', self.warmup_fraction)
        _one_of(self, section, allocation=CHANNEL_ALLOCATIONS, score=CHANNEL_SCORES, lr_schedule=LR_SCHEDULES)
        _at_least(self, section, latency_threads=1, round_to=1, mask_updates=1, steps_per_epoch=0, calibration_examples=1,
                  epochs=1 if self.enabled else 0)
        _positive(self, section, "learning_rate", "temperature")
        _items(self, section, "skip_groups", _is_name)
        for key in ("conversions", "prune_conversions"):
            values = getattr(self, key)
            if not values or not all(c in CONVERSIONS for c in values):
                _fail(f"{section}.{key}", list_requirement(type(self), key), list(values))
        _at_least(self, section, prune_epochs=1 if self.prune else 0)
