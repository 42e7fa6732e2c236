"""Magnitude pruning as a Keras callback, on any tf_keras or Keras 3 model.

Why the callback masks the weights itself instead of wrapping layers with
TFMOT's `prune_low_magnitude`:

- TFMOT's wrappers only go on the layers of flat functional or Sequential
  models; a model holding a sub-model (the usual transfer-learning shape) or
  a subclassed model is refused. Masking variables needs no graph surgery, so
  the same callback prunes flat, nested and subclassed models, and
  quantization-aware models (it looks inside `QuantizeWrapperV2`).
- The user's model is not rebuilt: no `PruneLowMagnitude` layers, no
  `UpdatePruningStep` callback, no `strip_pruning` step, and no
  "Unknown layer: PruneLowMagnitude" when loading. What comes out of `fit` is
  the user's own model holding exact zeros; it saves, loads and exports like
  any other. The masks live in the callback, not in the model.
- The cost is one extra `tf.function` call per training batch that multiplies
  every pruned kernel by its mask (and, every `frequency` steps, recomputes the
  masks); `benchmarks/pruning_overhead.py` measures it against dense training
  and against TFMOT's wrappers. On Keras 3 the same work is done with
  `keras.ops` (any backend, JAX included), the schedule read in plain Python
  and the masks computed with numpy.

What is reused from TFMOT: the schedules (`ConstantSparsity`,
`PolynomialDecay`, or any `PruningSchedule`, called with the global step) and
its m-by-n mask utilities.

The global step is `model.optimizer.iterations`, so a second `fit` (or a
resumed one, with the optimizer restored from a checkpoint) continues the
schedule where it stopped. When masks change, the optimizer's slots (momentum,
Adam's m and v, ...) are zeroed at the pruned positions, so momentum cannot
push pruned weights back.
"""

import numbers
import warnings

import numpy as np

from edgekeras import schedules as schedules_module
from edgekeras import sparsity
from edgekeras.callbacks.masking import MaskingCallback

__all__ = ["MagnitudePruning"]


