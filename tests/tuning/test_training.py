"""Tests of how a trial trains (`TrialTraining`) and of its per-trial callbacks."""

import threading

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from edgekeras import channels, keras
from edgekeras.tuning.training import TrialTraining, trial_callbacks
from edgekeras.tuning.trial_channels import TrialWidths

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
        ({"channel_epochs": 0}, r"`channel_epochs` must be a positive integer. Received: channel_epochs=0"),
        ({"channel_steps_per_epoch": 0}, r"`channel_steps_per_epoch` must be a positive integer or None"),
        ({"channel_allocation": "random"}, r"`channel_allocation` must be one of 'latency', 'uniform'"),
        ({"latency_threads": 0}, r"`latency_threads` must be a positive integer. Received: latency_threads=0"),
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


# -- channel pruning (target_latency below 1) --------------------------------------------


def _slimmable(frozen_first=False):
    """Two convolutions of 32 and 48 channels, the first one (and its BatchNorm) optionally frozen."""
    inputs = keras.Input((16, 16, 3), name="images")
    x = inputs
    for index, filters in enumerate((32, 48)):
        trainable = not (frozen_first and index == 0)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}", trainable=trainable)(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}", trainable=trainable)(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="classifier")(x))


def _widths(model):
    """Output channels of conv0 and conv1 (of a plain or a quantization-aware model)."""
    return {
        name: next(int(w.shape[-1]) for w in model.weights if f"{name}/kernel" in w.name) for name in ("conv0", "conv1")
    }


def _images16(count=32):
    rng = np.random.default_rng(0)
    return rng.random((count, 16, 16, 3), dtype=np.float32), (np.arange(count) % 2).astype(np.int32)


@pytest.mark.parametrize("allocation", ["latency", "uniform"])
def test_trials_below_target_latency_1_deploy_a_narrower_model(tmp_path, monkeypatch, allocation):
    measured = []
    measure = channels.measure_table
    monkeypatch.setattr(channels, "measure_table", lambda *args, **kwargs: measured.append(1) or measure(*args, **kwargs))
    images, labels = _images16()
    training = TrialTraining(channel_allocation=allocation, channel_steps_per_epoch=1, verbose=0)

    def train(target):
        return training.train(_slimmable(), dict(VALUES, target_latency=target), images, labels,
                              validation_data=(images, labels), log_dir=str(tmp_path / str(target)), batch_size=16)

    dense, dense_histories, dense_epochs = train(1.0)
    slim, histories, epochs = train(0.5)
    assert _widths(dense) == {"conv0": 32, "conv1": 48} and "channels" not in dense_epochs
    assert sum(_widths(slim).values()) < 80 and all(width % 16 == 0 for width in _widths(slim).values())
    assert epochs == {"float": 1, "prune": 1, "qat": 0, "channels": 1}
    assert list(histories) == ["float", "channels", "prune"] and "val_accuracy" in histories["prune"]
    assert np.mean([np.mean(w.numpy() == 0) for w in slim.weights if w.name.endswith("kernel:0")]) > 0.2  # pruned after
    assert training.channel_widths.widths(_slimmable(), 0.7)
    assert len(measured) == 1  # one latency table per search and architecture


def test_with_cached_features_the_frozen_prefix_loses_channels_and_stays_frozen(tmp_path):
    images, labels = _images16()
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    training = TrialTraining(cache_features=True, cache_engine="keras", channel_steps_per_epoch=2, qat_steps_per_epoch=1,
                             channel_allocation="uniform", verbose=0)
    deployed, histories, epochs = training.train(
        _slimmable(frozen_first=True), dict(VALUES, target_latency=0.5, qat_epochs=1), data, validation_data=data,
        log_dir=str(tmp_path),
    )
    assert _widths(deployed)["conv0"] < 32  # the high-resolution, frozen layer was narrowed too
    assert epochs == {"float": 1, "prune": 1, "qat": 1, "channels": 1}
    assert list(histories) == ["float", "channels", "prune", "qat"]
    assert len(histories["prune"]["loss"]) == 1 and not any(key.startswith("val_") for key in histories["prune"])
    frozen = [layer for layer in deployed.layers if layer.name.endswith("conv0")]
    assert frozen and not any(layer.trainable for layer in frozen)  # the later phases train what the hypermodel trains


def test_an_unreachable_latency_target_names_the_hyperparameter():
    with pytest.raises(ValueError, match=r"Hyperparameter `target_latency` cannot be met on model .*target_latency=0.01"):
        TrialWidths(verbose=0).widths(_slimmable(), 0.01)


def test_a_model_without_a_latency_table_stops_the_search():
    import keras as keras3

    inputs = keras3.Input((16, 16, 3))
    x = keras3.layers.Conv2D(32, 3, name="conv0")(inputs)
    x = keras3.layers.BatchNormalization(name="bn0")(x)
    x = keras3.layers.Conv2D(32, 3, name="conv1")(x)
    model = keras3.Model(inputs, keras3.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(keras_tuner.errors.FatalValueError, match=r"needs a latency table of the model, which cannot be measured"):
        TrialWidths(verbose=0).widths(model, 0.5)
