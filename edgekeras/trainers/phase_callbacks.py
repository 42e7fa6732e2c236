"""Callbacks `EdgeTrainer` adds to its phases' fits: phase logs and frozen-weight guards.

Internal to `edgekeras.trainers`: they carry no user-facing settings.
"""

import tensorflow as tf

from edgekeras.callbacks import current_learning_rate
from edgekeras.compat import keras

__all__ = ["PhaseLogs", "KeepFrozen"]


class PhaseLogs(keras.callbacks.Callback):
    """Adds the phase number and learning rate to each epoch's logs."""

    def __init__(self, phase, phases):
        super().__init__()
        self.phase = phase
        self.phases = tuple(phases)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["phase"] = float(self.phases.index(self.phase))
            logs.setdefault("learning_rate", current_learning_rate(self.model.optimizer))


class KeepFrozen(keras.callbacks.Callback):
    """Holds given variables at their start-of-fit values after every batch.

    For the kernels of frozen layers that TFMOT's QuantizeWrapperV2 makes
    trainable (see `quantization.frozen_weights_made_trainable`).
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
