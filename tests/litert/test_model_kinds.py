"""Every model that trains exports: subclassed, two-input and dict-input models, calibrated, verified, evaluated."""

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.compat import keras
from edgekeras.litert import (
    InputDataError,
    TFLiteModel,
    check_input_signature,
    convert,
    evaluate_accuracy,
    evaluate_tflite,
    export_tflite,
    verify,
)

SIDE = 12
COUNT = 24


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv2D(8, 3, activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(3, activation="softmax", name="head")

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


def _images(seed=0, side=SIDE):
    return np.random.default_rng(seed).uniform(-1, 1, (COUNT, side, side, 3)).astype(np.float32)


def _labels():
    return np.arange(COUNT) % 3


def _fit(model, dataset):
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(dataset, epochs=1, verbose=0)
    return model


def _dict_model():
    keras.utils.set_random_seed(1)
    image = keras.Input((SIDE, SIDE, 3), name="pixels")
    meta = keras.Input((4,), name="extra")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(image))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, activation="relu")(meta)])
    # Dict keys other than the Input names: Keras matches the data by key.
    return keras.Model({"image": image, "meta": meta}, keras.layers.Dense(3, activation="softmax")(x), name="dict_model")


def _dict_dataset():
    rng = np.random.default_rng(2)
    inputs = {"image": _images(3), "meta": rng.uniform(-1, 1, (COUNT, 4)).astype(np.float32)}
    return tf.data.Dataset.from_tensor_slices((inputs, _labels())).batch(8)


def _two_input_model():
    keras.utils.set_random_seed(2)
    # Input names out of alphabetical order: the file keeps the model's order.
    small = keras.Input((SIDE // 2, SIDE // 2, 3), name="small")
    large = keras.Input((SIDE, SIDE, 3), name="large")
    a = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(large))
    b = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(small))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([a, b]))
    return keras.Model([small, large], outputs, name="two_inputs")


