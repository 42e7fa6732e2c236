"""`EdgeTrainer.fit`'s checks of its training and validation data against the model and the loss.

Each check reads one batch at most (the first of a dataset, via `take(1)`;
item 0 of a `keras.utils.Sequence`; numpy arrays and tensors as given) and
fails before the first epoch with the argument, what was received and the fix,
where Keras or LiteRT would fail later with a traceback: unbatched datasets,
inputs that do not match the model's inputs (dict keys, count, image size,
channels), labels whose format does not fit the loss (one-hot rows with a
sparse loss, class ids with a categorical one) and class ids beyond the
classifier's outputs. Python generators are not read: a batch taken here would
be missing from training.
"""

import numpy as np
import tensorflow as tf

from edgekeras.backend import KERAS_MODULES, for_model
from edgekeras.compat import keras
from edgekeras.data import check_class_ids

__all__ = ["check_inputs"]

_LABELS_FIX = (
    "Build the model with the data's number of classes (e.g. build_transfer_model(data.num_classes, ...)) "
    "or train it on the data it was built for."
)
# The losses of both Kerases a model may come from (tf_keras, Keras 3).
_SPARSE_LOSSES = tuple(library.losses.SparseCategoricalCrossentropy for library in KERAS_MODULES)
_SPARSE_FUNCTIONS = tuple(library.losses.sparse_categorical_crossentropy for library in KERAS_MODULES)
_CATEGORICAL_LOSSES = tuple(
    kind for library in KERAS_MODULES for kind in (library.losses.CategoricalCrossentropy, library.losses.CategoricalFocalCrossentropy)
)
_CATEGORICAL_FUNCTIONS = tuple(
    function for library in KERAS_MODULES
    for function in (library.losses.categorical_crossentropy, library.losses.categorical_focal_crossentropy)
)


class _Sample:
    """The inputs and labels of one batch of an argument, and how to talk about them."""

    def __init__(self, argument, source, inputs, labels, batched, label_argument):
        self.argument = argument  # the argument named in messages: "x" or "validation_data"
        self.source = source  # the argument's value, described in "Received: ..."
        self.inputs = inputs
        self.labels = labels
        self.batched = batched  # a dataset or Sequence: each item should be a batch
        self.label_argument = label_argument  # "y" for arrays given as x, y; else `argument`

    @property
    def where(self):
        return " in the first batch" if self.batched else ""

    @property
    def dataset(self):
        return isinstance(self.source, tf.data.Dataset)

    def received(self):
        return f"{self.argument}={_describe(self.source)}"


