"""Evaluating .tflite files the way they are deployed: with the LiteRT interpreter.

Accuracy is measured on batches (`resize_tensor_input` once, the last short
batch padded rather than re-allocating), with several threads, converting
float images to the model's quantized input type and its quantized outputs
back to floats through each tensor's own (scale, zero_point). Latency is
measured separately at batch 1, as a device would run it: median and 90th
percentile over many invocations after warm-up, for each thread count.
Sparsity is read from the flatbuffer itself (the constant weight tensors of
convolutions and fully-connected layers), so it is the sparsity the file
really holds, whatever the training side claims. Sizes are reported raw and
gzipped, because a flatbuffer does not shrink from zeros alone.

Example:

```python
from edgekeras.evaluate import evaluate_tflite

result = evaluate_tflite("runs/demo/int8.tflite", data.test)
print(result.accuracy, result.gzip_bytes, result.latency[1].median_ms)
```
"""

import dataclasses
import functools
import gzip
import os
import struct
import sys
import time

import numpy as np

__all__ = [
    "TFLiteFileError",
    "TFLiteModel",
    "Accuracy",
    "Latency",
    "Evaluation",
    "evaluate_accuracy",
    "measure_latency",
    "tflite_sparsity",
    "weight_sparsity",
    "gzip_size",
    "file_sizes",
    "evaluate_tflite",
    "progress_bar",
]

# Operators whose filter (input 1) holds the weights that pruning zeroes.
_WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
# Operators that only re-encode a constant (dequantize fp16/int8, densify a
# sparse tensor); the weights are found by following them back.
_PASS_THROUGH_OPS = {"DEQUANTIZE", "DENSIFY"}


