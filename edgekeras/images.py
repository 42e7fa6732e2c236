"""The image pipeline both data loaders share: splits, normalization, resizing, augmentation, batching.

`edgekeras.data` (TFDS datasets) and `edgekeras.folders` (a directory with one
sub-folder per class) read their examples differently and hand them to the
same pipeline, so both give identical batches: images resized to a square
side, augmented only in training, scaled the way the model expects
(`normalize`), labels as integer class ids. Both return an `ImageData`.

Example:

```python
from edgekeras.images import normalize

normalize([0.0, 127.5, 255.0], "minus_one_to_one")  # [-1, 0, 1]
```
"""

import dataclasses

import tensorflow as tf

from edgekeras.arguments import check_positive_int
from edgekeras.choices import NORMALIZATIONS
from edgekeras.errors import EdgekerasError

__all__ = [
    "DataNotFoundError",
    "DataSplitError",
    "ImageData",
    "batch",
    "build_image_data",
    "carve_splits",
    "check_load_arguments",
    "check_normalization",
    "check_positive_int",
    "normalize",
    "resize_to_uint8",
    "shuffle_and_augment",
    "to_rgb",
]

AUTOTUNE = tf.data.AUTOTUNE
# ImageNet statistics of keras.applications' "caffe" and "torch" modes.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class DataNotFoundError(EdgekerasError, FileNotFoundError):
    """The dataset is not prepared locally and could not be downloaded, or its directory is missing."""


class DataSplitError(EdgekerasError, ValueError):
    """The validation or test split asked for does not fit the data."""


@dataclasses.dataclass
class ImageData:
    """Batched, preprocessed pipelines of one image-classification dataset.

    Attributes:
        name: the TFDS dataset name, or the directory's name.
        train: training pipeline, shuffled (and augmented if asked) each epoch.
        validation: validation pipeline carved from the training data, or
            None when `validation_size=0`.
        test: test pipeline, only for final reports.
        num_classes: number of classes.
        class_names: class names (TFDS label names, or sorted sub-folder names).
        image_size: side of the square images the pipelines yield.
        num_train, num_validation, num_test: examples in each split.
        splits: where each split comes from (TFDS split strings such as
            "train[:45000]", or ranges of the shuffled file list).
        normalization: how the pixels are scaled (see `normalize`).
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
    normalization: str = "minus_one_to_one"


def check_load_arguments(image_size, batch_size, validation_size, shuffle_buffer, max_train_examples, test_size=None):
    """Raises ValueError for an argument of `load_image_data` / `load_image_folders` out of range."""
    for value, argument in (
        (image_size, "image_size"),
        (batch_size, "batch_size"),
        (shuffle_buffer, "shuffle_buffer"),
    ):
        check_positive_int(value, argument)
    if isinstance(validation_size, bool) or not isinstance(validation_size, int) or validation_size < 0:
        raise ValueError(
            "Argument `validation_size` must be a non-negative integer. "
            f"Received: validation_size={validation_size!r}"
        )
    for value, argument in ((max_train_examples, "max_train_examples"), (test_size, "test_size")):
        if value is not None:
            check_positive_int(value, argument)


def check_normalization(normalization):
    """Raises ValueError unless `normalization` is one of `edgekeras.choices.NORMALIZATIONS`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Argument `normalization` must be one of ({', '.join(repr(n) for n in NORMALIZATIONS)}). "
            f"Received: normalization={normalization!r}"
        )


def normalize(images, normalization="minus_one_to_one"):
    """Scales uint8-range RGB pixels the way a model expects them.

    Args:
        images: pixels in [0, 255], any numeric dtype, channels last (RGB).
        normalization: "minus_one_to_one" (x / 127.5 - 1, MobileNetV2),
            "zero_to_one" (x / 255), "pixels" (unchanged, for models with
            their own Rescaling layer such as tf_keras' MobileNetV3 and
            EfficientNet), "caffe" (RGB -> BGR minus the ImageNet channel
            means, ResNet50) or "torch" (x / 255 minus the ImageNet means,
            over their standard deviations).

    Returns:
        A float32 tensor of the same shape.

    Raises:
        ValueError: `normalization` is not one of those.

    Example:

    ```python
    normalize(np.array([0.0, 127.5, 255.0]))  # [-1, 0, 1]
    ```
    """
    check_normalization(normalization)
    images = tf.cast(images, tf.float32)
    if normalization == "minus_one_to_one":
        return images / 127.5 - 1.0
    if normalization == "zero_to_one":
        return images / 255.0
    if normalization == "pixels":
        return images
    if normalization == "caffe":
        return images[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR)
    return (images / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)


