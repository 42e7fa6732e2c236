"""Callbacks `EdgeTrainer` adds to its phases' fits: phase logs, QAT range logs, frozen-weight guards.

Internal to `edgekeras.trainers`: they carry no user-facing settings.
"""

import numpy as np
import tensorflow as tf

from edgekeras.callbacks import EpochLine, current_learning_rate
from edgekeras.backend import KERAS_MODULES, Callback
from edgekeras.qat import engine_for

__all__ = ["PhaseLogs", "KeepFrozen", "QuantizerRanges", "with_epoch_line"]


class PhaseLogs(Callback):
    """Adds the phase number and learning rate to each epoch's logs."""

    def __init__(self, phase, phases):
        super().__init__()
        self.phase = phase
        self.phases = tuple(phases)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["phase"] = float(self.phases.index(self.phase))
            logs.setdefault("learning_rate", current_learning_rate(self.model.optimizer))


def with_epoch_line(callbacks, fit_kwargs):
    """A phase's callbacks and fit keywords with its console output given to an `EpochLine`.

    The line leaves the per-layer figures (`sparsity/<layer>`) to History and
    TensorBoard. Nothing changes when `verbose` is 0 or the callbacks hold a
    `ProgbarLogger` of either Keras; an `EpochLine` among them is used as it
    is. Either way the fit itself runs with `verbose=0`, so Keras adds no
    second line.

    Returns:
        `(callbacks, fit_kwargs)`.
    """
    loggers = tuple(keras.callbacks.ProgbarLogger for keras in KERAS_MODULES)
    if any(isinstance(callback, EpochLine) for callback in callbacks):
        return callbacks, dict(fit_kwargs, verbose=0)
    verbose = fit_kwargs.get("verbose", "auto")
    if verbose == 0 or any(isinstance(callback, loggers) for callback in callbacks):
        return callbacks, fit_kwargs
    line = EpochLine(verbose=1 if verbose == "auto" else verbose)
    return [*callbacks, line], dict(fit_kwargs, verbose=0)


class KeepFrozen(Callback):
    """Holds given variables at their start-of-fit values after every batch.

    For the kernels of frozen layers that TFMOT's QuantizeWrapperV2 makes
    trainable (see `QATEngine.frozen_weights_made_trainable`).
    """

    def __init__(self, variables):
        super().__init__()
        self._variables = list(variables)
        self._saved = []
        self._restore = None
        self._supports_tf_logs = True

    def on_train_begin(self, logs=None):
        with tf.init_scope():
            self._saved = [tf.Variable(v, trainable=False) for v in self._variables]
        pairs = list(zip(self._variables, self._saved))

        @tf.function(autograph=False)
        def restore():
            for variable, saved in pairs:
                variable.assign(saved, read_value=False)

        self._restore = restore

    def on_train_batch_end(self, batch, logs=None):
        self._restore()

    def on_train_end(self, logs=None):
        self._restore()
        self._saved, self._restore = [], None


class QuantizerRanges(Callback):
    """Adds the QAT activation ranges to each epoch's logs, so TensorBoard shows them move.

    The ranges decide the int8 model's accuracy, yet move only 0.1 % per step
    (TFMOT's moving average): these scalars tell whether fine-tuning was long
    enough for them to settle. Over every range of the engine's `activation_ranges`
    (a per-channel one counts each channel): `quant_range_width_mean`
    (mean of max - min), `quant_range_min` (smallest min), `quant_range_max`
    (largest max) and `quant_range_change` (mean absolute change of the min
    and max values since the fit began). Nothing is added when the model has
    no such range.

    Holds no model or TensorFlow object before `on_train_begin`, so it
    survives `copy.deepcopy`, which the tuner applies to each trial's callbacks.
    """

    def __init__(self):
        super().__init__()
        self._ranges = []
        self._start = None

    def _values(self):
        lows = np.concatenate([np.ravel(low.numpy()) for low, _ in self._ranges]).astype(np.float64)
        highs = np.concatenate([np.ravel(high.numpy()) for _, high in self._ranges]).astype(np.float64)
        return lows, highs

    def on_train_begin(self, logs=None):
        # After BackupAndRestore (first in the list), so a resumed phase
        # counts the change from where it resumed.
        self._ranges = engine_for(self.model).activation_ranges(self.model)
        self._start = self._values() if self._ranges else None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._ranges:
            return
        lows, highs = self._values()
        change = np.concatenate([np.abs(lows - self._start[0]), np.abs(highs - self._start[1])])
        logs["quant_range_width_mean"] = float(np.mean(highs - lows))
        logs["quant_range_min"] = float(np.min(lows))
        logs["quant_range_max"] = float(np.max(highs))
        logs["quant_range_change"] = float(np.mean(change))

    def on_train_end(self, logs=None):
        self._ranges, self._start = [], None
