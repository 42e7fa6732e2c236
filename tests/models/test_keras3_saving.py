"""save_model / load_model with Keras 3 models: every phase, the Keras read from the file."""

import keras
import numpy as np
import pytest

from edgekeras.compat import keras as tf_keras
from edgekeras.models import UnsafeModelError, load_model, save_model
from edgekeras.qat import Keras3QAT


def conv_net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(x))


def images():
    return np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("extension", [".keras", ".h5"])
def test_a_keras3_float_model_round_trips_as_keras3(tmp_path, extension):
    model = conv_net()
    path = save_model(model, tmp_path / f"float{extension}")
    loaded = load_model(path)
    assert isinstance(loaded, keras.Model) and not isinstance(loaded, tf_keras.Model)
    np.testing.assert_allclose(loaded.predict(images(), verbose=0), model.predict(images(), verbose=0), atol=1e-6)


def test_a_keras3_qat_model_round_trips_as_keras(tmp_path):
    engine = Keras3QAT()
    qat_model, _ = engine.quantize(conv_net())
    engine.calibrate(qat_model, [images()] * 2, steps=2)
    loaded = load_model(save_model(qat_model, tmp_path / "qat.keras"))
    assert engine.is_quantization_aware(loaded)
    np.testing.assert_allclose(loaded.predict(images(), verbose=0), qat_model.predict(images(), verbose=0), atol=1e-6)


def test_tf_keras_files_still_load_as_tf_keras(tmp_path):
    inputs = tf_keras.Input((3,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))
    for name in ("m.h5", "m.keras"):
        assert isinstance(load_model(save_model(model, tmp_path / name)), tf_keras.Model)


def test_a_keras3_model_has_no_saved_model_directory_format(tmp_path):
    with pytest.raises(ValueError, match=r"Save a Keras 3 model as \.keras"):
        save_model(conv_net(), tmp_path / "directory")
    assert list(tmp_path.iterdir()) == []


def test_a_keras3_lambda_layer_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2, name="doubler")(inputs))
    path = save_model(model, tmp_path / "lambda.keras")
    with pytest.raises(UnsafeModelError, match=r"'doubler'"):
        load_model(path)
    assert load_model(path, safe_mode=False).predict(np.ones((1, 3), np.float32), verbose=0).tolist() == [[2.0, 2.0, 2.0]]
