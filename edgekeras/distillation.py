"""Knowledge distillation from a float teacher inside a plain `model.fit`.

A `Distiller` wrapper with a custom `train_step` would make `fit` train the
wrapper and hide the user's model from pruning callbacks (`MagnitudePruning`,
TFMOT's `UpdatePruningStep`), checkpoints and exports. So the teacher travels in
the labels instead: each `y_true` row is `[label, teacher probabilities...]`,
float32 `(batch, 1 + num_classes)`, which `DistillationLoss` and `LabelAccuracy`
unpack, while `fit` trains the student itself with the stock `train_step`.

`teacher_outputs` and `pack_labels` run the teacher once over fixed data and
cache its probabilities; `with_teacher` calls it on each batch inside
`dataset.map`, for data that changes every epoch (random augmentation). Students
and teachers output softmax probabilities, not logits. Validation data may keep
plain labels: the loss is then sparse categorical cross-entropy.
"""

import dataclasses
import numbers

import numpy as np
import tensorflow as tf

from edgekeras.arguments import check_positive_int
from edgekeras.backend import KERAS_MODULES, check_model
from edgekeras.compat import keras
from edgekeras.memory import release_mapped_pages

__all__ = [
    "PHASES", "pack_labels", "teacher_outputs", "with_teacher", "is_packed", "DistillationLoss", "LabelAccuracy",
    "Keras3DistillationLoss", "Keras3LabelAccuracy", "Distillation",
]

# The training phases distillation can take part in.
PHASES = ("channels", "prune", "qat")
_EPSILON = 1e-7  # probabilities are clipped to [_EPSILON, 1] before their log is taken
_SUM_TOLERANCE = 1e-2  # how far from 1 a row of teacher probabilities may sum (float16 teachers round)


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < float("inf"):
        raise ValueError(f"Argument `temperature` must be a finite number > 0. Received: temperature={temperature!r}")
    return float(temperature)


def _check_weight(weight):
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight <= 1:
        raise ValueError(f"Argument `weight` (the share of the teacher term) must be in [0, 1]. Received: weight={weight!r}")
    return float(weight)


