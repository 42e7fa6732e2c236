"""TFLiteExport in a Keras 3 `model.fit`, after pruning: the same files as on tf_keras."""

import keras
import numpy as np
import tensorflow as tf

from edgekeras.callbacks import MagnitudePruning, TFLiteExport
from edgekeras.litert import tflite_sparsity
from edgekeras.runtime import TFLiteModel
from edgekeras.schedules import ConstantSparsity


def conv_net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(x))


def test_a_pruned_keras3_model_exports_every_conversion_at_the_end_of_fit(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, np.arange(32) % 3)).batch(8)
    model = conv_net()
    model.compile("adam", "sparse_categorical_crossentropy")
    export = TFLiteExport(tmp_path, ("float32", "dynamic_int8", "int8"), representative_data=data, verbose=0)
    model.fit(data, epochs=2, verbose=0, callbacks=[MagnitudePruning(ConstantSparsity(0.6, 0, frequency=1)), export])
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == ["dynamic_int8.tflite", "float32.tflite", "int8.tflite"]
    assert [exported.conversion for exported in export.exported] == ["float32", "dynamic_int8", "int8"]
    assert tflite_sparsity(tmp_path / "float32.tflite") >= 0.55
    np.testing.assert_allclose(TFLiteModel(tmp_path / "float32.tflite").predict(images), model.predict(images, verbose=0), atol=1e-5)
    assert export.exported[-1].verification.top1_agreement >= 0.9
