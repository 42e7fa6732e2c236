"""Image-classification data from TFDS, preprocessed the way the model wants.

`load_image_data` returns train / validation / test pipelines. The validation
split is carved from the end of the training split so that tuning and model
selection never look at the test split, which is kept for final reports.
A dataset without a `test` split uses its `validation` split for testing, and
one with neither has its test split carved from the end of `train` as well.

Decoded images are cached at their stored (small) resolution and resized after
the cache: CIFAR-10 at 32x32 uint8 is 150 MB, at 160x160 float32 it would be
15 GB. Datasets whose images vary in size are resized (to uint8) before the
cache instead. The pipeline itself (normalization, augmentation, batching) is
`edgekeras.images`, shared with the folder loader `edgekeras.folders`.
"""

import math
import os

import numpy as np
import tensorflow as tf

from edgekeras.arguments import check_positive_int
from edgekeras.compat import keras
from edgekeras.images import (
    AUTOTUNE,
    DataNotFoundError,
    DataSplitError,
    ImageData,
    build_image_data,
    carve_splits,
    filled_cache,
    check_load_arguments,
    check_normalization,
    normalize,
    resize_to_uint8,
    to_rgb,
)

__all__ = [
    "batches_per_epoch",
    "check_class_ids",
    "DataNotFoundError",
    "DataSplitError",
    "ImageData",
    "load_image_data",
    "normalize",
    "representative_dataset",
    "resolve_steps_per_epoch",
]


def _builder(name, data_dir, download):
    tfds = _tfds()
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
    for split in ("train", _test_split(builder.info)):  # the splits load_image_data reads
        if split is None or split not in builder.info.splits:
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


def _check_features(info, dataset):
    features, tfds = info.features, _tfds()
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        kinds = {key: type(feature).__name__ for key, feature in features.items()}
        raise ValueError(
            f"Argument `dataset` must name an image-classification dataset with an `image` (Image) and a "
            f"`label` (ClassLabel) feature. Received: dataset={dataset!r} with features {kinds}"
        )


def _tfds():
    import tensorflow_datasets as tfds  # imported on use: it takes seconds and folder data do not need it

    return tfds


def _test_split(info):
    """The TFDS split used for testing: "test", else "validation", else None (carved from "train")."""
    return next((name for name in ("test", "validation") if name in info.splits), None)


def _splits(info, validation_size, max_train_examples, test_size):
    """`(split strings, num_train, num_test)`: validation (and a missing test split) carved from the end of train."""
    total_train = info.splits["train"].num_examples
    test_split = _test_split(info)
    ranges = carve_splits(total_train, validation_size, test_size, max_train_examples, carve_test=test_split is None)
    validation, test = ranges["validation"], ranges["test"]
    splits = {
        "train": f"train[:{ranges['train'][1]}]",
        "validation": f"train[{validation[0]}:{validation[1] if test else ''}]" if validation else None,
        "test": test_split or f"train[{test[0]}:]",
    }
    num_test = info.splits[test_split].num_examples if test_split else test[1] - test[0]
    return splits, ranges["train"][1], num_test


