"""What the pruning callbacks share: masks applied after every batch.

`MagnitudePruning` (masks from a schedule) and `PreserveSparsity` (masks from
the zeros a model already has) differ only in where their masks come from.
This base class selects the weights (by policy), applies the masks after each
training batch, zeroes the optimizer's slots at the pruned positions and
publishes per-layer sparsity through `logs`.

The model's own Keras decides how (`edgekeras.backend`): one traced
`tf.function` per batch on tf_keras; `keras.ops` on Keras 3, whatever its
backend (under JAX, the training state is synced into the variables first,
so the masks reach the next step).
"""

import copy

import numpy as np

from edgekeras import backend, sparsity

__all__ = ["MaskingCallback", "current_learning_rate"]


def current_learning_rate(optimizer):
    """Returns the optimizer's learning rate at its current step, as a float.

    Args:
        optimizer: a tf_keras (legacy or not) or Keras 3 optimizer; its rate
            may be a schedule.

    Returns:
        The rate, or NaN when it cannot be read.

    Example:

    ```python
    logs["learning_rate"] = current_learning_rate(model.optimizer)
    ```
    """
    return backend.for_model(optimizer).learning_rate(optimizer)


class MaskingCallback(backend.Callback):
    """Keeps a mask per selected kernel and applies it after every batch."""

    # What a deep copy leaves out (the model, masks, traced functions): a
    # subclass with more training state adds its attributes here.
    _runtime_keys = frozenset(
        {"model", "_model", "_backend", "_layers", "_weights", "_masks", "_slots", "_batch_fn", "_cache_key"}
    )

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
        self._backend = None
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
        for key, value in self.__dict__.items():
            if key in self._runtime_keys:
                continue
            clone.__dict__[key] = value if callable(value) and key == "policy" else copy.deepcopy(value, memo)
        clone.model = None
        clone._clear_state()
        return clone

    def _select(self):
        model = backend.check_model(self.model)
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
                mask.assign(np.ones_like(self._backend.to_numpy(mask)))
            return
        self._clear_state()
        self._backend = backend.for_model(model)
        self._cache_key = key
        self._layers = [layer for layer, _ in pairs]
        self._weights = [weight for _, weight in pairs]
        self._masks = [self._backend.mask_variable(w) for w in self._weights]

    def _resolve_slots(self):
        optimizer = self.model.optimizer
        self._slots = [self._backend.slot_variables(optimizer, w) for w in self._weights]

    def _prepare_step(self):
        """Creates the optimizer's slots now and makes the per-batch function.

        With the slots there from the start, mask updates reach them. The
        function is run once here: on tf_keras, its tracing and graph
        optimization cost more than an epoch of small batches, better paid
        before the first epoch; running it only does what the next batch
        would do.
        """
        if self._batch_fn is not None:
            return
        if not self._backend.build_optimizer(self.model.optimizer, self.model.trainable_variables):
            return  # unusual optimizer: the function is made on the first batch
        self._resolve_slots()
        self._batch_fn = self._make_batch_fn()
        self._batch_fn()

    def _new_masks_fn(self):
        """Returns a graph function `(step) -> (should_update, thunk of [masks])`, or None (tf_keras)."""
        return None

    # Keras 3: `_masks_at(step)` -> the new masks at an int step as numpy
    # arrays, or None when they do not change then; None here: never.
    _masks_at = None

    def _make_batch_fn(self):
        slots = self._slots or [[] for _ in self._weights]
        return self._backend.batch_function(
            self.model, self._weights, self._masks, slots, graph_masks=self._new_masks_fn(), masks_at=self._masks_at
        )

    def _apply_now(self, zero_slots):
        self._backend.apply_masks(self._weights, self._masks, self._slots if zero_slots else None)

    def on_train_batch_end(self, batch, logs=None):
        if self._batch_fn is None:
            # The optimizer creates its slots on the first step; make the
            # function once they exist so that mask updates can zero them.
            self._resolve_slots()
            self._batch_fn = self._make_batch_fn()
        self._batch_fn()

    def _layer_logs(self, logs, prefix="sparsity"):
        names = {}
        total = zeros = 0
        for layer, weight in zip(self._layers, self._weights):
            values = self._backend.to_numpy(weight)
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