def pack_labels(labels, teacher_outputs):
    """Packs class ids and the teacher's probabilities into one label array.

    Args:
        labels: integer class ids, shape `(N,)` or `(N, 1)`.
        teacher_outputs: the teacher's softmax probabilities, shape
            `(N, num_classes)`, as `teacher_outputs(teacher, x)` returns them.

    Returns:
        A float32 array of shape `(N, 1 + num_classes)`, rows `[label, teacher
        probabilities...]`. Raises ValueError on mismatched shapes, labels that
        are not class ids, or logits instead of probabilities.

    Example:

    ```python
    pack_labels(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]))
    # array([[2. , 0.1, 0.2, 0.7], [0. , 0.8, 0.1, 0.1]], dtype=float32)
    ```
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(teacher_outputs, dtype=np.float32)
    labels = labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1:
        raise ValueError(f"Argument `labels` must have shape (N,) or (N, 1). Received: labels of shape {labels.shape}")
    if probabilities.ndim != 2:
        raise ValueError(f"Argument `teacher_outputs` must have shape (N, num_classes). Received: shape {probabilities.shape}")
    if len(probabilities) != len(labels):
        raise ValueError(
            f"Argument `teacher_outputs` must have one row per label. Received: {len(probabilities)} rows for {len(labels)} labels"
        )
    num_classes = probabilities.shape[1]
    integral = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and np.all(labels == np.round(labels)))
    if not integral or (labels.size and not (labels.min() >= 0 and labels.max() < num_classes)):
        raise ValueError(
            f"Argument `labels` must be integer class ids in [0, {num_classes}) for a teacher with {num_classes} classes. "
            f"Received: labels of dtype {labels.dtype}: {labels[:5].tolist()}..."
        )
    sums = probabilities.sum(axis=1)
    if probabilities.size and not (probabilities.min() >= 0 and np.all(np.abs(sums - 1) <= _SUM_TOLERANCE)):
        raise ValueError(
            "Argument `teacher_outputs` must hold probabilities (softmax outputs: non-negative rows summing to 1), not logits. "
            f"Received: values in [{probabilities.min():.3g}, {probabilities.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]"
        )
    return np.column_stack([labels, probabilities]).astype(np.float32)


def teacher_outputs(teacher, x, batch_size=256):
    """Runs the teacher once over `x` and returns its probabilities, for `pack_labels`.

    Args:
        teacher: a tf_keras or Keras 3 model that outputs softmax probabilities.
        x: the inputs, an array, or a finite batched `tf.data.Dataset` of `x`
            or `(x, y)` elements, in the order of the labels they will be
            packed with (shuffle after packing, not before).
        batch_size: the batch size for array inputs.

    Returns:
        A float32 array of shape `(N, num_classes)`, the teacher's predictions
        in inference mode (dropout off, batch statistics frozen).

    Example:

    ```python
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    probabilities = teacher_outputs(teacher, np.zeros((10, 4), "float32"))  # shape (10, 3)
    ```
    """
    check_model(teacher, "teacher")
    check_positive_int(batch_size, "batch_size")
    if isinstance(x, tf.data.Dataset):
        outputs = teacher.predict(x, verbose=0)
    else:
        outputs = _predict_in_batches(teacher, x, int(batch_size))
    if isinstance(outputs, (list, tuple, dict)) or np.ndim(outputs) != 2:
        received = f"{len(outputs)} outputs" if isinstance(outputs, (list, tuple, dict)) else f"output shape {np.shape(outputs)}"
        raise ValueError(f"Argument `teacher` must have one (batch, num_classes) output of probabilities. Received: {received}")
    return np.asarray(outputs, dtype=np.float32)


def _predict_in_batches(teacher, x, batch_size):
    """`teacher.predict(x)` for arrays, converting one batch at a time.

    `predict` first copies array inputs whole into one float32 tensor: 2.9 GB
    more for the default recipe's 90,000 cached float16 activations. The
    pages of memory-mapped inputs are released after each batch, so that
    the pass does not leave the whole cache resident.
    """
    count = len(tf.nest.flatten(x)[0])
    batches = []
    for start in range(0, count, batch_size):
        batch = teacher.predict_on_batch(tf.nest.map_structure(lambda array: array[start:start + batch_size], x))
        tf.nest.map_structure(release_mapped_pages, x)
        if isinstance(batch, (list, tuple, dict)):
            return batch  # several outputs: the caller's check says so
        batches.append(np.asarray(batch))
    return np.concatenate(batches) if batches else teacher.predict(x, verbose=0)


def with_teacher(dataset, teacher):
    """Packs the teacher's probabilities into each batch's labels on the fly.

    The teacher runs in inference mode inside `dataset.map`, on the host CPU,
    so each epoch's augmented images get their own teacher outputs.

    Args:
        dataset: a batched `tf.data.Dataset` of `(x, y)` or
            `(x, y, sample_weight)`, `y` holding class ids of shape `(batch,)`
            or `(batch, 1)`.
        teacher: a tf_keras or Keras 3 model that outputs softmax probabilities.

    Returns:
        A `tf.data.Dataset` of `(x, packed_y)` or `(x, packed_y,
        sample_weight)`, `packed_y` a float32 `(batch, 1 + num_classes)`.

    Example:

    ```python
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    batches = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4), "float32"), np.arange(8) % 3)).batch(4)
    packed = with_teacher(batches, teacher)  # y: (4, 4) float32 batches
    ```
    """
    check_model(teacher, "teacher")
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"Argument `dataset` must be a tf.data.Dataset. Received: dataset={dataset!r}")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(f"Argument `dataset` must yield (x, y) or (x, y, sample_weight) batches. Received: element_spec={spec!r}")
    label = spec[1]
    rank = label.shape.rank if isinstance(label, tf.TensorSpec) else -1
    if rank is not None and (rank not in (1, 2) or (rank == 2 and label.shape[-1] not in (1, None))):
        raise ValueError(f"Argument `dataset` must yield class ids `y` of shape (batch,) or (batch, 1), not one-hot. Received: {label!r}")

    def pack(x, y, *sample_weight):
        labels = tf.reshape(tf.cast(y, tf.float32), [-1, 1])
        return (x, tf.concat([labels, tf.cast(teacher(x, training=False), tf.float32)], axis=-1), *sample_weight)

    return dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def is_packed(y, num_classes):
    """Returns True if `y` holds packed labels for `num_classes` classes.

    Args:
        y: an array, tensor or `tf.TensorSpec` of batched labels.
        num_classes: the number of classes of the model.

    Example:

    ```python
    assert is_packed(np.zeros((8, 4)), num_classes=3)
    assert not is_packed(tf.TensorSpec((None,), tf.int64), num_classes=3)
    ```
    """
    shape = tf.TensorShape(y.shape if hasattr(y, "shape") else np.shape(y))
    return shape.rank is not None and shape.rank >= 2 and shape[-1] == num_classes + 1


class _DistillationLossBase:
    """Cross-entropy on the labels plus the KL divergence from the teacher.

    With packed `y_true`, the loss per example is `(1 - weight) * CE(label, p)
    + weight * T**2 * KL(softmax(log(q) / T) || softmax(log(p) / T))`, `p` the
    student's and `q` the teacher's probabilities, `T` the temperature (`T**2`
    keeps the gradients of both terms alike, Hinton et al. 2015). With plain
    labels (rank 1 or last dimension 1) it is sparse categorical cross-entropy.
    `DistillationLoss` is the tf_keras class, `Keras3DistillationLoss` the
    Keras 3 one (TensorFlow backend); `Distillation.loss(keras_module)` picks.

    Args:
        temperature: softens both distributions before comparing them, > 0.
        weight: the share of the teacher term, in [0, 1].
        name: the loss name.
        reduction: how the per-example losses are reduced (default: the
            Keras' own mean over the batch).

    Example:

    ```python
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    student.compile("adam", DistillationLoss(temperature=4.0, weight=0.5), metrics=[LabelAccuracy()])
    packed = pack_labels(np.arange(8) % 3, np.full((8, 3), 1 / 3))
    student.fit(np.zeros((8, 4), "float32"), packed, epochs=1, verbose=0)
    ```
    """

    _keras = None  # the Keras module of the subclass

    def __init__(self, temperature=4.0, weight=0.5, name="distillation", reduction=None):
        super().__init__(reduction=reduction if reduction is not None else _default_reduction(self._keras), name=name)
        self.temperature = _check_temperature(temperature)
        self.weight = _check_weight(weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        columns = y_true.shape[-1] if y_true.shape.rank else None
        crossentropy = self._keras.losses.sparse_categorical_crossentropy
        if y_true.shape.rank == 1 or columns == 1:
            return crossentropy(y_true, y_pred)
        classes = y_pred.shape[-1]
        if columns is not None and classes is not None and columns != classes + 1:
            raise ValueError(
                f"`DistillationLoss` needs `y_true` packed as [label, teacher probabilities...], 1 + {classes} columns for "
                f"{classes} classes, or plain labels. Received: y_true with {columns} columns; use `pack_labels` or `with_teacher`."
            )
        if columns is None:
            return tf.cond(tf.shape(y_true)[-1] > 1, lambda: self._distill(y_true, y_pred), lambda: crossentropy(y_true[..., :1], y_pred))
        return self._distill(y_true, y_pred)

    def _distill(self, y_true, y_pred):
        hard = self._keras.losses.sparse_categorical_crossentropy(y_true[..., :1], y_pred)
        log_teacher = tf.nn.log_softmax(tf.math.log(tf.clip_by_value(y_true[..., 1:], _EPSILON, 1.0)) / self.temperature)
        log_student = tf.nn.log_softmax(tf.math.log(tf.clip_by_value(y_pred, _EPSILON, 1.0)) / self.temperature)
        soft = tf.reduce_sum(tf.exp(log_teacher) * (log_teacher - log_student), axis=-1)
        return (1.0 - self.weight) * hard + self.weight * self.temperature**2 * soft

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "weight": self.weight}


def _default_reduction(library):
    # tf_keras reduces with Reduction.AUTO, Keras 3 with "sum_over_batch_size": the same mean.
    reduction = getattr(library.losses, "Reduction", None)
    return reduction.AUTO if reduction is not None else "sum_over_batch_size"


class _LabelAccuracyBase:
    """Sparse categorical accuracy on the label column of packed labels.

    Plain labels are read as they are. Named `"accuracy"` by default, so
    `History` keeps its `accuracy` and `val_accuracy` keys. `LabelAccuracy`
    is the tf_keras class, `Keras3LabelAccuracy` the Keras 3 one.

    Args:
        name: the metric name.
        dtype: the dtype of the metric's result.

    Example:

    ```python
    metric = LabelAccuracy()
    metric.update_state(pack_labels([1, 0], [[0.2, 0.8], [0.3, 0.7]]), [[0.1, 0.9], [0.6, 0.4]])
    assert metric.result().numpy() == 1.0
    ```
    """

    _keras = None

    def __init__(self, name="accuracy", dtype=None):
        accuracy = self._keras.metrics.sparse_categorical_accuracy

        def label_accuracy(y_true, y_pred):
            rank = len(y_true.shape) if isinstance(y_true.shape, tuple) else y_true.shape.rank  # Keras 3 shapes are tuples
            return accuracy(y_true[..., :1] if (rank or 0) >= 2 else y_true, y_pred)

        super().__init__(label_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _classes_for(library, prefix):
    """The loss and metric classes of one Keras, registered for saving under package "edgekeras"."""
    register = library.saving.register_keras_serializable(package="edgekeras")
    loss = register(type(f"{prefix}DistillationLoss", (_DistillationLossBase, library.losses.Loss),
                         {"_keras": library, "__doc__": _DistillationLossBase.__doc__, "__module__": __name__}))
    metric = register(type(f"{prefix}LabelAccuracy", (_LabelAccuracyBase, library.metrics.MeanMetricWrapper),
                           {"_keras": library, "__doc__": _LabelAccuracyBase.__doc__, "__module__": __name__}))
    return loss, metric


# One pair per Keras a model may come from; each is that Keras' own Loss and Metric.
_CLASSES = {library: _classes_for(library, prefix) for library, prefix in zip(KERAS_MODULES, ("", "Keras3"))}
DistillationLoss, LabelAccuracy = _CLASSES[KERAS_MODULES[0]]
Keras3DistillationLoss, Keras3LabelAccuracy = _CLASSES[KERAS_MODULES[1]]


@dataclasses.dataclass(frozen=True)
class Distillation:
    """How to distil a teacher into the student: the settings `EdgeTrainer` takes.

    Args:
        temperature: the `DistillationLoss` temperature, > 0.
        weight: the share of the teacher term, in [0, 1].
        phases: the training phases that distil, a non-empty subset of `PHASES`.

    Example:

    ```python
    settings = Distillation(temperature=2.0, weight=0.7, phases=("qat",))
    loss = settings.loss()  # DistillationLoss(temperature=2.0, weight=0.7)
    ```
    """

    temperature: float = 4.0
    weight: float = 0.5
    phases: tuple = PHASES

    def __post_init__(self):
        _check_temperature(self.temperature)
        _check_weight(self.weight)
        phases = self.phases
        if not isinstance(phases, (tuple, list)) or not phases or any(p not in PHASES for p in phases) or len(set(phases)) < len(phases):
            raise ValueError(f"Argument `phases` must be a non-empty tuple of distinct phases from {PHASES}. Received: phases={phases!r}")
        object.__setattr__(self, "phases", tuple(phases))

    def loss(self, keras_module=keras):
        """Returns the distillation loss of these settings for a model of `keras_module` (tf_keras by default)."""
        return _CLASSES[keras_module][0](temperature=self.temperature, weight=self.weight)

    def metrics(self, keras_module=keras):
        """Returns `[LabelAccuracy()]` for a model of `keras_module`: the phase's `accuracy`."""
        return [_CLASSES[keras_module][1]()]
