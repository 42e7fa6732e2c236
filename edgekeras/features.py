"""Cached activations: run a model's frozen prefix once, train its top on the results.

When only the top of a model trains (transfer learning with a frozen base),
every epoch would recompute the same frozen activations. `cache_features` runs
the frozen prefix (`edgekeras.models.split_model`) over the data once, through
LiteRT/XNNPACK by default (about 4x faster than tf_keras on CPU, checked
against Keras on the first batch), and `array_dataset` feeds the stored
activations back as a `tf.data.Dataset` without copying them into a tensor.

Example:

```python
from edgekeras.features import array_dataset, cache_features
from edgekeras.models import split_model

prefix, top, cut = split_model(model)
features, labels = cache_features(prefix, data.train)
top.fit(array_dataset(features, labels, batch_size=64, shuffle_seed=0), epochs=3)
```
"""

import math

import numpy as np
import tensorflow as tf

from edgekeras.litert import ExportError, TFLiteModel, convert, progress_bar
from edgekeras.memory import release_mapped_pages

__all__ = ["array_dataset", "cache_features"]


class _GrowingArray:
    """Rows appended to one array that grows in place.

    `ndarray.resize` reallocates the block, which for large blocks remaps
    pages instead of copying them, so the cache is never held twice, unlike a
    list of batches and its concatenation.
    """

    def __init__(self, dtype, capacity=0):
        self._dtype = dtype
        self._capacity = capacity
        self._array = None
        self._size = 0

    def append(self, rows):
        if self._array is None:
            self._array = np.empty((max(self._capacity, len(rows)), *rows.shape[1:]), self._dtype)
        end = self._size + len(rows)
        if end > len(self._array):
            self._array.resize((max(end, 2 * len(self._array)), *self._array.shape[1:]), refcheck=False)
        self._array[self._size : end] = rows
        self._size = end

    def finish(self):
        """Returns the rows as one array (trimmed in place to the rows appended)."""
        self._array.resize((self._size, *self._array.shape[1:]), refcheck=False)
        return self._array


def _check_against_keras(prefix, images, output):
    expected = prefix(images, training=False).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(expected - output).max())
    if difference > 1e-3 * scale:
        raise ExportError(
            f"The LiteRT copy of the frozen prefix differs from Keras by {difference:.3g}; "
            'set train.cache_engine = "keras".'
        )


def cache_features(prefix, dataset, *, engine="litert", passes=1, num_threads=2, progress=True, description="cache"):
    """Runs the frozen `prefix` over a labelled dataset once; returns arrays.

    Args:
        prefix: the frozen part of the model (from `split_model`).
        dataset: batched `(images, labels)` pipeline.
        engine: "litert" (convert to float32 .tflite and run with XNNPACK,
            checked against Keras on the first batch) or "keras".
        passes: passes over `dataset` (each a new augmentation, if any).
        num_threads: LiteRT threads.
        progress: show a progress bar.
        description: progress-bar label.

    Returns:
        `(features, labels)` numpy arrays; features are float16, which halves
        the memory of a multi-GB cache (its rounding, ~1e-3 relative, is far
        below what int8 deployment later adds).

    Raises:
        ExportError: the LiteRT copy of `prefix` does not compute what Keras does.
        ValueError: `dataset` yielded no batches.

    Example:

    ```python
    features, labels = cache_features(prefix, data.train, engine="keras", progress=False)
    ```
    """
    runner = TFLiteModel(convert(prefix, "float32"), num_threads=num_threads) if engine == "litert" else None
    total = int(dataset.cardinality()) if int(dataset.cardinality()) > 0 else None
    features = labels = None
    for _ in range(passes):
        for images, batch_labels in progress_bar(
            dataset.as_numpy_iterator(), total=total, description=description, enabled=progress
        ):
            if runner is None:
                output = prefix(images, training=False).numpy()
            else:
                output = runner.predict(images, batch_size=images.shape[0] if features is None else None)
                if features is None:
                    _check_against_keras(prefix, images, output)
            if features is None:
                # A known length sizes the buffer at once; the last batch may be short.
                capacity = total * passes * len(output) if total is not None else 0
                features = _GrowingArray(np.float16, capacity)
                labels = _GrowingArray(batch_labels.dtype, capacity)
            features.append(output)
            labels.append(batch_labels)
    if features is None:
        raise ValueError(f"Argument `dataset` yielded no batches to cache. Received: dataset={dataset!r}")
    return features.finish(), labels.finish()


def array_dataset(features, labels, batch_size, shuffle_seed=None):
    """Batches of in-memory arrays as a `tf.data.Dataset`, reshuffled each epoch.

    Unlike `from_tensor_slices`, this neither copies the arrays into a
    tensor (cached activations can be several GB) nor hits the 2 GB limit of
    a serialized dataset graph: a generator slices one batch at a time. The
    pages of a memory-mapped `features` array are released after each
    batch is copied out, so that an epoch over a cache of GBs does not leave
    it resident.

    Args:
        features: an array of examples (e.g. from `cache_features`), any
            dtype; batches come out as float32.
        labels: an array of as many labels.
        batch_size: examples per batch.
        shuffle_seed: None keeps the order; a seed reshuffles every epoch,
            reproducibly.

    Returns:
        A `tf.data.Dataset` of `(features, labels)` batches with a known
        cardinality.

    Example:

    ```python
    top.fit(array_dataset(features, labels, batch_size=64, shuffle_seed=0), epochs=3)
    ```
    """
    count = len(features)
    batches = math.ceil(count / batch_size)
    epoch = [0]

    def generate():
        if shuffle_seed is None:
            order = np.arange(count)
        else:
            order = np.random.default_rng((shuffle_seed, epoch[0])).permutation(count)
            epoch[0] += 1
        for start in range(0, count, batch_size):
            index = np.sort(order[start : start + batch_size])
            batch = features[index].astype(np.float32)
            # Each read maps whole page-cache folios (up to MBs) around the
            # rows, so without this an epoch leaves a memory-mapped cache of
            # GBs resident; the pages stay in the page cache all the same.
            release_mapped_pages(features)
            yield batch, labels[index]

    signature = (
        tf.TensorSpec((None, *features.shape[1:]), tf.float32),
        tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)),
    )
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2)
