"""Channel pruning as a Keras callback: whole channel groups ramped to zero during `model.fit`.

Unstructured zeros make a file smaller but not faster: the int8 kernels
multiply them anyway. Removing whole channels gives a narrower dense model,
faster on every runtime. This callback decides which channels go while the
model trains and recovers: every `schedule.frequency` steps of the
schedule's ramp, each prunable channel group (`edgekeras.channels`) is
brought to the schedule's fraction of removed channels, its least important
channels first; the removed channels are held at exact zero after every
batch (the masking base every pruning callback shares). `shrink` then takes
them out of the model.

A channel's zeros are written where it lives: the producers' kernels and
biases, the depthwise kernels and biases, and the BatchNormalization scale
*and offset*. The offset matters: a normalized channel with a zero scale
still adds its offset, a constant the consumers would see, and removing the
channel would change the predictions.
"""

import math
import numbers

import numpy as np

from edgekeras import backend, channels
from edgekeras.channels import activations as channel_activations
from edgekeras.channels import compensation
from edgekeras import schedules as schedules_module
from edgekeras.callbacks.masking import MaskingCallback, current_learning_rate

__all__ = ["ChannelPruning", "SCORES"]

# How channels are ranked: the weight-only scores of `edgekeras.channels`, and one measured on data.
SCORES = (*channels.SCORES, "activation")


