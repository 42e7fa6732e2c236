"""Magnitude pruning as a Keras callback, on any tf_keras model.

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
  and against TFMOT's wrappers.

What is reused from TFMOT: the schedules (`ConstantSparsity`,
`PolynomialDecay`, or any `PruningSchedule`, called with the global step) and
its m-by-n mask utilities.

The global step is `model.optimizer.iterations`, so a second `fit` (or a
resumed one, with the optimizer restored from a checkpoint) continues the
schedule where it stopped. When masks change, the optimizer's slots (momentum,
Adam's m and v, ...) are zeroed at the pruned positions, so momentum cannot
push pruned weights back.
"""

import copy
import numbers

import numpy as np
import tensorflow as tf

from edgekeras import schedules as schedules_module
from edgekeras import sparsity
from edgekeras.compat import check_model, keras

__all__ = ["MagnitudePruning", "PreserveSparsity", "current_learning_rate"]


def current_learning_rate(optimizer):
    """Returns the optimizer's learning rate at its current step, as a float."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        rate = getattr(optimizer, "lr", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    try:
        return float(keras.backend.get_value(rate))
    except (TypeError, ValueError):
        return float("nan")


def _slot_variables(optimizer, weight):
    """The optimizer variables shadowing `weight` (momentum, m, v, ...)."""
    if hasattr(optimizer, "get_slot_names"):  # legacy optimizers
        slots = []
        for name in optimizer.get_slot_names():
            try:
                slots.append(optimizer.get_slot(weight, name))
            except (KeyError, ValueError):
                continue
        return slots
    index_dict = getattr(optimizer, "_index_dict", None)
    if not index_dict:
        return []
    index = index_dict.get(optimizer._var_key(weight))
    if index is None:  # frozen weight: the optimizer does not track it
        return []
    slots = []
    # New-style optimizers keep one list per slot kind (`_momentums`,
    # `_velocities`, `momentums`, ...), aligned with the variable index.
    for name, value in vars(optimizer).items():
        if name == "_variables" or not isinstance(value, (list, tuple)):
            continue
        if len(value) != len(index_dict):
            continue
        candidate = value[index]
        if isinstance(candidate, tf.Variable) and candidate.shape == weight.shape:
            slots.append(candidate)
    return slots


class _MaskingCallback(keras.callbacks.Callback):
    """Keeps a mask per selected kernel and applies it after every batch."""

    def __init__(self, policy="all", include_frozen=False):
        super().__init__()
        self.policy = sparsity.check_policy(policy)
        if not isinstance(include_frozen, bool):
            raise ValueError(
                "Argument `include_frozen` must be True or False. "
                f"Received: include_frozen={include_frozen!r}"
            )
        self.include_frozen = include_frozen
        # Batch logs stay tensors: converting them to numpy every batch would
        # add a device sync per step for nothing.
        self._supports_tf_logs = True
        self._clear_state()

    def _clear_state(self):
        self._layers = []
        self._weights = []
        self._masks = []
        self._slots = None
        self._batch_fn = None
        self._cache_key = None

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks per trial: copy the configuration,
        # never the model, masks or traced functions.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        runtime = {"model", "_model", "_layers", "_weights", "_masks", "_slots", "_batch_fn", "_cache_key"}
        for key, value in self.__dict__.items():
            if key in runtime:
                continue
            clone.__dict__[key] = value if callable(value) and key == "policy" else copy.deepcopy(value, memo)
        clone.model = None
        clone._clear_state()
        return clone

    def _select(self):
        model = check_model(self.model)
        if getattr(model, "optimizer", None) is None:
            raise RuntimeError(
                f"{type(self).__name__} needs a compiled model: call model.compile(...) before fit."
            )
        if not model.built:
            raise RuntimeError(
                f"{type(self).__name__} needs a built model: call the model on data or "
                "model.build(input_shape) before fit."
            )
        pairs = sparsity.select_weights(model, self.policy, self.include_frozen)
        if not pairs:
            frozen = "" if self.include_frozen else " (frozen layers are skipped: pass include_frozen=True to prune them)"
            raise ValueError(
                f"Argument `policy` selects no prunable layer (Conv2D, DepthwiseConv2D or "
                f"Dense with trainable weights) in model {model.name!r}{frozen}. "
                f"Received: policy={self.policy!r}"
            )
        key = (id(model), id(model.optimizer), tuple(id(weight) for _, weight in pairs))
        if key == self._cache_key and self._batch_fn is not None:
            # Another fit of the same model and optimizer: keep the traced
            # function (its first run costs more than an epoch of small
            # batches), start from fresh masks.
            for mask in self._masks:
                mask.assign(tf.ones_like(mask))
            return
        self._clear_state()
        self._cache_key = key
        self._layers = [layer for layer, _ in pairs]
        self._weights = [weight for _, weight in pairs]
        with tf.init_scope():
            self._masks = [
                tf.Variable(tf.ones_like(w), trainable=False, name="edgekeras_mask") for w in self._weights
            ]

    def _resolve_slots(self):
        optimizer = self.model.optimizer
        self._slots = [_slot_variables(optimizer, w) for w in self._weights]

    def _prepare_step(self):
        """Creates the optimizer's slots now and traces the per-batch function.

        Building the optimizer early is what `apply_gradients` does on the
        first step anyway (it is idempotent); doing it here lets the mask
        updates reach the slots and keeps tracing out of the first batch.
        """
        if self._batch_fn is not None:
            return
        optimizer = self.model.optimizer
        variables = self.model.trainable_variables
        try:
            if isinstance(optimizer, keras.optimizers.legacy.Optimizer):
                optimizer._create_all_weights(variables)
            elif isinstance(optimizer, keras.optimizers.Optimizer):
                with tf.init_scope():
                    optimizer.build(variables)
            else:
                return
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            return  # unusual optimizer: fall back to tracing on the first batch
        self._resolve_slots()
        self._batch_fn = self._make_batch_fn()
        # The first run of a traced function is slow (graph optimization);
        # pay it here rather than in the first epoch. Running it now only
        # does what the next batch would do.
        self._batch_fn()

    def _new_masks_fn(self):
        """Returns a graph function `(step) -> (should_update, [masks])`, or None."""
        return None

    def _make_batch_fn(self):
        weights, masks, slots = self._weights, self._masks, self._slots or [[] for _ in self._weights]
        new_masks = self._new_masks_fn()
        iterations = self.model.optimizer.iterations

        def update_masks():
            step = tf.identity(iterations)
            should_update, computed = new_masks(step)

            def assign():
                ops = []
                for mask, value, weight_slots in zip(masks, computed(), slots):
                    ops.append(mask.assign(value, read_value=False))
                    ops.extend(slot.assign(slot * value, read_value=False) for slot in weight_slots)
                with tf.control_dependencies(ops):
                    return tf.constant(True)

            return tf.cond(should_update, assign, lambda: tf.constant(False))

        @tf.function(autograph=False)
        def batch_fn():
            deps = [update_masks()] if new_masks is not None else []
            with tf.control_dependencies(deps):
                for w, m in zip(weights, masks):
                    w.assign(w * m, read_value=False)

        return batch_fn

    def _apply_now(self, zero_slots):
        for weight, mask in zip(self._weights, self._masks):
            weight.assign(weight * mask)
        if zero_slots and self._slots:
            for mask, weight_slots in zip(self._masks, self._slots):
                for slot in weight_slots:
                    slot.assign(slot * mask)

    def on_train_batch_end(self, batch, logs=None):
        if self._batch_fn is None:
            # The optimizer creates its slots on the first step; trace once
            # they exist so that mask updates can zero them.
            self._resolve_slots()
            self._batch_fn = self._make_batch_fn()
        self._batch_fn()

    def _layer_logs(self, logs, prefix="sparsity"):
        names = {}
        total = zeros = 0
        for layer, weight in zip(self._layers, self._weights):
            values = weight.numpy()
            total += values.size
            layer_zeros = int(np.count_nonzero(values == 0))
            zeros += layer_zeros
            name = layer.name
            if name in names:
                names[name] += 1
                name = f"{name}_{names[name]}"
            else:
                names[name] = 0
            logs[f"{prefix}/{name}"] = layer_zeros / values.size
        logs[prefix] = zeros / total if total else 0.0
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)


class MagnitudePruning(_MaskingCallback):
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
    before those in the `callbacks` list. With `steps_per_execution > 1`,
    Keras calls batch hooks once per execution, so masks are applied (and
    the schedule checked) every `steps_per_execution` steps.

    Args:
        schedule: a pruning schedule, from `edgekeras.schedules`
            (`PolynomialDecay`, `ConstantSparsity`, `MbyNSparsity`) or any
            `tfmot.sparsity.keras.PruningSchedule`. Steps are counted by
            `model.optimizer.iterations`.
        policy: which layers to prune: `"all"`, `"skip_first_last"`,
            `"pointwise"` (1x1 convolutions) or a callable
            `policy(layer) -> bool`. See `edgekeras.sparsity`.
        include_frozen: also prune layers with `trainable=False` (they cannot
            recover, so the default leaves them alone).

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

    def __init__(self, schedule, policy="all", include_frozen=False):
        if not isinstance(schedule, schedules_module._PruningSchedule):
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
        super().__init__(policy=policy, include_frozen=include_frozen)
        self.schedule = schedule

    def get_config(self):
        return {
            "schedule": schedules_module.serialize(self.schedule),
            "policy": self.policy,
            "include_frozen": self.include_frozen,
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
        return sparsity.magnitude_masks(weights, target)

    def _new_masks_fn(self):
        schedule, weights = self.schedule, self._weights

        def new_masks(step):
            should_prune, target = schedule(step)
            return should_prune, lambda: self._masks_for(weights, target)

        return new_masks

    def _step(self):
        # get_value reads a MirroredVariable (under a tf.distribute strategy)
        # as well as a plain one; int() of a MirroredVariable fails.
        return int(keras.backend.get_value(self.model.optimizer.iterations))

    def _target_at(self, step):
        return schedules_module.schedule_sparsity(self.schedule, step)

    def _set_masks_for_step(self, step):
        if step < self.schedule.begin_step:
            return
        target = tf.constant(self._target_at(step), tf.float32)
        for mask, value in zip(self._masks, self._masks_for(self._weights, target)):
            mask.assign(value)

    def on_train_begin(self, logs=None):
        self._select()
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


class PreserveSparsity(_MaskingCallback):
    """Keeps the zeros a model already has through further training.

    For fine-tuning a pruned model (plainly, or quantization-aware with a
    scheme that does not preserve sparsity for every layer): the masks are
    the kernels' non-zeros at the start of `fit`, applied after every batch,
    and the optimizer's slots are zeroed at the pruned positions. Logs
    `sparsity`, `sparsity/<layer name>` and `learning_rate` each epoch.

    Args:
        policy: which layers to hold, as in `MagnitudePruning`.
        include_frozen: also hold layers with `trainable=False` (whose
            weights do not change anyway).

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.callbacks import PreserveSparsity

    model = keras.Sequential([keras.layers.Dense(4, input_shape=(8,))])
    kernel = model.layers[0].kernel
    kernel.assign(kernel * np.random.binomial(1, 0.5, kernel.shape))  # a pruned kernel
    model.compile("adam", "mse")
    model.fit(np.random.rand(32, 8), np.random.rand(32, 4), epochs=1,
              callbacks=[PreserveSparsity()], verbose=0)  # the zeros stay zeros
    ```
    """

    def get_config(self):
        return {"policy": self.policy, "include_frozen": self.include_frozen}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        self._select()
        for weight, mask in zip(self._weights, self._masks):
            mask.assign(tf.cast(tf.not_equal(weight, 0), weight.dtype))
        self._prepare_step()
        self._apply_now(zero_slots=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._weights:
            self._layer_logs(logs)

    def on_train_end(self, logs=None):
        if not self._weights:
            return
        if self._slots is None:
            self._resolve_slots()
        self._apply_now(zero_slots=True)
