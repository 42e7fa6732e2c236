"""LiteRT evaluation: accuracy on a crafted dataset, sparsity, sizes, latency."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.compat import keras
from edgekeras.litert import (
    TFLiteFileError,
    TFLiteModel,
    evaluate_accuracy,
    evaluate_tflite,
    file_sizes,
    measure_latency,
    tflite_sparsity,
    weight_sparsity,
)
from edgekeras.litert import export_tflite

SIDE = 4


def channel_classifier():
    """Predicts the brightest colour channel: class = argmax of channel means."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    dense.set_weights([np.eye(3, dtype=np.float32) * 8.0, np.zeros(3, np.float32)])
    return model


def crafted_data(count=10, correct=7):
    """`count` images of one bright channel each; the first `correct` labels are right."""
    images = np.full((count, SIDE, SIDE, 3), -0.8, np.float32)
    truth = np.arange(count) % 3
    images[np.arange(count), :, :, truth] = 0.8
    labels = truth.copy()
    labels[correct:] = (truth[correct:] + 1) % 3
    return images, labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("evaluate")
    model = channel_classifier()
    images, _ = crafted_data(30, 30)
    result = {}
    for conversion, io_dtype in (("float32", "float32"), ("int8", "uint8"), ("int8", "int8"), ("float16", "float32")):
        name = f"{conversion}_{io_dtype}"
        result[name] = export_tflite(
            model, directory / f"{name}.tflite", conversion, representative_data=images, io_dtype=io_dtype
        ).path
    return result


@pytest.mark.parametrize("name", ["float32_float32", "int8_uint8", "int8_int8", "float16_float32"])
def test_accuracy_on_crafted_dataset_batched_with_padding(files, name):
    images, labels = crafted_data(10, 7)
    # Batches of 4: the last batch of 2 is padded inside the interpreter.
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    result = evaluate_accuracy(files[name], dataset, num_threads=2, progress=False)
    assert (result.accuracy, result.correct, result.examples) == (0.7, 7, 10)


def test_accuracy_on_numpy_pair_one_hot_labels_and_max_examples(files):
    images, labels = crafted_data(10, 7)
    one_hot = np.eye(3)[labels]
    assert evaluate_accuracy(files["float32_float32"], (images, one_hot), progress=False).accuracy == 0.7
    limited = evaluate_accuracy(
        files["float32_float32"], [(images[:4], labels[:4]), (images[4:], labels[4:])], max_examples=5, progress=False
    )
    assert (limited.correct, limited.examples) == (5, 5)


def test_quantized_input_uses_the_tensor_scale_and_zero_point(files):
    runner = TFLiteModel(files["int8_uint8"])
    scale, zero_point = runner._inputs[0]["quantization"]
    assert runner.input_dtype == np.uint8 and scale > 0
    values = np.array([[-0.5, 0.0, 0.5]], np.float32)  # inside the calibrated range
    quantized = runner.quantize_input(values)
    np.testing.assert_allclose((quantized.astype(np.float32) - zero_point) * scale, values, atol=scale)
    probabilities = runner.predict(crafted_data(3, 3)[0])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)


def test_weight_sparsity_counts_zeros_exactly(tmp_path):
    inputs = keras.Input((SIDE, SIDE, 3))
    conv = keras.layers.Conv2D(4, 1, use_bias=False)
    dense = keras.layers.Dense(10, use_bias=False)
    outputs = dense(keras.layers.Flatten()(conv(inputs)))
    model = keras.Model(inputs, outputs)
    conv_kernel = np.ones((1, 1, 3, 4), np.float32)
    conv_kernel[0, 0, :, :3] = 0.0  # 9 of 12 zero
    dense_kernel = np.ones((SIDE * SIDE * 4, 10), np.float32)
    dense_kernel[:, :5] = 0.0  # 320 of 640 zero
    conv.set_weights([conv_kernel])
    dense.set_weights([dense_kernel])
    images = np.random.default_rng(0).uniform(-1, 1, (8, SIDE, SIDE, 3)).astype(np.float32)
    for conversion in ("float32", "float16", "int8", "sparse_float32", "dynamic_int8"):
        path = export_tflite(model, tmp_path / f"{conversion}.tflite", conversion, representative_data=images).path
        counts = sorted(weight_sparsity(path).values())
        assert counts == [(9, 12), (320, 640)], conversion
        assert tflite_sparsity(path) == pytest.approx(329 / 652), conversion


def test_sizes_are_raw_and_gzip(files):
    path = files["float32_float32"]
    size, gzipped = file_sizes(path)
    with open(path, "rb") as handle:
        data = handle.read()
    assert size == len(data) == os.path.getsize(path)
    assert gzipped == len(gzip.compress(data, compresslevel=9, mtime=0))


def test_latency_median_and_p90(files):
    latency = measure_latency(files["int8_uint8"], num_threads=2, runs=60, warmup=2)
    assert latency.runs == 60 and latency.num_threads == 2
    assert 0 < latency.median_ms <= latency.p90_ms