def _two_input_dataset():
    return tf.data.Dataset.from_tensor_slices(((_images(5, SIDE // 2), _images(4)), _labels())).batch(8)


def test_subclassed_model_exports_float32_and_int8_and_evaluates(tmp_path):
    keras.utils.set_random_seed(0)
    dataset = tf.data.Dataset.from_tensor_slices((_images(), _labels())).batch(8)
    model = _fit(Subclassed(), dataset)
    assert model.inputs is None  # traced from the inputs of its first call
    for conversion in ("float32", "int8"):
        exported = export_tflite(
            model, tmp_path / f"{conversion}.tflite", conversion, representative_data=dataset, verify_data=dataset,
            min_agreement=0.9,
        )
        assert exported.verification.examples == COUNT
    assert exported.verification.max_abs_diff < 0.05
    evaluation = evaluate_tflite(tmp_path / "int8.tflite", dataset, latency_runs=50, warmup=1, latency_threads=(1,), progress=False)
    assert evaluation.examples == COUNT and 0.0 <= evaluation.accuracy <= 1.0


def test_subclassed_model_never_called_is_traced_from_its_data_or_signature(tmp_path):
    keras.utils.set_random_seed(0)
    dataset = tf.data.Dataset.from_tensor_slices((_images(), _labels())).batch(8)
    assert TFLiteModel(convert(Subclassed(), "int8", representative_data=dataset)).input_shape == (-1, SIDE, SIDE, 3)
    signature = tf.TensorSpec([1, SIDE, SIDE, 3], tf.float32)
    exported = export_tflite(Subclassed(), tmp_path / "float32.tflite", input_signature=signature)
    assert exported.verification.top1_agreement == 1.0
    with pytest.raises(ValueError, match=r"Argument `input_signature` is needed to convert model 'subclassed'.*"
                                         r"Received: input_signature=None"):
        convert(Subclassed(), "float32")


def test_dict_input_model_exports_int8_calibrated_and_verified(tmp_path):
    dataset = _dict_dataset()
    model = _fit(_dict_model(), dataset)
    exported = export_tflite(
        model, tmp_path / "int8.tflite", "int8", representative_data=dataset, verify_data=dataset, io_dtype="uint8",
        min_agreement=0.8,
    )
    assert exported.verification.examples == COUNT and exported.verification.max_abs_diff < 0.1
    runner = TFLiteModel(exported.path)
    assert sorted(runner.input_names) == ["image", "meta"] and runner.input_dtype.name == "uint8"
    batch = next(iter(dataset))[0]
    by_name = runner.predict({key: value.numpy() for key, value in batch.items()})
    np.testing.assert_allclose(by_name, model(batch).numpy(), atol=0.1)
    assert evaluate_accuracy(exported.path, dataset, progress=False).examples == COUNT
    assert evaluate_accuracy(exported.path, dataset, max_examples=5, progress=False).examples == 5


def test_two_input_model_exports_int8_calibrated_and_verified(tmp_path):
    dataset = _two_input_dataset()
    model = _fit(_two_input_model(), dataset)
    exported = export_tflite(
        model, tmp_path / "int8.tflite", "int8", representative_data=dataset, verify_data=dataset, min_agreement=0.8,
    )
    runner = TFLiteModel(exported.path)
    # Inputs of different shapes: a swapped order could not even run.
    assert runner.input_shapes == [(-1, SIDE // 2, SIDE // 2, 3), (-1, SIDE, SIDE, 3)]
    assert runner.input_names == ["small", "large"]
    assert evaluate_accuracy(exported.path, dataset, progress=False).examples == COUNT
    # A dict keyed by the Input names feeds a list-input model too, as in Keras.
    named = {"large": _images(4), "small": _images(5, SIDE // 2)}
    assert verify(exported.path, model, named).examples == COUNT
    named_data = tf.data.Dataset.from_tensor_slices((named, _labels())).batch(8)
    assert export_tflite(model, tmp_path / "float32.tflite", verify_data=named_data).verification.top1_agreement == 1.0


@pytest.mark.parametrize(
    "make_data, match",
    [
        (
            lambda: tf.data.Dataset.from_tensor_slices(({"picture": _images(), "meta": _images()}, _labels())).batch(8),
            r"Argument `representative_data` yields inputs named \['meta', 'picture'\], but the model's inputs are "
            r"\['image', 'meta'\] \(missing: \['image'\]\)",
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices((_images(), _labels())).batch(8),
            r"Argument `representative_data` yields 1 input tensor\(s\) per batch, but the model takes 2",
        ),
        (
            lambda: tf.data.Dataset.from_tensor_slices(
                ({"image": _images(), "meta": np.zeros((COUNT, 4), np.float32)}, _labels())
            ),
            r"yields input 'image' of shape \(12, 12, 3\), but the model takes batches of shape \(None, 12, 12, 3\).*"
            r"Batch it first",
        ),
    ],
)
def test_data_that_does_not_fit_the_inputs_is_named(make_data, match):
    with pytest.raises(InputDataError, match=match):
        convert(_dict_model(), "int8", representative_data=make_data())


@pytest.mark.parametrize("signature", ["image", [], tf.TensorSpec([]), [[tf.TensorSpec([None, 4])]]])
def test_bad_input_signature(signature):
    with pytest.raises(ValueError, match=r"Argument `input_signature` must be a tf.TensorSpec, or a list, tuple or dict"):
        check_input_signature(signature)


@pytest.mark.parametrize(
    "inputs, match",
    [
        ({"image": np.zeros((2, SIDE, SIDE, 3))}, r"Argument `inputs` must hold the model's inputs \['image', 'meta'\]"),
        ([np.zeros((2, SIDE, SIDE, 3))], r"Argument `inputs` must hold 2 array\(s\), one per model input"),
        ([np.zeros((2, SIDE, SIDE, 3)), np.zeros((3, 4))], r"must hold the same number of examples per input"),
    ],
)
def test_runtime_names_what_a_multi_input_file_needs(inputs, match):
    runner = TFLiteModel(convert(_dict_model(), "float32"))
    with pytest.raises(ValueError, match=match):
        runner.predict(inputs)
