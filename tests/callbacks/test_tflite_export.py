"""TFLiteExport: the untrained model is converted before the first epoch; any model that trains exports."""

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.callbacks import TFLiteExport
from edgekeras.compat import keras
from edgekeras.litert import ConversionError

SIDE = 10
COUNT = 16


def _atan(x):
    return tf.math.atan(x)


def atan_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.Lambda(_atan, name="my_atan")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="net")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


def _dataset(x=None):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (COUNT, SIDE, SIDE, 3)).astype(np.float32) if x is None else x
    return tf.data.Dataset.from_tensor_slices((x, np.arange(COUNT) % 3)).batch(8)


def _fit(model, callback, data=None):
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(_dataset() if data is None else data, epochs=1, verbose=0, callbacks=[callback])


def test_refused_layer_fails_before_the_first_epoch_with_the_dump_in_the_directory(tmp_path):
    model = atan_model()
    before = [w.copy() for w in model.get_weights()]
    callback = TFLiteExport(tmp_path, ("float32", "int8"), prefix="final_", representative_data=_dataset(), verbose=0)
    with pytest.raises(ConversionError, match=r"^Checked before training, on the untrained model: .*failed at layer 'my_atan'"
                                              rf".*The converter's full output is in {tmp_path / 'final_conversion.log'}$"):
        _fit(model, callback)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "no epoch ran"
    assert "net/my_atan" in (tmp_path / "final_conversion.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_conversion.log"]


def test_trial_can_be_turned_off(tmp_path):
    model = atan_model()
    before = [w.copy() for w in model.get_weights()]
    # Without the trial, the same model trains and fails only when exported.
    with pytest.raises(ConversionError, match=r"^TFLite conversion 'float32' of model 'net' failed at layer 'my_atan'"):
        _fit(model, TFLiteExport(tmp_path, ("float32",), trial=False, verbose=0))
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match=r"Argument `trial` must be True or False. Received: trial='yes'"):
        TFLiteExport(tmp_path, trial="yes")


def test_subclassed_model_never_called_is_tried_from_its_data_and_exported(tmp_path):
    keras.utils.set_random_seed(0)
    callback = TFLiteExport(
        tmp_path, ("float32", "int8"), representative_data=_dataset(), verify_data=_dataset(), min_agreement=0.9, verbose=0,
    )
    _fit(Subclassed(), callback)
    assert [e.conversion for e in callback.exported] == ["float32", "int8"]
    assert callback.exported[0].verification.top1_agreement == 1.0


def test_subclassed_model_without_data_is_exported_from_its_first_call(tmp_path):
    # Nothing tells its inputs before training: the trial waits, export reads the first call's inputs.
    callback = TFLiteExport(tmp_path, ("float32",), verbose=0)
    _fit(Subclassed(), callback)
    assert callback.exported[0].verification.top1_agreement == 1.0


def test_dict_input_model_exports_int8(tmp_path):
    keras.utils.set_random_seed(0)
    image = keras.Input((SIDE, SIDE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    model = keras.Model({"image": image}, keras.layers.Dense(3, activation="softmax")(x))
    data = _dataset().map(lambda x, y: ({"image": x}, y))
    callback = TFLiteExport(tmp_path, ("int8",), representative_data=data, verify_data=data, min_agreement=0.8, verbose=0)
    _fit(model, callback, data)
    assert callback.exported[0].verification.examples == COUNT