def test_evaluate_tflite_gathers_everything(files):
    images, labels = crafted_data(10, 7)
    result = evaluate_tflite(files["int8_int8"], (images, labels), latency_threads=(1, 2), progress=False)
    assert result.accuracy == 0.7 and result.examples == 10
    assert result.size_bytes == os.path.getsize(files["int8_int8"])
    assert 0 < result.gzip_bytes and 0.0 <= result.sparsity <= 1.0
    assert set(result.latency) == {1, 2} and result.input_dtype == "int8"
    assert set(result.to_dict()["latency"]) == {"1", "2"}


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda f: evaluate_tflite(f, crafted_data(), latency_runs=10),
         ValueError, "Argument `latency_runs` must be an integer >= 50"),
        (lambda f: evaluate_tflite(f, crafted_data(), latency_threads=(0,)),
         ValueError, "Argument `latency_threads` must be a positive"),
        (lambda f: measure_latency(f, runs=0), ValueError, "Argument `runs` must be a positive integer"),
        (lambda f: measure_latency(f, warmup=-1), ValueError, "Argument `warmup` must be a non-negative"),
        (lambda f: TFLiteModel(f, num_threads=0), ValueError, "Argument `num_threads` must be a positive"),
        (lambda f: TFLiteModel(f + ".missing"), FileNotFoundError, "does not exist"),
        (lambda f: evaluate_accuracy(f, [], progress=False), ValueError, "yielded no examples"),
        (lambda f: evaluate_accuracy(f, [np.zeros((1, SIDE, SIDE, 3))], progress=False),
         ValueError, r"must yield \(images, labels\)"),
        (lambda f: evaluate_accuracy(f, crafted_data(), max_examples=0), ValueError, "Argument `max_examples` must be"),
    ],
)
def test_bad_arguments(files, call, error, match):
    with pytest.raises(error, match=match):
        call(files["float32_float32"])


def _damaged(files, tmp_path, damage):
    """A damaged copy of a good .tflite file, as a path (or as bytes)."""
    good = open(files["float32_float32"], "rb").read()
    damages = {"garbage": b"not a flatbuffer " * 40, "empty": b"", "truncated": good[: len(good) // 2]}
    data = damages[damage.removesuffix(" bytes")]
    if damage.endswith(" bytes"):
        return data
    path = tmp_path / "bad.tflite"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "garbage bytes"])
def test_corrupted_tflite_is_a_clear_error(files, tmp_path, damage):
    model = _damaged(files, tmp_path, damage)
    received = r"\d+ bytes" if isinstance(model, bytes) else r"'.*bad\.tflite'"
    match = r"Argument `model` is not a valid \.tflite model \(.*\)\. Received: model=" + received + r"\. .*export it again"
    with pytest.raises(TFLiteFileError, match=match):
        TFLiteModel(model)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("garbage", r"is not a valid \.tflite model \(no TFL3 file identifier\)"),
        ("truncated", r"is not a valid \.tflite model \((error|IndexError|TypeError|ValueError): "),
    ],
)
def test_sparsity_of_a_corrupted_tflite_is_a_clear_error(files, tmp_path, damage, match):
    with pytest.raises(TFLiteFileError, match=match + r".*Received: model='.*bad\.tflite'"):
        tflite_sparsity(_damaged(files, tmp_path, damage))


@pytest.mark.parametrize(
    "labels, match",
    [
        (
            np.arange(10) % 10,
            r"Argument `dataset` does not match the number of classes of model '.*float32_float32\.tflite', "
            r"which has 3 outputs \(class ids 0 to 2\)\. Received: class ids from 0 to 9\.",
        ),
        (
            np.eye(10)[np.arange(10)],
            r"Argument `dataset` does not match .* 3 outputs .*Received: one-hot labels of 10 classes\. "
            r".*build_transfer_model\(data\.num_classes",
        ),
    ],
)
def test_labels_of_more_classes_than_outputs(files, labels, match):
    images, _ = crafted_data(10, 10)
    with pytest.raises(ValueError, match=match):
        evaluate_accuracy(files["float32_float32"], (images, labels), progress=False)


def test_labels_as_a_column_of_class_ids(files):
    images, labels = crafted_data(10, 7)
    result = evaluate_accuracy(files["float32_float32"], (images, labels[:, None]), progress=False)
    assert (result.correct, result.examples) == (7, 10)


def test_an_unbatched_dataset_is_a_clear_error(files):
    images, labels = crafted_data(10, 7)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))  # no .batch(...)
    with pytest.raises(ValueError, match=r"Argument `dataset` must hold batches of shape \(batch, 4, 4, 3\) .*"
                                         r"Received: shape \(4, 4, 3\) \(an unbatched dataset\? batch it"):
        evaluate_accuracy(files["float32_float32"], dataset, progress=False)


def test_images_of_another_size_are_a_clear_error(files):
    runner = TFLiteModel(files["float32_float32"])
    with pytest.raises(ValueError, match=r"Argument `inputs` must hold batches of shape \(batch, 4, 4, 3\) .*"
                                         r"Received: shape \(2, 5, 5, 3\)$"):
        runner.predict(np.zeros((2, 5, 5, 3), np.float32))