def progress_bar(iterable, *, total=None, description="", enabled=True):
    """Wraps `iterable` in a tqdm progress bar on stderr when `enabled`."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stderr, leave=False)


class TFLiteFileError(ValueError):
    """A .tflite file (or buffer) is not a TFLite model: truncated, corrupted or of another format."""


def _tflite_file_error(model, error, argument="model"):
    received = f"{len(model)} bytes" if isinstance(model, (bytes, bytearray)) else repr(os.fspath(model))
    return TFLiteFileError(
        f"Argument `{argument}` is not a valid .tflite model ({error}). Received: {argument}={received}. "
        "The file may be truncated, corrupted or of another format: export it again "
        "(edgekeras.export.export_tflite writes files atomically) or copy it again."
    )


def _check_threads(num_threads, argument="num_threads"):
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(
            f"Argument `{argument}` must be a positive integer or None. "
            f"Received: {argument}={num_threads!r}"
        )


class TFLiteModel:
    """A .tflite model in the LiteRT interpreter that takes and returns floats.

    Quantized (int8/uint8) inputs are quantized from float images with the
    input tensor's scale and zero point, and quantized outputs are
    dequantized, so callers always deal with the same float arrays they would
    feed the Keras model.

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: interpreter threads (None: LiteRT's default).

    Raises:
        FileNotFoundError: `model` is a path to nothing.
        TFLiteFileError: `model` is not a valid TFLite flatbuffer (e.g. a
            truncated or corrupted file).

    Example:

    ```python
    probabilities = TFLiteModel("model.tflite", num_threads=2).predict(images)
    ```
    """

    def __init__(self, model, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        _check_threads(num_threads)
        # LiteRT raises a ValueError for a corrupted flatbuffer that names
        # neither the file nor a fix.
        try:
            if isinstance(model, (bytes, bytearray)):
                self.path = None
                self._interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
            else:
                self.path = os.fspath(model)
                if not os.path.isfile(self.path):
                    raise FileNotFoundError(
                        f"Argument `model` must be a .tflite file or its bytes. "
                        f"Received: model={self.path!r}, which does not exist."
                    )
                self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        except ValueError as error:
            raise _tflite_file_error(model, error) from error
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                "edgekeras evaluates single-input, single-output classifiers. "
                f"Received a model with {len(inputs)} inputs and {len(outputs)} outputs."
            )
        self._input = inputs[0]
        self._output = outputs[0]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_shape = tuple(int(d) for d in self._input["shape_signature"])
        self._batch_size = None

    def _allocate(self, batch_size):
        if batch_size == self._batch_size:
            return
        shape = [batch_size, *self.input_shape[1:]]
        self._interpreter.resize_tensor_input(self._input["index"], shape, strict=False)
        self._interpreter.allocate_tensors()
        self._batch_size = batch_size

    def quantize_input(self, images):
        """Converts float images to the input tensor's dtype."""
        images = np.asarray(images, dtype=np.float32)
        if self.input_dtype == np.float32:
            return images
        scale, zero_point = self._input["quantization"]
        if not scale:
            raise ValueError(f"The model's {self.input_dtype} input has no quantization scale.")
        info = np.iinfo(self.input_dtype)
        quantized = np.round(images / scale + zero_point)
        return np.clip(quantized, info.min, info.max).astype(self.input_dtype)

    def _dequantize_output(self, values):
        if self.output_dtype == np.float32:
            return values.astype(np.float32, copy=True)
        scale, zero_point = self._output["quantization"]
        return (values.astype(np.float32) - zero_point) * scale

    def predict(self, images, batch_size=None):
        """Returns the model's float outputs for a float batch of images.

        Args:
            images: float array `(n, height, width, channels)`.
            batch_size: run in chunks of this size (default: all of `images`
                at once). The last chunk is padded to keep one allocation.

        Returns:
            float32 array `(n, ...)` of outputs, dequantized if needed.
        """
        images = np.asarray(images, dtype=np.float32)
        count = images.shape[0]
        if count == 0:
            raise ValueError("Argument `images` must hold at least one image. Received an empty batch.")
        batch_size = batch_size or self._batch_size or count
        outputs = []
        for start in range(0, count, batch_size):
            chunk = images[start : start + batch_size]
            outputs.append(self._run(chunk, batch_size))
        return np.concatenate(outputs, axis=0)

    def _run(self, chunk, batch_size):
        real = chunk.shape[0]
        if real < batch_size:
            padding = np.zeros((batch_size - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding], axis=0)
        self._allocate(batch_size)
        self._interpreter.set_tensor(self._input["index"], self.quantize_input(chunk))
        self._interpreter.invoke()
        values = self._interpreter.get_tensor(self._output["index"])
        return self._dequantize_output(values[:real])

    def invoke_raw(self, prepared_input):
        """Runs one already-quantized, already-allocated input (for timing)."""
        self._interpreter.set_tensor(self._input["index"], prepared_input)
        self._interpreter.invoke()


@dataclasses.dataclass
class Accuracy:
    """Top-1 accuracy of a model on a dataset."""

    accuracy: float
    correct: int
    examples: int


@dataclasses.dataclass
class Latency:
    """Batch-1 latency of one model with a given number of threads."""

    num_threads: int
    median_ms: float
    p90_ms: float
    runs: int


@dataclasses.dataclass
class Evaluation:
    """Everything `evaluate_tflite` measures about one .tflite file.

    Attributes:
        path: the evaluated file.
        accuracy: top-1 accuracy in [0, 1].
        examples: number of examples evaluated.
        size_bytes: file size.
        gzip_bytes: size after gzip -9.
        sparsity: fraction of zeros in the conv/dense weights, in [0, 1].
        latency: {num_threads: Latency} at batch 1.
        input_dtype: the model's input dtype name.
    """

    path: str
    accuracy: float
    examples: int
    size_bytes: int
    gzip_bytes: int
    sparsity: float
    latency: dict
    input_dtype: str

    def to_dict(self):
        result = dataclasses.asdict(self)
        result["latency"] = {str(k): dataclasses.asdict(v) for k, v in self.latency.items()}
        return result


def _batches(dataset):
    """Yields (images, labels) numpy batches from a dataset or an (x, y) pair."""
    if isinstance(dataset, tuple) and len(dataset) == 2 and isinstance(dataset[0], np.ndarray):
        yield np.asarray(dataset[0], np.float32), np.asarray(dataset[1])
        return
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "Argument `dataset` must yield (images, labels) batches. "
                f"Received a batch of type {type(batch).__name__}."
            )
        yield np.asarray(batch[0], np.float32), np.asarray(batch[1])


