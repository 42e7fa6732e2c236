"""Evaluating .tflite files the way they are deployed: with the LiteRT interpreter.

Accuracy is measured on batches by `TFLiteModel` (edgekeras.runtime).
Latency is measured separately at batch 1, as a device would run it
(`edgekeras.runtime.measure_latency`): percentiles over many invocations
after warm-up, for each thread count. Sparsity and sizes come from the flatbuffer itself
(edgekeras.litert.flatbuffer).

Example:

```python
from edgekeras.litert import evaluate_tflite

result = evaluate_tflite("runs/demo/int8.tflite", data.test)
print(result.accuracy, result.gzip_bytes, result.latency[1].median_ms)
```
"""

import dataclasses
import os

import numpy as np

from edgekeras.arguments import check_positive_int
from edgekeras.data import check_class_ids
from edgekeras.litert.flatbuffer import file_sizes, tflite_sparsity
from edgekeras.runtime import Latency, TFLiteModel, check_threads, measure_latency, progress_bar

__all__ = [
    "Accuracy",
    "Latency",
    "Evaluation",
    "evaluate_accuracy",
    "measure_latency",
    "evaluate_tflite",
]

_LABELS_FIX = (
    "Evaluate the model on the dataset it was trained for, or build it with that dataset's number of classes "
    "(e.g. build_transfer_model(data.num_classes, ...))."
)


@dataclasses.dataclass
class Accuracy:
    """Top-1 accuracy of a model on a dataset.

    Attributes:
        accuracy: `correct / examples`, in [0, 1].
        correct: examples whose top-1 prediction is their label.
        examples: examples evaluated.
    """

    accuracy: float
    correct: int
    examples: int


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
        """Returns the fields as a JSON-able dict (latency keyed by the thread count as a string)."""
        result = dataclasses.asdict(self)
        result["latency"] = {str(k): dataclasses.asdict(v) for k, v in self.latency.items()}
        return result


def _inputs(x):
    """A batch's inputs as numpy: one float array, or a list/dict of arrays for a multi-input model."""
    if isinstance(x, dict):
        return {key: _inputs(value) for key, value in x.items()}
    if isinstance(x, (list, tuple)):
        return [_inputs(value) for value in x]
    array = np.asarray(x)
    return array.astype(np.float32) if array.dtype.kind in "fiub" and array.dtype != np.float32 else array


def _first(x):
    """The first array of a batch's inputs (they all hold the same number of examples)."""
    if isinstance(x, dict):
        return _first(next(iter(x.values())))
    return _first(x[0]) if isinstance(x, list) else x


def _head(x, count):
    """The first `count` examples of every input array."""
    if isinstance(x, dict):
        return {key: _head(value, count) for key, value in x.items()}
    return [_head(value, count) for value in x] if isinstance(x, list) else x[:count]


def _batches(dataset):
    """Yields (inputs, labels) numpy batches from a dataset or an (x, y) pair."""
    if isinstance(dataset, tuple) and len(dataset) == 2 and isinstance(dataset[0], (np.ndarray, dict)):
        yield _inputs(dataset[0]), np.asarray(dataset[1])
        return
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "Argument `dataset` must yield (images, labels) batches. "
                f"Received a batch of type {type(batch).__name__}."
            )
        yield _inputs(batch[0]), np.asarray(batch[1])


def _dataset_batches(dataset):
    try:
        import tensorflow as tf

        if isinstance(dataset, tf.data.Dataset):
            cardinality = int(dataset.cardinality())
            return dataset.as_numpy_iterator(), cardinality if cardinality > 0 else None
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        pass
    return dataset, None


def _true_classes(labels, num_classes, runner):
    """The class id of each label, once checked against the model's outputs (accuracy would be silently wrong)."""
    one_hot = labels.ndim == 2 and labels.shape[1] > 1
    check_class_ids(
        labels, num_classes, "dataset", _LABELS_FIX, one_hot=one_hot,
        model="the model" if runner.path is None else f"model {runner.path!r}",
    )
    return labels.argmax(axis=1) if one_hot else labels.reshape(-1)


def evaluate_accuracy(model, dataset, *, num_threads=2, max_examples=None, progress=True):
    """Top-1 accuracy of a .tflite model on a labelled dataset.

    Args:
        model: a .tflite path, its bytes or a `TFLiteModel`.
        dataset: batched `(images, labels)` pairs: a `tf.data.Dataset`, any
            iterable of numpy pairs, or one `(images, labels)` numpy pair.
            For a model with several inputs, images is a tuple of arrays in
            the file's input order or a dict keyed by input name (e.g. a
            dataset yielding `({"image": x}, y)`). Labels are class ids (or
            one-hot rows).
        num_threads: interpreter threads.
        max_examples: stop after this many examples (None: all).
        progress: show a progress bar.

    Returns:
        An `Accuracy`.

    Raises:
        ValueError: the labels have more classes than the model has
            outputs (e.g. a 5-class model on 10-class data), the images are
            not batches of the model's input shape (an unbatched dataset), or
            the dataset yields no `(images, labels)` batches.
        TFLiteFileError: `model` is not a valid .tflite file.

    Example:

    ```python
    evaluate_accuracy("model.tflite", data.test).accuracy
    ```
    """
    runner = model if isinstance(model, TFLiteModel) else TFLiteModel(model, num_threads)
    check_positive_int(max_examples, "max_examples", allow_none=True)
    if isinstance(dataset, tuple) and len(dataset) == 2 and isinstance(dataset[0], (np.ndarray, dict)):
        iterator, total = _batches(dataset), 1
    else:
        source, total = _dataset_batches(dataset)
        iterator = _batches(source)
    correct = examples = 0
    batch_size = None
    for images, labels in progress_bar(iterator, total=total, description="evaluate", enabled=progress):
        if max_examples is not None:
            keep = max_examples - examples
            images, labels = _head(images, keep), labels[:keep]
        count = _first(images).shape[0]
        if count == 0:
            break
        if batch_size is None:
            runner.check_inputs(images, argument="dataset")
        batch_size = batch_size or count
        outputs = runner.predict(images, batch_size=batch_size)
        outputs = outputs.reshape(outputs.shape[0], -1)
        truth = _true_classes(labels, outputs.shape[1], runner)
        predicted = outputs.argmax(axis=1)
        correct += int(np.sum(predicted == truth))
        examples += int(count)
        if max_examples is not None and examples >= max_examples:
            break
    if examples == 0:
        raise ValueError("Argument `dataset` yielded no examples to evaluate.")
    return Accuracy(accuracy=correct / examples, correct=correct, examples=examples)


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
        check_threads(threads, "latency_threads")
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
