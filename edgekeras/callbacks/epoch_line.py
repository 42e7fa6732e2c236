"""`EpochLine`: Keras' progress output with the per-layer figures left off the console."""

import inspect

from edgekeras.backend import Callback, for_model

__all__ = ["EpochLine", "on_console"]

# Figures that belong in TensorBoard and History, not in the line a person
# reads: the training phase's number and QAT's activation-range diagnostics.
# Keys with a "/" (`sparsity/<layer>`) are per-layer and are left off too.
HIDDEN_KEYS = ("phase",)
HIDDEN_PREFIXES = ("quant_range_",)


def on_console(key):
    """Whether the brief epoch line shows the log entry `key`.

    Args:
        key: a `logs` key, e.g. `"val_accuracy"` or `"sparsity/conv1"`.

    Returns:
        False for per-layer entries (any key with a "/"), `phase` and the
        `quant_range_*` figures; True otherwise.

    Example:

    ```python
    assert on_console("target_sparsity") and not on_console("sparsity/conv1")
    ```
    """
    return "/" not in key and key not in HIDDEN_KEYS and not key.startswith(HIDDEN_PREFIXES)


def _progbar_logger(keras):
    logger = keras.callbacks.ProgbarLogger
    # tf_keras counts samples unless told otherwise; Keras 3 always counts steps.
    if "count_mode" in inspect.signature(logger).parameters:
        return logger(count_mode="steps")
    return logger()


class EpochLine(Callback):
    """Prints Keras' progress bar and epoch line without the per-layer figures.

    `MagnitudePruning` adds a `sparsity/<layer>` entry per pruned layer to
    each epoch's logs, `EdgeTrainer` adds `phase` and QAT's `quant_range_*`
    figures: History, CSVLogger and TensorBoard keep all of them, while this
    callback's line shows the compiled metrics (loss, accuracy, validation
    figures), `sparsity`, `target_sparsity` and `learning_rate`. It does
    Keras' own `ProgbarLogger` work (the model's Keras' logger, fed the
    shown entries), so pass `verbose=0` to `fit`, or Keras prints its own
    line as well. `EdgeTrainer` adds one to every phase's fit unless `fit`
    gets `verbose=0`, a `ProgbarLogger` or an `EpochLine` of the user's.

    Put it after the callbacks that add log entries (`MagnitudePruning`).

    Args:
        verbose: 1 (a progress bar per epoch) or 2 (one line per epoch).
        full: print every log entry, per-layer ones included (Keras'
            own line).

    Raises:
        ValueError: `verbose` is not 1 or 2, or `full` is not a bool.

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.callbacks import EpochLine, MagnitudePruning
    from edgekeras.schedules import ConstantSparsity

    model = keras.Sequential([keras.layers.Dense(16, input_shape=(8,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=2))
    model.fit(np.random.rand(32, 8), np.random.rand(32, 2), epochs=2, verbose=0,
              callbacks=[pruning, EpochLine(verbose=2)])
    ```
    """

    def __init__(self, verbose=2, full=False):
        if verbose not in (1, 2) or isinstance(verbose, bool):
            raise ValueError(f"Argument `verbose` must be 1 or 2. Received: verbose={verbose!r}")
        if not isinstance(full, bool):
            raise ValueError(f"Argument `full` must be True or False. Received: full={full!r}")
        super().__init__()
        self.verbose = verbose
        self.full = full
        self._logger = None
        # The wrapped logger converts tensors itself, and only when it prints.
        self._supports_tf_logs = True

    def _logger_params(self):
        return dict(self.params, verbose=self.verbose)

    def set_model(self, model):
        super().set_model(model)
        # A new logger per fit: the model (and with it the Keras) may change between phases.
        self._logger = _progbar_logger(for_model(model).keras)
        self._logger.set_model(model)
        if getattr(self, "params", None):
            self._logger.set_params(self._logger_params())

    def set_params(self, params):
        super().set_params(params)
        if self._logger is not None:
            self._logger.set_params(self._logger_params())

    def _shown(self, logs):
        if logs is None or self.full:
            return logs
        return {key: value for key, value in logs.items() if on_console(key)}

    def _implements_train_batch_hooks(self):
        return self.verbose == 1

    def on_train_begin(self, logs=None):
        self._logger.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._logger.on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._logger.on_train_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        self._logger.on_epoch_end(epoch, self._shown(logs))

    def on_train_end(self, logs=None):
        self._logger = None