def to_rgb(image):
    """Three channels: grayscale is repeated, an alpha channel dropped (models take RGB)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def filled_cache(ds):
    """`ds` cached in memory, the cache filled by one full pass right away.

    TF 2.21 completes an in-memory cache with whatever a first, partial pass
    read (a representative dataset, `steps_per_epoch`, a verification on the
    first 512 images), and every later pass sees only those: a run's 5,000
    validation images became 580. One full pass first makes every later one whole.
    """
    ds = ds.cache()
    ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
    return ds


def resize_to_uint8(image, image_size):
    """One image resized to `image_size` square and rounded back to uint8.

    For images of varying sizes (a directory, some TFDS datasets): they must
    be resized before they can be batched, and uint8 keeps the in-memory
    cache at a quarter of float32's size.
    """
    resized = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


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
    image = tf.image.stateless_random_crop(image, (height, width, channels), seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def shuffle_and_augment(ds, shuffle_buffer, augment, seed):
    """Shuffles `(image, label)` examples each epoch and, with `augment`, pad-crops and flips them."""
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment:
        # Dataset.random re-draws each epoch, so augmentation differs per
        # epoch but is reproducible from `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds.batch(2)))
        ds = ds.map(lambda example, s: (_augment(example[0], s), example[1]), num_parallel_calls=AUTOTUNE)
    return ds


def batch(ds, batch_size, image_size, normalization="minus_one_to_one"):
    """Batches, then resizes and normalizes each batch (resizing after the cache keeps the cache small)."""
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(
        lambda images, labels: (normalize(_resize(images, image_size), normalization), labels),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.prefetch(AUTOTUNE)


def carve_splits(total, validation_size, test_size, max_train_examples, *, carve_test):
    """Example ranges `[start, end)` of train, validation and test within the training data.

    The training data are laid out as `[train | validation | test]`: the
    validation split is taken from the end (before a carved test split), so
    tuning and model selection never look at the test split.

    Args:
        total: examples in the training data.
        validation_size: examples held out for validation (0: none).
        test_size: examples held out for testing when `carve_test`; None
            takes `validation_size` of them.
        max_train_examples: keep only the first N training examples (None: all).
        carve_test: the data have no test split of their own.

    Returns:
        `{"train": (0, n), "validation": (a, b) or None, "test": (c, total) or None}`.

    Raises:
        DataSplitError: the held-out splits leave no training example, a
            test size is given for data with their own test split, or a
            test split is needed but would be empty.
    """
    if not carve_test and test_size:
        raise DataSplitError(
            f"Argument `test_size` must be None when the data have a test split of their own (config: "
            f"`data.test_size` = 0). Received: test_size={test_size}"
        )
    test = (validation_size if test_size is None else test_size) if carve_test else 0
    if carve_test and test < 1:
        raise DataSplitError(
            "Argument `test_size` must be a positive integer when the data have no test split: the test split is "
            f"carved from the training data (config: `data.test_size`). Received: test_size={test_size}, "
            f"validation_size={validation_size}"
        )
    if validation_size + test >= total:
        if carve_test:
            raise DataSplitError(
                f"Arguments `validation_size` and `test_size` must together be smaller than the training data "
                f"({total} examples), which they are carved from. Received: validation_size={validation_size}, "
                f"test_size={test}"
            )
        raise DataSplitError(
            f"Argument `validation_size` must be smaller than the training split ({total} examples). "
            f"Received: validation_size={validation_size}"
        )
    end = total - test
    num_train = end - validation_size
    if max_train_examples is not None:
        num_train = min(num_train, max_train_examples)
    return {
        "train": (0, num_train),
        "validation": (end - validation_size, end) if validation_size else None,
        "test": (end, total) if carve_test else None,
    }


def build_image_data(name, examples, counts, class_names, splits, *, image_size, batch_size, normalization,
                     augment, shuffle_buffer, seed):
    """The `ImageData` of unbatched `(image, label)` datasets, the training one shuffled and augmented.

    Args:
        name: the data's name.
        examples: {"train", "test" and optionally "validation": dataset}.
        counts: {split: number of examples}.
        class_names: the class names; their number is the number of classes.
        splits: {split: where it comes from}, for `ImageData.splits`.
        image_size, batch_size, normalization, augment, shuffle_buffer,
            seed: as in `edgekeras.data.load_image_data`.

    Returns:
        An `ImageData`.
    """

    def batched(ds):
        return batch(ds, batch_size, image_size, normalization)

    validation = examples.get("validation")
    return ImageData(
        name=name,
        train=batched(shuffle_and_augment(examples["train"], shuffle_buffer, augment, seed)),
        validation=None if validation is None else batched(validation),
        test=batched(examples["test"]),
        num_classes=len(class_names),
        class_names=list(class_names),
        image_size=image_size,
        num_train=counts["train"],
        num_validation=counts.get("validation", 0),
        num_test=counts["test"],
        splits=splits,
        normalization=normalization,
    )
