"""What the pruning callbacks share: masks applied after every batch.

`MagnitudePruning` (masks from a schedule) and `PreserveSparsity` (masks from
the zeros a model already has) differ only in where their masks come from.
This base class selects the weights (by policy), applies the masks in one
`tf.function` after each training batch, zeroes the optimizer's slots at the
pruned positions and publishes per-layer sparsity through `logs`.
"""

import copy

import numpy as np
import tensorflow as tf

from edgekeras import sparsity
from edgekeras.compat import check_model, keras

__all__ = ["MaskingCallback", "current_learning_rate"]


def current_learning_rate(optimizer):
    """Returns the optimizer's learning rate at its current step, as a float.

    Args:
        optimizer: a tf_keras optimizer, legacy or not; its rate may be a
            schedule.

    Returns:
        The rate, or NaN when it cannot be read.

    Example:

    ```python
    logs["learning_rate"] = current_learning_rate(model.optimizer)
    ```
    """
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


class MaskingCallback(keras.callbacks.Callback):
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
