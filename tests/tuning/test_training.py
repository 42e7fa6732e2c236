"""Tests of how a trial trains (`TrialTraining`) and of its per-trial callbacks."""

import threading

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from edgekeras import keras
from edgekeras.tuning.training import TrialTraining, trial_callbacks

VALUES = {"learning_rate": 1e-2, "final_sparsity": 0.5, "pruning_begin": 0.0, "pruning_end": 1.0, "qat_epochs": 0}


def _model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _data(count=32):
    rng = np.random.default_rng(0)
    return rng.random((count, 4, 4, 3), dtype=np.float32), (np.arange(count) % 2).astype(np.int32)


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"float_epochs": -1}, r"`float_epochs` must be an integer >= 0. Received: float_epochs=-1"),
        ({"prune_epochs": True}, r"`prune_epochs` must be an integer >= 0. Received: prune_epochs=True"),
        ({"qat_learning_rate_scale": 0}, r"`qat_learning_rate_scale` must be a positive number"),
        ({"cache_engine": "tpu"}, r"`cache_engine` must be 'litert' or 'keras'. Received: cache_engine='tpu'"),
        ({"qat_steps_per_epoch": 0}, r"`qat_steps_per_epoch` must be a positive integer or None"),
        ({"prune_policy": "some"}, r"prune_policy"),
    ],
)
def test_trial_training_rejects_bad_arguments(arguments, match):
    with pytest.raises(ValueError, match=match):
        TrialTraining(**arguments)


def test_the_pruning_ramp_needs_the_batches_per_epoch(tmp_path):
    images, labels = _data()
    endless = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()
    with pytest.raises(keras_tuner.errors.FatalValueError, match=r"Argument `steps_per_epoch` is needed to place the pruning ramp"):
        TrialTraining(verbose=0).train(_model(), VALUES, endless, validation_data=endless, log_dir=str(tmp_path))


def test_dense_trials_train_the_pruning_epochs_as_float_epochs(tmp_path):
    images, labels = _data()
    training = TrialTraining(float_epochs=1, prune_epochs=1, verbose=0)
    deployed, histories, epochs = training.train(
        _model(), dict(VALUES, final_sparsity=0.0), images, labels, validation_data=(images, labels),
        log_dir=str(tmp_path), batch_size=16,
    )
    assert epochs == {"float": 2, "prune": 0, "qat": 0}
    assert list(histories) == ["float"] and len(histories["float"]["val_accuracy"]) == 2
    assert isinstance(deployed, keras.Model)


def test_trial_callbacks_are_copies_logging_to_the_trial_folder(tmp_path):
    stopping = keras.callbacks.EarlyStopping(patience=2)
    board = keras.callbacks.TensorBoard(str(tmp_path / "elsewhere"))
    copied = trial_callbacks([stopping, board], str(tmp_path / "trial_0"))
    assert len(copied) == 2 and copied[0] is not stopping and copied[1] is not board
    assert copied[1].log_dir == str(tmp_path / "trial_0") and board.log_dir == str(tmp_path / "elsewhere")
    (added,) = trial_callbacks(None, str(tmp_path / "trial_1"))
    assert isinstance(added, keras.callbacks.TensorBoard) and added.log_dir == str(tmp_path / "trial_1")


def test_callbacks_that_cannot_be_copied_stop_the_search(tmp_path):
    class Locked(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    with pytest.raises(keras_tuner.errors.FatalValueError, match="Argument `callbacks` must hold deep-copyable callbacks"):
        trial_callbacks([Locked()], str(tmp_path))