def _describe(value, depth=0):
    """A short description of data: a dataset's repr (its element spec), arrays by their shapes."""
    if isinstance(value, tf.data.Dataset):
        return repr(value)
    if isinstance(value, keras.utils.Sequence):
        return f"<{type(value).__name__} of {len(value)} batches>"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {_shape(value)}"
    if isinstance(value, dict) and depth < 2:
        return "{" + ", ".join(f"{key!r}: {_describe(item, depth + 1)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)) and depth < 2:
        items = ", ".join(_describe(item, depth + 1) for item in value)
        return f"[{items}]" if isinstance(value, list) else f"({items})"
    return type(value).__name__


def _shape(value):
    shape = value.shape
    if isinstance(shape, tf.TensorShape):
        return None if shape.rank is None else tuple(shape.as_list())
    return tuple(shape)


def _unpack(batch):
    """`(inputs, labels)` of a batch, as Keras reads it: a tuple of 1 to 3 items is (x, y, sample_weight)."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _has_shapes(inputs):
    if isinstance(inputs, dict):
        return bool(inputs) and all(hasattr(item, "shape") for item in inputs.values())
    if isinstance(inputs, (list, tuple)):
        return bool(inputs) and all(hasattr(item, "shape") for item in inputs)
    return hasattr(inputs, "shape")


def _sample(argument, x, y, label_argument):
    """The first batch of `x` (or `x`, `y` themselves for arrays), or None when it cannot be read cheaply."""
    if isinstance(x, tf.data.Dataset):
        batch = next(iter(x.take(1)), None)
        if batch is None:
            return None
        return _Sample(argument, x, *_unpack(batch), True, argument)
    if isinstance(x, keras.utils.Sequence):
        if len(x) == 0:
            return None
        return _Sample(argument, x, *_unpack(x[0]), True, argument)
    if x is None or not _has_shapes(x):
        return None  # generators: a batch read here would be missing from training
    return _Sample(argument, x, x, y, False, label_argument)


def _matched_inputs(model, sample):
    """`[(input name, model input shape, data)]`, the data matched to the model's inputs as Keras matches them."""
    names = for_model(model).input_names(model)
    inputs = sample.inputs
    if isinstance(inputs, dict):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(
                f"Argument `{sample.argument}` yields a dict with keys {sorted(inputs)}, but model {model.name!r} "
                f"has inputs named {names} (missing: {missing}). Received: {sample.received()}. Key the dict by "
                "the model's input names, or name each input after its key: keras.Input(shape, name=key)."
            )
        data = [inputs[name] for name in names]
    else:
        data = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(data) != len(names):
            raise ValueError(
                f"Argument `{sample.argument}` yields {len(data)} input(s), but model {model.name!r} has "
                f"{len(names)} inputs {names}. Received: {sample.received()}. Give one array per input: a tuple "
                "in the model's input order or a dict keyed by input name."
            )
    return list(zip(names, for_model(model).input_shapes(model), data))


def _fits(data, ref):
    """Whether a data shape fits a model shape, dimension by dimension (None fits anything)."""
    return len(data) == len(ref) and all(d is None or r is None or d == r for d, r in zip(data, ref))


def _check_unbatched(model, sample, name, ref, data):
    if sample.batched and (_fits(data, ref[1:]) or (ref[-1] == 1 and _fits(data, ref[1:-1]))):
        fix = (
            "Batch it: dataset.batch(64)." if sample.dataset
            else f"Make its __getitem__ return a batch (arrays of shape (batch, {', '.join(map(str, data))}))."
        )
        raise ValueError(
            f"Argument `{sample.argument}` yields unbatched examples of shape {data}, but input {name!r} of "
            f"model {model.name!r} takes batches of shape {ref}. Received: {sample.received()}. {fix}"
        )


def _check_image(model, sample, name, ref, data):
    """Image size and channels of a 4-D input (batch, height, width, channels)."""
    size, expected = data[1:3], ref[1:3]
    how = (
        "dataset.map(lambda image, label: (tf.image.resize(image, {0}), label))" if sample.dataset
        else "tf.image.resize(x, {0})"
    )
    if not _fits(size, expected):
        pixels = "x".join(map(str, expected))
        raise ValueError(
            f"Argument `{sample.argument}` yields images of {size[0]}x{size[1]} pixels{sample.where}, but model "
            f"{model.name!r} was built for {pixels} (input {name!r} of shape {ref}). Received: "
            f"{sample.received()}. Resize the images to {pixels} ({how.format(expected)}) or build the model "
            f"for the data's images (input_shape={data[1:]})."
        )
    channels, wanted = data[3], ref[3]
    if not _fits((channels,), (wanted,)):
        convert = {(1, 3): "tf.image.grayscale_to_rgb", (3, 1): "tf.image.rgb_to_grayscale"}.get((channels, wanted))
        fix = f"Convert them with {convert}" if convert else f"Give images of {wanted} channels"
        raise ValueError(
            f"Argument `{sample.argument}` yields images of {channels} channel{'s' if channels != 1 else ''}"
            f"{sample.where}, but model {model.name!r} takes {wanted} (input {name!r} of shape {ref}). Received: {sample.received()}. "
            f"{fix}, or build the model for {channels}-channel images (input_shape={data[1:]})."
        )


def _check_input_shape(model, sample, name, ref, data):
    if data is None or len(ref) == 0:
        return
    expanded = len(data) == len(ref) - 1 and ref[-1] == 1 and _fits(data[1:], ref[1:-1])  # Keras adds the 1
    squeezed = len(data) == len(ref) + 1 and data[-1] == 1 and _fits(data[1:-1], ref[1:])  # Keras drops the 1
    if expanded or squeezed or _fits(data[1:], ref[1:]):
        return  # what Keras accepts is not questioned: a batch of one scalar may look like one example
    _check_unbatched(model, sample, name, ref, data)
    if len(data) == len(ref) == 4:
        _check_image(model, sample, name, ref, data)
    raise ValueError(
        f"Argument `{sample.argument}` yields inputs of shape {data}{sample.where}, but input {name!r} of "
        f"model {model.name!r} takes shape {ref}. Received: {sample.received()}. Give examples of shape "
        f"{ref[1:]}, or build the model for the data (keras.Input(shape={data[1:]}))."
    )


def _loss_kind(loss):
    """"sparse", "categorical" or None (another loss, or a custom one: its labels are its own business)."""
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except (ValueError, TypeError):
            return None
    if isinstance(loss, _SPARSE_LOSSES) or any(loss is function for function in _SPARSE_FUNCTIONS):
        return "sparse"
    if isinstance(loss, _CATEGORICAL_LOSSES) or any(loss is function for function in _CATEGORICAL_FUNCTIONS):
        return "categorical"
    return None


def _loss_name(loss):
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, tuple(library.losses.Loss for library in KERAS_MODULES)):
        return f"{type(loss).__name__}()"
    return getattr(loss, "__name__", type(loss).__name__)


def _labels_array(labels):
    """The labels as a numeric numpy array, or None: no labels, one per output, ragged or sparse ones."""
    if labels is None or isinstance(labels, (dict, tf.RaggedTensor, tf.SparseTensor)):
        return None
    if isinstance(labels, (list, tuple)) and any(hasattr(item, "shape") for item in labels):
        return None  # one array per output of a multi-output model
    try:
        labels = np.asarray(labels)
    except ValueError:  # a ragged Python list
        return None
    return labels if labels.dtype.kind in "biuf" and labels.size else None