def _dataset_batches(dataset):
    try:
        import tensorflow as tf

        if isinstance(dataset, tf.data.Dataset):
            cardinality = int(dataset.cardinality())
            return dataset.as_numpy_iterator(), cardinality if cardinality > 0 else None
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        pass
    return dataset, None


def _check_labels(labels, num_classes, runner):
    """Refuses labels of more classes than the model has outputs (accuracy would be silently wrong)."""
    one_hot = labels.ndim == 2 and labels.shape[1] > 1
    if one_hot and labels.shape[1] == num_classes:
        return
    if not one_hot and (labels.size == 0 or 0 <= labels.min() <= labels.max() < num_classes):
        return
    model = "the model" if runner.path is None else f"model {runner.path!r}"
    received = f"one-hot labels of {labels.shape[1]} classes" if one_hot else (
        f"class ids from {labels.min()} to {labels.max()}"
    )
    raise ValueError(
        f"Argument `dataset` does not match the number of classes of {model}, which has {num_classes} "
        f"outputs (class ids 0 to {num_classes - 1}). Received: {received}. Evaluate the model on the "
        "dataset it was trained for, or build it with that dataset's number of classes "
        "(e.g. build_transfer_model(data.num_classes, ...))."
    )


def evaluate_accuracy(model, dataset, *, num_threads=2, max_examples=None, progress=True):
    """Top-1 accuracy of a .tflite model on a labelled dataset.

    Args:
        model: a .tflite path, its bytes or a `TFLiteModel`.
        dataset: batched `(images, labels)` pairs: a `tf.data.Dataset`, any
            iterable of numpy pairs, or one `(images, labels)` numpy pair.
            Labels are class ids (or one-hot rows).
        num_threads: interpreter threads.
        max_examples: stop after this many examples (None: all).
        progress: show a progress bar.

    Returns:
        An `Accuracy`.

    Raises:
        ValueError: the labels have more classes than the model has
            outputs (e.g. a 5-class model on 10-class data), or the dataset
            yields no `(images, labels)` batches.
        TFLiteFileError: `model` is not a valid .tflite file.

    Example:

    ```python
    evaluate_accuracy("model.tflite", data.test).accuracy
    ```
    """
    runner = model if isinstance(model, TFLiteModel) else TFLiteModel(model, num_threads)
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(
            f"Argument `max_examples` must be a positive integer or None. Received: max_examples={max_examples!r}"
        )
    if isinstance(dataset, tuple) and len(dataset) == 2 and isinstance(dataset[0], np.ndarray):
        iterator, total = _batches(dataset), 1
    else:
        source, total = _dataset_batches(dataset)
        iterator = _batches(source)
    correct = examples = 0
    batch_size = None
    for images, labels in progress_bar(iterator, total=total, description="evaluate", enabled=progress):
        if max_examples is not None:
            keep = max_examples - examples
            images, labels = images[:keep], labels[:keep]
        if images.shape[0] == 0:
            break
        batch_size = batch_size or images.shape[0]
        outputs = runner.predict(images, batch_size=batch_size)
        outputs = outputs.reshape(outputs.shape[0], -1)
        _check_labels(labels, outputs.shape[1], runner)
        predicted = outputs.argmax(axis=1)
        truth = labels.argmax(axis=1) if labels.ndim == 2 and labels.shape[1] > 1 else labels.reshape(-1)
        correct += int(np.sum(predicted == truth))
        examples += int(images.shape[0])
        if max_examples is not None and examples >= max_examples:
            break
    if examples == 0:
        raise ValueError("Argument `dataset` yielded no examples to evaluate.")
    return Accuracy(accuracy=correct / examples, correct=correct, examples=examples)


