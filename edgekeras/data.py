"""Image-classification data from TFDS, preprocessed the way MobileNetV2 wants.

`load_image_data` returns train / validation / test pipelines. The validation
split is carved from the end of the training split so that tuning and model
selection never look at the test split, which is kept for final reports.

Decoded images are cached at their stored (small) resolution and resized after
the cache: CIFAR-10 at 32x32 uint8 is 150 MB, at 160x160 float32 it would be
15 GB.
"""

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from edgekeras.compat import keras
from edgekeras.errors import EdgekerasError

__all__ = [
    "batches_per_epoch",
    "check_class_ids",
    "DataNotFoundError",
    "ImageData",
    "load_image_data",
    "normalize",
    "representative_dataset",
]

AUTOTUNE = tf.data.AUTOTUNE


class DataNotFoundError(EdgekerasError, FileNotFoundError):
    """The dataset is not prepared locally and could not be downloaded."""


@dataclasses.dataclass
class ImageData:
    """Batched, preprocessed pipelines of one image-classification dataset.

    Attributes:
        name: the TFDS dataset name.
        train: training pipeline, shuffled (and augmented if asked) each epoch.
        validation: validation pipeline carved from the training split, or
            None when `validation_size=0`.
        test: test pipeline, only for final reports.
        num_classes: number of classes, from the dataset info.
        class_names: class names, from the dataset info.
        image_size: side of the square images the pipelines yield.
        num_train, num_validation, num_test: examples in each split.
        splits: the TFDS split strings used for train / validation / test.
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    class_names: list
    image_size: int
    num_train: int
    num_validation: int
    num_test: int
    splits: dict


def normalize(images):
    """Scales uint8-range pixels to [-1, 1], as MobileNetV2 expects.

    Args:
        images: pixels in [0, 255], any numeric dtype.

    Returns:
        A float32 tensor of the same shape, in [-1, 1].

    Example:

    ```python
    normalize(np.array([0.0, 127.5, 255.0]))  # [-1, 0, 1]
    ```
    """
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def _resize(images, image_size):
    images = tf.cast(images, tf.float32)
    if images.shape[-3] == image_size and images.shape[-2] == image_size:
        return images
    return tf.image.resize(images, (image_size, image_size))


def _augment(image, seed):
    # Pad-and-crop plus flip at the stored resolution: cheap, and the usual
    # CIFAR augmentation; seeds are stateless so a run is reproducible.
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    height, width, channels = image.shape
    pad = max(1, height // 8)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(
        image, (height, width, channels), seed=seeds[0]
    )
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def _check_positive_int(value, argument):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"Argument `{argument}` must be a positive integer. "
            f"Received: {argument}={value!r}"
        )


def _builder(name, data_dir, download):
    import tensorflow_datasets as tfds

    resolved_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(name, data_dir=resolved_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Argument `dataset` must name a TFDS dataset. Received: "
            f"dataset={name!r}. See `tfds.list_builders()` for the names."
        ) from error
    where = resolved_dir or "the default TFDS data dir (~/tensorflow_datasets)"
    how = (
        "Point edgekeras at a local copy: pass `data_dir=...` (CLI: "
        "`--data-dir`, config: `data.data_dir`) or set TFDS_DATA_DIR to a "
        f"directory that holds `{name}/<version>/`."
    )
    if builder.is_prepared():
        _check_complete(builder, name, resolved_dir, where)
        return builder
    if not download:
        raise DataNotFoundError(
            f"Dataset {name!r} is not prepared in {where} and `download=False`. "
            f"Received: dataset={name!r}, data_dir={resolved_dir!r}. " + how
        )
    try:
        builder.download_and_prepare()
    except Exception as error:
        raise DataNotFoundError(
            f"Dataset {name!r} is not prepared in {where} and could not be "
            f"downloaded ({type(error).__name__}: {error}). Received: dataset={name!r}, "
            f"data_dir={resolved_dir!r}. " + how
        ) from error
    return builder


def _check_complete(builder, name, data_dir, where):
    """Refuses a prepared dataset whose train or test files are missing or truncated.

    TFDS calls a dataset prepared as soon as its `dataset_info.json` exists;
    a missing or cut shard would only fail when the pipeline reaches it,
    possibly after training, at the final test evaluation.
    """
    for split in ("train", "test"):  # the splits load_image_data reads
        if split not in builder.info.splits:
            continue
        info = builder.info.splits[split]
        paths = [os.fspath(p) for p in info.filepaths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            problem = f"split {split!r} lacks {len(missing)} of its {len(paths)} files, e.g. {missing[0]}"
        elif int(info.num_bytes) > sum(os.path.getsize(p) for p in paths):
            problem = (
                f"the files of split {split!r} hold {sum(os.path.getsize(p) for p in paths)} bytes, fewer "
                f"than the {int(info.num_bytes)} recorded in dataset_info.json (truncated)"
            )
        else:
            continue
        raise DataNotFoundError(
            f"Dataset {name!r} in {where} is incomplete: {problem}. Received: data_dir={data_dir!r}. "
            f"Copy the whole `{name}/{builder.info.version}/` directory again (or delete it and let TFDS "
            "download it with `download=True`)."
        )


def _check_load_arguments(image_size, batch_size, validation_size, shuffle_buffer, max_train_examples):
    for value, argument in (
        (image_size, "image_size"),
        (batch_size, "batch_size"),
        (shuffle_buffer, "shuffle_buffer"),
    ):
        _check_positive_int(value, argument)
    if isinstance(validation_size, bool) or not isinstance(validation_size, int) or validation_size < 0:
        raise ValueError(
            "Argument `validation_size` must be a non-negative integer. "
            f"Received: validation_size={validation_size!r}"
        )
    if max_train_examples is not None:
        _check_positive_int(max_train_examples, "max_train_examples")


def _check_features(info, dataset):
    features = info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"Argument `dataset` must name an image-classification dataset with "
            f"`image` and `label` features. Received: dataset={dataset!r} with "
            f"features {sorted(features.keys())}"
        )


def _splits(info, validation_size, max_train_examples):
    """The TFDS split strings: validation carved from the end of train, so the test split stays unseen."""
    total_train = info.splits["train"].num_examples
    if validation_size >= total_train:
        raise ValueError(
            f"Argument `validation_size` must be smaller than the training split "
            f"({total_train} examples). Received: validation_size={validation_size}"
        )
    num_train = total_train - validation_size
    if max_train_examples is not None:
        num_train = min(num_train, max_train_examples)
    return {
        "train": f"train[:{num_train}]",
        "validation": f"train[{total_train - validation_size}:]" if validation_size else None,
        "test": "test",
    }, num_train


def _read(builder, split, cache):
    """Decoded `(image, label)` examples of one split, cached before resizing (see the module docstring)."""
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    ds = ds.map(lambda image, label: (image, label), num_parallel_calls=AUTOTUNE)
    return ds.cache() if cache else ds


def _shuffle_and_augment(ds, shuffle_buffer, augment, seed):
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment:
        # Dataset.random re-draws each epoch, so augmentation differs per
        # epoch but is reproducible from `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds.batch(2)))
        ds = ds.map(
            lambda example, s: (_augment(example[0], s), example[1]),
            num_parallel_calls=AUTOTUNE,
        )
    return ds


def _batch(ds, batch_size, image_size):
    """Batches, then resizes and normalizes each batch (resizing after the cache keeps the cache small)."""
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(
        lambda images, labels: (normalize(_resize(images, image_size)), labels),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.prefetch(AUTOTUNE)


def load_image_data(
    dataset="cifar10",
    *,
    data_dir=None,
    download=True,
    image_size=160,
    batch_size=64,
    validation_size=5000,
    augment=False,
    shuffle_buffer=10000,
    cache=True,
    seed=0,
    max_train_examples=None,
):
    """Loads a TFDS image-classification dataset as batched pipelines.

    Images are resized to `image_size` and scaled to [-1, 1]; labels are
    integer class ids.

    Args:
        dataset: TFDS name of an image-classification dataset with `image`
            and `label` features.
        data_dir: directory that holds prepared TFDS data. Defaults to
            `TFDS_DATA_DIR`, then TFDS' own default.
        download: whether TFDS may download and prepare the dataset when it
            is not prepared yet. Pass False on machines without internet.
        image_size: side of the square images after resizing.
        batch_size: examples per batch.
        validation_size: number of examples taken from the end of the
            training split for validation. 0 disables the validation split.
        augment: random pad-crop and horizontal flip on training images.
        shuffle_buffer: shuffle buffer size for the training pipeline.
        cache: cache decoded images in memory (before resizing).
        seed: seed for shuffling and augmentation; the same seed gives the
            same batches.
        max_train_examples: use only the first N training examples (for
            quick runs and demos). None uses all of them.

    Returns:
        An `ImageData`.

    Raises:
        DataNotFoundError: the dataset is missing and cannot be downloaded,
            or its prepared copy lacks files or has truncated ones.
        ValueError: an argument is out of range.

    Example:

    ```python
    data = load_image_data("cifar10", data_dir="../shared/data/tfds",
                           download=False, image_size=96, batch_size=128)
    images, labels = next(iter(data.train))
    ```
    """
    _check_load_arguments(image_size, batch_size, validation_size, shuffle_buffer, max_train_examples)
    builder = _builder(dataset, data_dir, download)
    info = builder.info
    _check_features(info, dataset)
    splits, num_train = _splits(info, validation_size, max_train_examples)
    train = _shuffle_and_augment(_read(builder, splits["train"], cache), shuffle_buffer, augment, seed)
    validation = _read(builder, splits["validation"], cache) if validation_size else None
    label_feature = info.features["label"]
    return ImageData(
        name=dataset,
        train=_batch(train, batch_size, image_size),
        validation=None if validation is None else _batch(validation, batch_size, image_size),
        test=_batch(_read(builder, splits["test"], cache), batch_size, image_size),
        num_classes=int(label_feature.num_classes),
        class_names=list(label_feature.names),
        image_size=image_size,
        num_train=num_train,
        num_validation=validation_size,
        num_test=info.splits["test"].num_examples,
        splits=splits,
    )


def representative_dataset(dataset, num_examples=256):
    """Returns a representative-dataset generator for int8 calibration.

    The TFLite converter calls the returned function and expects it to yield
    lists of single-example float32 input arrays.

    Args:
        dataset: a batched `(images, labels)` or `images` pipeline, for example
            `ImageData.train` or `ImageData.validation`.
        num_examples: how many examples to yield at most.

    Returns:
        A zero-argument callable that yields `[image[None]]` arrays.

    Example:

    ```python
    converter.representative_dataset = representative_dataset(data.train, 200)
    ```
    """
    _check_positive_int(num_examples, "num_examples")

    def generate():
        produced = 0
        for batch in dataset:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for image in np.asarray(images, dtype=np.float32):
                if produced >= num_examples:
                    return
                yield [image[None, ...]]
                produced += 1

    return generate


def batches_per_epoch(x, batch_size=None):
    """Batches in one pass over training data `x`, or None when that is unknown.

    Args:
        x: a `tf.data.Dataset` (its cardinality), a `keras.utils.Sequence`,
            or arrays (their length over `batch_size`).
        batch_size: batch size for arrays (Keras' default 32 when None).

    Returns:
        An int, or None for infinite or unsized data (generators, repeated
        datasets, dict inputs): callers then need `steps_per_epoch`.

    Example:

    ```python
    batches_per_epoch(np.zeros((100, 8)), batch_size=32)  # 4
    ```
    """
    if isinstance(x, tf.data.Dataset):
        count = int(x.cardinality())
        return count if count > 0 else None
    if isinstance(x, keras.utils.Sequence):
        return len(x)
    if hasattr(x, "__len__") and not isinstance(x, dict):
        return math.ceil(len(x) / (batch_size or 32))
    return None


def check_class_ids(labels, num_classes, argument, fix, *, one_hot=False, model="the model", where=""):
    """Refuses labels of classes a classifier with `num_classes` outputs cannot predict.

    Training would fail mid-fit on CPU ("label value outside the valid
    range") and train on garbage on a GPU; accuracy would be silently wrong
    (labels the model cannot output just never match).

    Args:
        labels: class ids, or one-hot rows when `one_hot`.
        num_classes: the model's number of outputs.
        argument: the argument that holds the labels, named in the message
            (e.g. "dataset", or "x`/`y" for two).
        fix: the sentence that tells the user what to do.
        one_hot: whether `labels` are one-hot rows (checked by their width)
            rather than class ids (checked by their range).
        model: how the message names the model, e.g. "model 'tiny'".
        where: what part of the data was checked, e.g. " in the first batch".

    Raises:
        ValueError: the labels name a class id outside [0, num_classes), or
            one-hot rows have another width than `num_classes`.

    Example:

    ```python
    check_class_ids(np.array([0, 2, 1]), 3, "y", "Build the model with the data's number of classes.")
    ```
    """
    labels = np.asarray(labels)
    if one_hot:
        if labels.shape[-1] == num_classes:
            return
        received = f"one-hot labels of {labels.shape[-1]} classes"
    else:
        if labels.size == 0 or 0 <= labels.min() <= labels.max() < num_classes:
            return
        received = f"class ids from {labels.min()} to {labels.max()}"
    raise ValueError(
        f"Argument `{argument}` does not match the number of classes of {model}, which has {num_classes} "
        f"outputs (class ids 0 to {num_classes - 1}). Received: {received}{where}. {fix}"
    )