def _output_classes(model):
    """The single output's shape and its number of classes, or None for other models (regression, binary, multi-output)."""
    try:
        shape = model.output_shape
    except AttributeError:  # a Sequential model not built yet
        return None
    if not isinstance(shape, tuple) or not shape or shape[-1] is None or shape[-1] < 2:
        return None
    return shape, shape[-1]


def _check_label_format(sample, labels, loss, kind, rank, classes):
    one_hot = labels.ndim == rank and labels.shape[-1] > 1
    ids = labels.ndim == rank - 1 or (labels.ndim == rank and labels.shape[-1] == 1)
    received = f"labels of shape {labels.shape}{sample.where} and loss={_loss_name(loss)}"
    if kind == "sparse" and one_hot:
        to_ids = "dataset.map(lambda x, y: (x, tf.argmax(y, axis=-1)))" if sample.dataset else "np.argmax(y, axis=-1)"
        raise ValueError(
            f"Argument `{sample.label_argument}` holds one-hot labels (rows of {labels.shape[-1]} values), but "
            f"{_loss_name(loss)} expects integer class ids, one per example. Received: {received}. Use "
            f"loss='categorical_crossentropy' with one-hot labels, or turn them into class ids: {to_ids}."
        )
    if kind == "categorical" and ids:
        to_rows = (
            f"dataset.map(lambda x, y: (x, tf.one_hot(y, {classes})))" if sample.dataset
            else f"keras.utils.to_categorical(y, {classes})"
        )
        raise ValueError(
            f"Argument `{sample.label_argument}` holds integer class ids, but {_loss_name(loss)} expects "
            f"one-hot labels of {classes} classes (rows of {classes} values). Received: {received}. Use "
            f"loss='sparse_categorical_crossentropy' with class ids, or one-hot them: {to_rows}."
        )
    return one_hot, ids


def _check_labels(model, sample, loss, class_argument):
    outputs = _output_classes(model)
    labels = _labels_array(sample.labels)
    if outputs is None or labels is None:
        return
    (shape, classes), kind = outputs, _loss_kind(loss)
    one_hot, ids = _check_label_format(sample, labels, loss, kind, len(shape), classes)
    model_name = f"model {model.name!r}"
    if kind == "categorical" and one_hot:
        check_class_ids(labels, classes, class_argument, _LABELS_FIX, one_hot=True, model=model_name, where=sample.where)
        return
    integral = labels.dtype.kind in "iu" or (kind == "sparse" and labels.dtype.kind == "f" and np.all(labels == np.round(labels)))
    if kind is None and labels.ndim == len(shape) and labels.shape[-1] == classes:
        return  # one-hot rows of the right width under a loss that is not ours to judge
    if (ids or kind is None) and integral:
        check_class_ids(labels, classes, class_argument, _LABELS_FIX, model=model_name, where=sample.where)


def _check_sample(model, sample, loss, class_argument):
    if model.inputs:  # a Sequential model not built yet learns its input shape from the data
        for name, ref, data in _matched_inputs(model, sample):
            _check_input_shape(model, sample, name, ref, _shape(data))
    _check_labels(model, sample, loss, class_argument)


def check_inputs(model, x=None, y=None, *, loss=None, validation_data=None):
    """Checks training (and validation) data against the model's inputs and outputs and the loss, before training.

    Reads one batch at most: the first batch of a dataset (`take(1)`), item 0
    of a `keras.utils.Sequence`, or numpy arrays and tensors as given. Python
    generators are not read. Dict inputs are matched to the model's inputs by
    name, tuples and lists by position. Labels are checked for classifiers
    (a single output of 2 or more units): their format against a
    (sparse) categorical cross-entropy loss, their class ids against the
    outputs. Custom losses and other models are left to themselves.

    Args:
        model: the model to train.
        x, y: the training data, as for `keras.Model.fit`.
        loss: the loss the model is compiled with: a name, a
            `keras.losses.Loss`, a function or a custom callable.
        validation_data: as for `keras.Model.fit`: a dataset, a Sequence or an
            `(x, y)` / `(x, y, sample_weight)` tuple.

    Raises:
        ValueError: the data yields unbatched examples; dict keys, the number
            of inputs, the image size, the channels or another input shape do
            not match the model's inputs; one-hot labels meet a sparse loss or
            class ids a categorical one; class ids the model cannot output.

    Example:

    ```python
    check_inputs(model, train_ds, loss="sparse_categorical_crossentropy", validation_data=val_ds)
    ```
    """
    label_argument = "x" if isinstance(x, (tf.data.Dataset, keras.utils.Sequence)) else "y"
    sample = _sample("x", x, y, label_argument)
    if sample is not None:
        _check_sample(model, sample, loss, "x`/`y")
    if validation_data is None:
        return
    if isinstance(validation_data, (tf.data.Dataset, keras.utils.Sequence)):
        sample = _sample("validation_data", validation_data, None, "validation_data")
    else:
        inputs, labels = _unpack(validation_data)
        sample = _sample("validation_data", inputs, labels, "validation_data")
        if sample is not None:
            sample.source = validation_data
    if sample is not None:
        _check_sample(model, sample, loss, "validation_data")