def measure_latency(model, *, num_threads=1, runs=50, warmup=10, image=None):
    """Median and 90th-percentile latency of one batch-1 invocation.

    Args:
        model: a .tflite path or its bytes.
        num_threads: interpreter threads.
        runs: timed invocations (at least 50 for a stable p90).
        warmup: untimed invocations first (XNNPACK packs weights lazily).
        image: one float input image (default: zeros); latency does not
            depend on the values for these models.

    Returns:
        A `Latency`.

    Example:

    ```python
    measure_latency("model.tflite", num_threads=2).median_ms
    ```
    """
    _check_threads(num_threads)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"Argument `runs` must be a positive integer. Received: runs={runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"Argument `warmup` must be a non-negative integer. Received: warmup={warmup!r}")
    runner = TFLiteModel(model, num_threads)
    shape = runner.input_shape[1:]
    if image is None:
        image = np.zeros(shape, np.float32)
    prepared = runner.quantize_input(np.asarray(image, np.float32)[None, ...])
    runner._allocate(1)
    for _ in range(warmup):
        runner.invoke_raw(prepared)
    times = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        runner.invoke_raw(prepared)
        times[index] = time.perf_counter() - start
    return Latency(
        num_threads=num_threads,
        median_ms=float(np.median(times) * 1000.0),
        p90_ms=float(np.percentile(times, 90) * 1000.0),
        runs=runs,
    )


def _read_flatbuffer(model):
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    else:
        with open(os.fspath(model), "rb") as handle:
            data = handle.read()
    # A flatbuffer is not verified when read from Python: check its file
    # identifier here, and `weight_sparsity` turns a failed read into a
    # TFLiteFileError.
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise _tflite_file_error(model, "no TFL3 file identifier")
    return schema, schema.Model.GetRootAsModel(data, 0), data


