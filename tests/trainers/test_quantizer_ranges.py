"""The QAT phase logs its activation ranges (`QuantizerRanges`), so TensorBoard shows them move."""

import copy
import math

import numpy as np

from edgekeras import keras
from edgekeras.quantization import activation_ranges, quantize_model
from edgekeras.trainers import EdgeTrainer
from edgekeras.trainers.phase_callbacks import QuantizerRanges

KEYS = ("quant_range_width_mean", "quant_range_min", "quant_range_max", "quant_range_change")
SAMPLES, BATCH, CLASSES = 16, 8, 2


def net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def data():
    rng = np.random.default_rng(0)
    return rng.random((SAMPLES, 8, 8, 3), dtype=np.float32), rng.integers(0, CLASSES, SAMPLES)


def quantized():
    model, _ = quantize_model(net())
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


class RangeRecorder(keras.callbacks.Callback):
    """Reads the range variables when the phase begins and after each epoch."""

    def on_train_begin(self, logs=None):
        self.ranges = activation_ranges(self.model)
        self.start = self._values()
        self.epochs = []

    def _values(self):
        lows = np.concatenate([np.ravel(low.numpy()) for low, _ in self.ranges]).astype(np.float64)
        highs = np.concatenate([np.ravel(high.numpy()) for _, high in self.ranges]).astype(np.float64)
        return lows, highs

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self._values())


def test_qat_phase_history_has_the_ranges():
    x, y = data()
    recorder = RangeRecorder()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"])
    histories = trainer.fit(x, y, batch_size=BATCH, qat_epochs=2, conversions=(), verbose=0, callbacks=[recorder])
    qat = histories["qat"]
    for key in KEYS:
        assert len(qat[key]) == 2 and all(math.isfinite(value) for value in qat[key]), key
    # Each epoch's values are those of the range variables then; the change is counted from the phase's start.
    (start_lows, start_highs), changes = recorder.start, []
    for lows, highs in recorder.epochs:
        changes.append(np.mean(np.concatenate([np.abs(lows - start_lows), np.abs(highs - start_highs)])))
    np.testing.assert_allclose(qat["quant_range_change"], changes, rtol=1e-6)
    np.testing.assert_allclose(qat["quant_range_width_mean"], [np.mean(h - lo) for lo, h in recorder.epochs], rtol=1e-6)
    np.testing.assert_allclose(qat["quant_range_min"], [lo.min() for lo, _ in recorder.epochs], rtol=1e-6)
    np.testing.assert_allclose(qat["quant_range_max"], [h.max() for _, h in recorder.epochs], rtol=1e-6)
    assert qat["quant_range_change"][1] > qat["quant_range_change"][0] > 0  # two epochs of steps move them further


def test_a_copy_made_before_training_logs_in_a_fit():
    callback = copy.deepcopy(QuantizerRanges())
    x, y = data()
    history = quantized().fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)
    assert set(KEYS) <= set(history.history)


def test_values_are_those_of_the_range_variables():
    model = quantized()
    ranges = activation_ranges(model)
    assert ranges
    callback = QuantizerRanges()
    callback.set_model(model)
    callback.on_train_begin()
    start = [(low.numpy().copy(), high.numpy().copy()) for low, high in ranges]
    for index, (low, high) in enumerate(ranges):
        low.assign(low - 0.5 * index)
        high.assign(high + 0.25)
    logs = {}
    callback.on_epoch_end(0, logs)

    lows = np.array([low.numpy() for low, _ in ranges], np.float64).ravel()
    highs = np.array([high.numpy() for _, high in ranges], np.float64).ravel()
    moved = [abs(float(v.numpy()) - float(s)) for pair, was in zip(ranges, start) for v, s in zip(pair, was)]
    np.testing.assert_allclose(logs["quant_range_width_mean"], np.mean(highs - lows), rtol=1e-6)
    np.testing.assert_allclose(logs["quant_range_min"], lows.min(), rtol=1e-6)
    np.testing.assert_allclose(logs["quant_range_max"], highs.max(), rtol=1e-6)
    np.testing.assert_allclose(logs["quant_range_change"], np.mean(moved), rtol=1e-6)
    assert logs["quant_range_change"] > 0


def test_a_model_without_ranges_logs_nothing():
    callback = QuantizerRanges()
    callback.set_model(net())
    callback.on_train_begin()
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {}