class MagnitudePruning(MaskingCallback):
    """Prunes the smallest-magnitude weights on a schedule during `model.fit`.

    Every `schedule.frequency` steps inside the schedule's
    [`begin_step`, `end_step`], the masks of the selected kernels are
    recomputed to the schedule's sparsity (per layer, by magnitude, or m-by-n
    blocks with `MbyNSparsity`); after every batch the kernels are multiplied
    by their masks. At the end of `fit` the masks are brought to the
    schedule's sparsity at the last step and applied, so the model holds
    exact zeros and needs no stripping.

    Each epoch, `logs` gets `sparsity` (zeros over all selected kernels),
    `sparsity/<layer name>`, `target_sparsity` and `learning_rate`, so that
    `History`, `CSVLogger` and `TensorBoard` record them. Put this callback
    before those in the `callbacks` list; an `EpochLine` after it keeps the
    per-layer entries off the console line. With `steps_per_execution > 1`,
    Keras calls batch hooks once per execution, so masks are applied (and
    the schedule checked) every `steps_per_execution` steps.

    Args:
        schedule: a pruning schedule, from `edgekeras.schedules`
            (`PolynomialDecay`, `ConstantSparsity`, `MbyNSparsity`) or any
            `tfmot.sparsity.keras.PruningSchedule`. Steps are counted by
            `model.optimizer.iterations`. On Keras 3, edgekeras' schedules
            are read in plain Python after every batch; another
            `PruningSchedule` is called eagerly with TensorFlow tensors.
        policy: which layers to prune: `"all"`, `"skip_first_last"`,
            `"pointwise"` (1x1 convolutions) or a callable
            `policy(layer) -> bool`. See `edgekeras.sparsity`.
        include_frozen: also prune layers with `trainable=False` (they cannot
            recover, so the default leaves them alone).
        allocation: how the schedule's sparsity is shared among the
            selected layers: `"uniform"` (each layer pruned to it, as TFMOT
            does) or `"global"` (one magnitude ranking over all selected
            weights, so the large 1x1 layers give up more than small,
            sensitive ones; the overall sparsity is the same).
        max_layer_sparsity: with `"global"`, no layer goes past this
            fraction of zeros (the rest of the budget moves to other layers);
            None for no bound.

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.callbacks import MagnitudePruning
    from edgekeras.schedules import PolynomialDecay

    model = keras.Sequential([keras.layers.Dense(16, input_shape=(8,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    x, y = np.random.rand(64, 8), np.random.rand(64, 2)
    pruning = MagnitudePruning(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2))
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[pruning], verbose=0)
    ```
    """

    def __init__(self, schedule, policy="all", include_frozen=False, allocation="uniform", max_layer_sparsity=None):
        if not isinstance(schedule, schedules_module.PruningSchedule):
            raise TypeError(
                "Argument `schedule` must be a pruning schedule such as "
                "edgekeras.schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=1000). "
                f"Received: schedule={schedule!r}"
            )
        m_by_n = getattr(schedule, "m_by_n", None)
        if m_by_n is not None and not (
            isinstance(m_by_n, (tuple, list)) and len(m_by_n) == 2 and all(isinstance(v, numbers.Integral) for v in m_by_n)
        ):
            raise ValueError(f"Argument `schedule` has an invalid m_by_n. Received: m_by_n={m_by_n!r}")
        sparsity.check_allocation(allocation, max_layer_sparsity)
        if m_by_n is not None and allocation != "uniform":
            raise ValueError(
                f"Argument `allocation` must be \"uniform\" with an m-by-n schedule (every block has the same "
                f"zeros). Received: allocation={allocation!r}"
            )
        final = getattr(schedule, "final_sparsity", getattr(schedule, "target_sparsity", None))
        if max_layer_sparsity is not None and final is not None and final > max_layer_sparsity:
            raise ValueError(
                f"Argument `max_layer_sparsity` must be >= the schedule's final sparsity {final}, or no layer "
                f"mix could reach it. Received: max_layer_sparsity={max_layer_sparsity!r}"
            )
        super().__init__(policy=policy, include_frozen=include_frozen)
        self.schedule = schedule
        self.allocation = allocation
        self.max_layer_sparsity = max_layer_sparsity

    def get_config(self):
        return {
            "schedule": schedules_module.serialize(self.schedule),
            "policy": self.policy,
            "include_frozen": self.include_frozen,
            "allocation": self.allocation,
            "max_layer_sparsity": self.max_layer_sparsity,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["schedule"] = schedules_module.deserialize(config["schedule"], custom_objects)
        return cls(**config)

    def _masks_for(self, weights, target):
        m_by_n = getattr(self.schedule, "m_by_n", None)
        if m_by_n is not None:
            return [sparsity.m_by_n_mask(w, m_by_n) for w in weights]
        if self.allocation == "global":
            return sparsity.global_magnitude_masks(weights, target, self.max_layer_sparsity)
        return sparsity.magnitude_masks(weights, target)

    def _mask_arrays(self, target):
        """The masks at sparsity `target` as numpy arrays: the same as `_masks_for`, eagerly."""
        arrays = [self._backend.to_numpy(weight) for weight in self._weights]
        m_by_n = getattr(self.schedule, "m_by_n", None)
        if m_by_n is not None:
            return [sparsity.m_by_n_mask_array(a, m_by_n) for a in arrays]
        if self.allocation == "global":
            return sparsity.global_magnitude_mask_arrays(arrays, target, self.max_layer_sparsity)
        return sparsity.magnitude_mask_arrays(arrays, target)

    def _new_masks_fn(self):
        schedule, weights = self.schedule, self._weights

        def new_masks(step):
            should_prune, target = schedule(step)
            return should_prune, lambda: self._masks_for(weights, target)

        return new_masks

    def _masks_at(self, step):
        should_prune, target = schedules_module.schedule_at(self.schedule, step)
        return self._mask_arrays(target) if should_prune else None

    def _step(self):
        return self._backend.step(self.model.optimizer)

    def _target_at(self, step):
        return schedules_module.schedule_sparsity(self.schedule, step)

    def _set_masks_for_step(self, step):
        if step < self.schedule.begin_step:
            return
        for mask, value in zip(self._masks, self._mask_arrays(self._target_at(step))):
            mask.assign(value)

    def _warn_about_frozen(self):
        """Warns when pruning touches frozen layers, or leaves most of the model's weights in them."""
        if self.include_frozen:
            frozen = [layer.name for layer in self._layers if not layer.trainable]
            if frozen:
                warnings.warn(
                    f"MagnitudePruning prunes {len(frozen)} frozen layer(s) ({', '.join(frozen[:3])}"
                    f"{', ...' if len(frozen) > 3 else ''}): nothing fine-tunes them, so they cannot recover from "
                    "the zeros. "
                    "Make them trainable for the pruning fit, or pass include_frozen=False.",
                    stacklevel=3,
                )
            return
        every = sparsity.select_weights(self.model, self.policy, include_frozen=True)
        frozen = sum(int(np.prod(weight.shape)) for layer, weight in every if not layer.trainable)
        selected = sum(int(np.prod(weight.shape)) for weight in self._weights)
        if frozen > selected:
            warnings.warn(
                f"MagnitudePruning prunes {selected:,} weights, but frozen layers hold {frozen:,} more that "
                f"policy={self.policy!r} would select; they stay dense, so the model shrinks little. To prune "
                "them, make them trainable so that the pruning fit fine-tunes them (`edgekeras run`: "
                "`[prune] trainable_from`).",
                stacklevel=3,
            )

    def on_train_begin(self, logs=None):
        self._select()
        self._warn_about_frozen()
        # On a resumed run (iterations > 0), rebuild the masks the schedule
        # implies now rather than waiting for the next pruning step.
        self._set_masks_for_step(self._step())
        self._prepare_step()
        self._apply_now(zero_slots=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._weights:
            return
        self._layer_logs(logs)
        logs["target_sparsity"] = self._target_at(self._step())

    def on_train_end(self, logs=None):
        if not self._weights:
            return
        if self._slots is None:
            self._resolve_slots()
        self._set_masks_for_step(self._step())
        self._apply_now(zero_slots=True)