def _buffer_array(schema, model, data, tensor):
    """Returns the raw numpy values stored for a constant tensor, or None."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None:
        return None
    dtype = _dtype_table().get(tensor.Type())
    if dtype is None:
        return None
    if buffer.Offset() > 1:
        # Models over 2 GB keep buffers after the flatbuffer, addressed by offset.
        raw = np.frombuffer(data, dtype=np.uint8, count=buffer.Size(), offset=buffer.Offset())
    else:
        if buffer.DataLength() == 0:
            return None
        raw = buffer.DataAsNumpy()
    return np.frombuffer(raw.tobytes(), dtype=dtype)


@functools.cache
def _dtype_table():
    from ai_edge_litert import schema_py_generated as schema

    types = schema.TensorType
    return {
        types.FLOAT32: np.float32,
        types.FLOAT16: np.float16,
        types.INT8: np.int8,
        types.UINT8: np.uint8,
        types.INT32: np.int32,
        types.INT16: np.int16,
        types.FLOAT64: np.float64,
    }


def weight_sparsity(model):
    """Per-weight-tensor sparsity read from a .tflite flatbuffer.

    Follows each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV filter back through DEQUANTIZE and DENSIFY operators to
    the constant it is stored as. A weight counts as zero when its stored
    value equals the tensor's zero point (0 for float and for TFLite's
    symmetric int8 weights). Sparse-encoded tensors (EXPERIMENTAL_SPARSITY)
    store only their non-zero blocks, so their zeros are the dense size minus
    the stored non-zeros.

    Args:
        model: a .tflite path or its bytes.

    Returns:
        A dict `{tensor_name: (zeros, total)}`.

    Raises:
        TFLiteFileError: `model` is not a valid TFLite flatbuffer.
    """
    schema, root, data = _read_flatbuffer(model)
    try:
        return _weight_sparsity(schema, root, data)
    except (struct.error, IndexError, TypeError, ValueError) as error:  # offsets past the end of a damaged file
        raise _tflite_file_error(model, f"{type(error).__name__}: {error}") from error


def _weight_sparsity(schema, root, data):
    op_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = []
    for index in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(index)
        codes.append(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    stats = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        producers = {}
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            for output in operator.OutputsAsNumpy() if operator.OutputsLength() else []:
                producers[int(output)] = operator
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            name = codes[operator.OpcodeIndex()]
            if name not in _WEIGHT_OPS or operator.InputsLength() <= _WEIGHT_OPS[name]:
                continue
            index = int(operator.Inputs(_WEIGHT_OPS[name]))
            for _ in range(4):
                producer = producers.get(index)
                if producer is None or codes[producer.OpcodeIndex()] not in _PASS_THROUGH_OPS:
                    break
                index = int(producer.Inputs(0))
            tensor = subgraph.Tensors(index)
            values = _buffer_array(schema, root, data, tensor)
            if values is None:
                continue
            total = int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else values.size
            zero_point = 0
            quantization = tensor.Quantization()
            if quantization is not None and quantization.ZeroPointLength() == 1:
                zero_point = int(quantization.ZeroPoint(0))
            nonzero = int(np.count_nonzero(values != zero_point))
            tensor_name = tensor.Name().decode("utf-8", "replace")
            stats[tensor_name] = (total - nonzero, total)
    return stats


def tflite_sparsity(model):
    """Fraction of zeros over all conv/dense weights of a .tflite file.

    Args:
        model: a .tflite path or its bytes.

    Returns:
        A float in [0, 1]; 0.0 for a model without such weights.

    Example:

    ```python
    tflite_sparsity("pruned_int8.tflite")  # e.g. 0.74
    ```
    """
    stats = weight_sparsity(model).values()
    total = sum(t for _, t in stats)
    return sum(z for z, _ in stats) / total if total else 0.0


def gzip_size(data):
    """Size in bytes of `data` compressed with gzip at level 9."""
    return len(gzip.compress(bytes(data), compresslevel=9, mtime=0))


def file_sizes(path):
    """Returns `(size_bytes, gzip_bytes)` of a file."""
    with open(os.fspath(path), "rb") as handle:
        data = handle.read()
    return len(data), gzip_size(data)


def evaluate_tflite(
    path,
    dataset,
    *,
    num_threads=2,
    latency_threads=(1, 2),
    latency_runs=50,
    warmup=10,
    max_examples=None,
    progress=True,
):
    """Measures accuracy, size, gzip size, sparsity and latency of a .tflite.

    Args:
        path: the .tflite file.
        dataset: batched `(images, labels)` pairs (see `evaluate_accuracy`).
        num_threads: interpreter threads for the accuracy pass.
        latency_threads: thread counts to time batch-1 latency with.
        latency_runs: timed runs per thread count (>= 50).
        warmup: untimed runs before timing.
        max_examples: evaluate at most this many examples.
        progress: show a progress bar over the batches.

    Returns:
        An `Evaluation`.

    Example:

    ```python
    evaluation = evaluate_tflite("runs/demo/float32.tflite", data.test)
    ```
    """
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 50:
        raise ValueError(
            "Argument `latency_runs` must be an integer >= 50 so that the 90th "
            f"percentile is meaningful. Received: latency_runs={latency_runs!r}"
        )
    for threads in latency_threads:
        _check_threads(threads, "latency_threads")
    runner = TFLiteModel(path, num_threads)
    accuracy = evaluate_accuracy(runner, dataset, max_examples=max_examples, progress=progress)
    size_bytes, gzip_bytes = file_sizes(path)
    latency = {
        threads: measure_latency(path, num_threads=threads, runs=latency_runs, warmup=warmup)
        for threads in latency_threads
    }
    return Evaluation(
        path=os.fspath(path),
        accuracy=accuracy.accuracy,
        examples=accuracy.examples,
        size_bytes=size_bytes,
        gzip_bytes=gzip_bytes,
        sparsity=tflite_sparsity(path),
        latency=latency,
        input_dtype=runner.input_dtype.name,
    )