def _read(builder, split, cache, image_size):
    """Decoded RGB `(image, label)` examples of one split, cached before resizing (see the module docstring)."""
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    fixed = None not in builder.info.features["image"].shape[:2]

    def prepare(image, label):
        image = to_rgb(image)
        return (image if fixed else resize_to_uint8(image, image_size)), label

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE)
    return filled_cache(ds) if cache else ds


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
    normalization="minus_one_to_one",
    test_size=None,
):
    """Loads a TFDS image-classification dataset as batched pipelines.

    Images are resized to `image_size`, made RGB and scaled as
    `normalization` says; labels are integer class ids. The test split is
    `test`, else `validation`, else carved from the end of `train`.

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
        cache: cache decoded images in memory (before resizing), each split
            read once here so that every later pass sees all of it.
        seed: seed for shuffling and augmentation; the same seed gives the
            same batches.
        max_train_examples: use only the first N training examples (for
            quick runs and demos). None uses all of them.
        normalization: how pixels are scaled, as the model was trained:
            "minus_one_to_one" (MobileNetV2), "pixels" (MobileNetV3,
            EfficientNet), "caffe" (ResNet50), ... (`edgekeras.images.normalize`).
        test_size: examples carved for testing when the dataset has neither
            `test` nor `validation` (None: `validation_size`); else None.

    Returns:
        An `ImageData`.

    Raises:
        DataNotFoundError: the dataset is missing and cannot be downloaded,
            or its prepared copy lacks files or has truncated ones.
        DataSplitError: the held-out splits leave no training example, or
            `test_size` is given for a dataset with a test split.
        ValueError: an argument is out of range.

    Example:

    ```python
    data = load_image_data("cifar10", data_dir="../shared/data/tfds",
                           download=False, image_size=96, batch_size=128)
    images, labels = next(iter(data.train))
    ```
    """
    check_load_arguments(image_size, batch_size, validation_size, shuffle_buffer, max_train_examples, test_size)
    check_normalization(normalization)
    builder = _builder(dataset, data_dir, download)
    info = builder.info
    _check_features(info, dataset)
    splits, num_train, num_test = _splits(info, validation_size, max_train_examples, test_size)
    read = {name: _read(builder, split, cache, image_size) for name, split in splits.items() if split}
    counts = {"train": num_train, "validation": validation_size, "test": num_test}
    return build_image_data(
        dataset, read, counts, info.features["label"].names, splits, image_size=image_size, batch_size=batch_size,
        normalization=normalization, augment=augment, shuffle_buffer=shuffle_buffer, seed=seed,
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
    check_positive_int(num_examples, "num_examples")

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


def resolve_steps_per_epoch(x, steps_per_epoch=None, *, batch_size=None, num_examples=None, passes=1,
                            needed_for="", fix=""):
    """Batches in one training epoch: the one rule every caller that lays out a schedule uses.

    Explicit `steps_per_epoch` first (a step budget may differ from one pass),
    else the length of `x` (`batches_per_epoch`), else `num_examples` over
    `batch_size` (a pipeline of unknown length whose examples are counted),
    else a ValueError: a schedule laid out on a guess would end at the wrong
    step.

    Args:
        x: the training data (see `batches_per_epoch`).
        steps_per_epoch: batches per epoch the caller was given, or None.
        batch_size: batch size of `x` (arrays) and of the `num_examples`
            count (Keras' default 32 when None).
        num_examples: examples in one pass over `x` when its length is
            unknown, or None.
        passes: passes over the `num_examples` in one epoch (a cache of
            several augmented passes); used with `num_examples` only.
        needed_for: what the count is for, in the message, e.g. "to place
            the pruning ramp".
        fix: the end of the message's fix, after "Pass
            steps_per_epoch=<batches per epoch>", e.g. " to `search`".

    Returns:
        A positive int.

    Raises:
        ValueError: `steps_per_epoch` is None and the number of batches is
            unknown (infinite or unsized data, no `num_examples`).

    Example:

    ```python
    resolve_steps_per_epoch(np.zeros((100, 8)), batch_size=32)  # 4
    resolve_steps_per_epoch(dataset.repeat(), num_examples=100, batch_size=32)  # 4
    ```
    """
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    steps = batches_per_epoch(x, batch_size)
    if steps is not None:
        return steps
    if num_examples is not None:
        return math.ceil(num_examples / (batch_size or 32)) * passes
    raise ValueError(
        f"Argument `steps_per_epoch` is needed{' ' if needed_for else ''}{needed_for}: the number of batches per "
        "epoch of the training data is unknown (infinite or unsized dataset). Received: steps_per_epoch=None. "
        f"Pass steps_per_epoch=<batches per epoch>{fix}."
    )


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