class ChannelPruning(MaskingCallback):
    """Removes whole channels on a schedule during `model.fit`, ready for `edgekeras.channels.shrink`.

    The schedule's sparsity is the fraction of each prunable group's
    channels removed (uniformly across groups); the kept count is rounded up
    to a multiple of `round_to` so that `shrink` keeps exactly the channels
    left. Channels are ranked by `score` when the masks are updated; a
    removed channel stays removed. After `fit` the model holds exact zeros in
    the removed channels; `shrink(model)` makes the narrower model.

    Each epoch, `logs` gets `kept_channels/<layer name>` for every producer of
    a prunable group, `kept_channels` (the fraction of the prunable groups'
    channels kept), `target_channel_sparsity` and `learning_rate`, for
    `History`, `CSVLogger` and `TensorBoard`: put this callback before them.

    Args:
        schedule: a pruning schedule from `edgekeras.schedules`
            (`PolynomialDecay`, `ConstantSparsity`) or any
            `tfmot.sparsity.keras.PruningSchedule`; steps are
            `model.optimizer.iterations`. Not `MbyNSparsity`.
        score: how channels are ranked: `"activation"` (their standard
            deviation where the consumers read them, times the consumers'
            L1 weights, on `calibration`: on pretrained networks the only
            one of the three that removes 10 % of the channels without
            falling to chance, `edgekeras.channels.activations`), `"bn"` (the BatchNormalization
            scales |gamma|, network slimming; the kernel norms where a group
            has no BatchNormalization) or `"l2"` (the producers' kernel
            norms). `benchmarks/channel_importance.py` measured both and
            first-order Taylor (two seeds, CIFAR-10, one epoch of
            recovery): "bn" kept 4.4 pp more accuracy than "l2" with 30 %
            of the channels removed and 11.5 pp more at 50 %, and 1.9 /
            8.5 pp more than Taylor (which would need gradients on data).
        round_to: each group keeps a multiple of this many channels (or all).
        include_frozen: also prune groups whose convolutions or Dense layers
            have `trainable=False` (they could not recover). A frozen
            BatchNormalization (statistics kept, as when fine-tuning) does
            not freeze its channels: they are removed all the same.
        calibration: a numpy array of model inputs (a few hundred training
            images): needed by `score="activation"`, and when given the
            means absorbed on removal are measured on it rather than
            estimated from the BatchNorms. Not part of `get_config`.
        compensate: fold what each removed channel gave its consumers on
            average into their biases (or the BatchNorm after them) at the
            moment it is removed (`edgekeras.channels.compensation`), so
            that a channel with a small scale but a large offset goes
            without a jump in the loss.
        widths: None (every prunable group loses the schedule's fraction of
            its channels), or `{group name: channels kept at the end}`, e.g.
            from `edgekeras.channels.allocate` or `uniform_at_latency`: only
            the named groups are pruned, each reaching its width when the
            schedule reaches its final sparsity and passing through the
            same share of its own removal on the way (a group that keeps 64
            of 192 channels has lost 64 of them when a schedule ending at
            0.8 is at 0.4). Kept counts that are not multiples of
            `round_to` are kept as given at the end.

    Raises:
        TypeError: `schedule` is not a pruning schedule.
        ValueError: an m-by-n schedule, an unknown `score`, `round_to`
            that is not a positive integer, `widths` that is not a dict of
            positive channel counts, or (when training begins) `widths`
            naming a group the model does not have or cannot prune.

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.callbacks import ChannelPruning
    from edgekeras.channels import shrink
    from edgekeras.schedules import PolynomialDecay

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 1)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile("adam", "mse")
    pruning = ChannelPruning(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2), round_to=4)
    model.fit(np.random.rand(64, 8, 8, 3), np.random.rand(64, 2), batch_size=8, epochs=2,
              callbacks=[pruning], verbose=0)
    slim = shrink(model, round_to=4)  # 8 and 4 channels where there were 16 and 8
    ```
    """

    _runtime_keys = MaskingCallback._runtime_keys | {"_graph", "_places", "_groups", "_removed", "_final"}

    def __init__(self, schedule, score="bn", round_to=channels.DEFAULT_ROUND_TO, include_frozen=False, widths=None,
                 calibration=None, compensate=True):
        if not isinstance(schedule, schedules_module.PruningSchedule):
            raise TypeError(
                "Argument `schedule` must be a pruning schedule such as "
                "edgekeras.schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=1000). "
                f"Received: schedule={schedule!r}"
            )
        if getattr(schedule, "m_by_n", None) is not None:
            raise ValueError(
                "Argument `schedule` must give a fraction of channels, not an m-by-n pattern "
                f"(use MagnitudePruning for that). Received: schedule={schedule!r}"
            )
        if score not in SCORES:
            raise ValueError(f"Argument `score` must be one of {', '.join(map(repr, SCORES))}. Received: score={score!r}")
        if score == "activation" and calibration is None:
            raise ValueError(
                "Argument `calibration` must hold model inputs (a numpy array of a few hundred images) with "
                "score='activation'. Received: calibration=None"
            )
        if calibration is not None and not isinstance(calibration, np.ndarray):
            raise ValueError(
                f"Argument `calibration` must be None or a numpy array of model inputs. Received: {type(calibration).__name__}"
            )
        if not isinstance(compensate, bool):
            raise ValueError(f"Argument `compensate` must be True or False. Received: compensate={compensate!r}")
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
            raise ValueError(f"Argument `round_to` must be a positive integer. Received: round_to={round_to!r}")
        super().__init__(policy="all", include_frozen=include_frozen)
        self.schedule = schedule
        self.score = score
        self.round_to = int(round_to)
        self.widths = None if widths is None else _checked_widths(widths)
        self.calibration = calibration
        self.compensate = compensate
        if self.widths is not None and not _final_sparsity(schedule) > 0:
            raise ValueError(
                "Argument `schedule` must end above sparsity 0 when `widths` is given: the widths are reached when it "
                f"reaches its final sparsity. Received: schedule={schedule!r}"
            )

    def _clear_state(self):
        super()._clear_state()
        self._graph = None
        self._places = None
        self._groups = []
        self._removed = {}
        self._final = {}

    def get_config(self):
        return {
            "schedule": schedules_module.serialize(self.schedule),
            "score": self.score,
            "round_to": self.round_to,
            "include_frozen": self.include_frozen,
            "widths": None if self.widths is None else dict(self.widths),
            "compensate": self.compensate,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["schedule"] = schedules_module.deserialize(config["schedule"], custom_objects)
        return cls(**config)

    def _select(self):
        model = backend.check_model(self.model)
        if getattr(model, "optimizer", None) is None:
            raise RuntimeError("ChannelPruning needs a compiled model: call model.compile(...) before fit.")
        self._clear_state()
        self._backend = backend.for_model(model)
        self._graph = channels.analyse(model)
        self._places = channels.group_weights(self._graph)
        self._final = {}
        by_name = {group.name: index for index, group in enumerate(self._graph.groups)}
        self._check_named_groups(by_name)
        for index, group in enumerate(self._graph.groups):
            # A frozen BatchNormalization keeps its statistics; its channels can go all the same.
            frozen = any(not layer.trainable for layer, role, *_ in self._places[index] if role not in ("gamma", "beta"))
            wanted = self.widths is None or group.name in self.widths
            if wanted and group.prunable and (self.include_frozen or not frozen):
                self._groups.append(index)
                self._final[index] = None if self.widths is None else min(self.widths[group.name], group.size)
        if not self._groups:
            raise ValueError(
                f"Model {model.name!r} has no prunable channel group (channels between two convolutions or "
                "Dense layers, not tied to the input or output"
                + ("" if self.include_frozen else ", in trainable layers: pass include_frozen=True to prune frozen ones")
                + "). See edgekeras.channels.find_groups(model)."
            )
        full = {index: np.zeros(self._graph.groups[index].size, bool) for index in self._groups}
        pairs = channels.channel_masks(self._graph, full, self._places)
        layer_of = {id(variable): layer for index in self._groups for layer, _, variable, *_ in self._places[index]}
        self._weights = [variable for variable, _ in pairs]
        self._layers = [layer_of[id(variable)] for variable in self._weights]
        self._masks = [self._backend.mask_variable(w) for w in self._weights]
        # Channels `shrink` would remove already (zeroed before a restart) stay removed, ahead of any
        # other: it takes them out whatever the ranking would pick.
        removable = channels.removable_channels(self._graph)
        self._removed = {index: removable.get(index, gone) for index, gone in full.items()}
        self._assign_masks()

    def _check_named_groups(self, by_name):
        if self.widths is None:
            return
        unknown = sorted(set(self.widths) - set(by_name))
        if unknown:
            raise ValueError(
                f"Argument `widths` names no channel group of model {self.model.name!r}: {unknown}. "
                "See edgekeras.channels.find_groups(model) for its groups."
            )
        unprunable = sorted(
            name for name, kept in self.widths.items()
            if not self._graph.groups[by_name[name]].prunable and kept < self._graph.groups[by_name[name]].size
        )
        if unprunable:
            raise ValueError(
                f"Argument `widths` narrows groups that cannot be pruned (tied to the model's input or output, or to a "
                f"layer that mixes channels): {unprunable}. Leave them out of `widths`."
            )

    def _kept_count(self, index, target):
        size, final = self._graph.groups[index].size, self._final[index]
        if final is None:
            kept = math.ceil((1.0 - target) * size / self.round_to) * self.round_to
            return min(size, max(1, kept))
        # This group's share of its own planned removal follows the schedule's share of its final sparsity.
        left = 1.0 - min(1.0, target / _final_sparsity(self.schedule))
        # Rounded first: a float32 schedule ends a hair below its float64 final value.
        steps = math.ceil(round((size - final) * left / self.round_to, 6))
        return min(size, final + steps * self.round_to)

    def _update_masks(self, target):
        """Removes each group's least important channels down to `target`; returns True if a mask changed."""
        goals = {}
        for index in self._groups:
            goal = self._graph.groups[index].size - self._kept_count(index, target)
            if goal > int(self._removed[index].sum()):  # a removed channel stays removed
                goals[index] = goal
        if not goals:
            return False
        stats = None
        if self.calibration is not None and (self.score == "activation" or self.compensate):
            # A pass over the calibration images, only when some channel goes now.
            stats = channel_activations.channel_statistics(self._graph, self.calibration)
        fresh = {}
        for index, goal in goals.items():
            if self.score == "activation":
                scores = channel_activations.activation_scores(self._graph, stats, index)
            else:
                scores = channels.channel_scores(self._graph, index, self.score, self._places)
            removed = self._removed[index].copy()
            scores[removed] = -np.inf
            removed[np.argsort(scores, kind="stable")[:goal]] = True
            fresh[index] = removed & ~self._removed[index]
            self._removed[index] = removed
        if self.compensate:
            # While the removed channels still hold their weights: what they gave on average stays.
            means = None if stats is None else {key: mean for key, (mean, _) in stats.items()}
            compensation.absorb_removed(self._graph, fresh, means)
        self._assign_masks()
        return True

    def _assign_masks(self):
        values = dict((id(v), m) for v, m in channels.channel_masks(self._graph, self._removed, self._places))
        for weight, mask in zip(self._weights, self._masks):
            mask.assign(values[id(weight)])

    def _step(self):
        return self._backend.step(self.model.optimizer)

    def on_train_begin(self, logs=None):
        self._select()
        # A resumed run (iterations > 0) starts from the channels the
        # schedule removes by now, ranked on the restored weights.
        step = self._step()
        if step >= self.schedule.begin_step:
            self._update_masks(schedules_module.schedule_sparsity(self.schedule, step))
        self._prepare_step()
        self._apply_now(zero_slots=True)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        should_prune, target = schedules_module.schedule_at(self.schedule, self._step())
        if should_prune and self._update_masks(target):
            self._apply_now(zero_slots=True)

    def kept_channels(self):
        """`{producer layer name: channels kept}` over the prunable groups, as the masks stand now."""
        kept = {}
        for index in self._groups:
            group = self._graph.groups[index]
            for name in group.producers:
                kept[name] = group.size - int(self._removed[index].sum())
        return kept

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._groups:
            return
        for name, count in self.kept_channels().items():
            logs[f"kept_channels/{name}"] = count
        sizes = sum(self._graph.groups[index].size for index in self._groups)
        logs["kept_channels"] = sum(int((~self._removed[index]).sum()) for index in self._groups) / sizes
        logs["target_channel_sparsity"] = schedules_module.schedule_sparsity(self.schedule, self._step())
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)

    def on_train_end(self, logs=None):
        if not self._groups:
            return
        if self._slots is None:
            self._resolve_slots()
        step = self._step()
        if step >= self.schedule.begin_step:
            self._update_masks(schedules_module.schedule_sparsity(self.schedule, step))
        self._apply_now(zero_slots=True)


def _final_sparsity(schedule):
    """The sparsity a schedule ends at (TFMOT's and edgekeras' polynomial and constant schedules)."""
    for attribute in ("final_sparsity", "target_sparsity"):
        value = getattr(schedule, attribute, None)
        if value is not None:
            return float(value)
    return float(schedules_module.schedule_sparsity(schedule, 2**62))


def _checked_widths(widths):
    if not isinstance(widths, dict) or not widths:
        raise ValueError(
            "Argument `widths` must be None or a non-empty dict of group name -> channels kept, e.g. "
            f"{{'block_1_expand': 48}}. Received: widths={widths!r}"
        )
    for name, kept in widths.items():
        if not isinstance(name, str) or isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or kept < 1:
            raise ValueError(
                "Argument `widths` must map group names to positive channel counts. "
                f"Received: widths[{name!r}]={kept!r}"
            )
    return {name: int(kept) for name, kept in widths.items()}
