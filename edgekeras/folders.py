"""Image-classification data from a directory with one sub-folder of images per class.

The layout and labels follow `keras.utils.image_dataset_from_directory`:
class names are the sub-folder names in sorted order, labels are their
indices, and each class folder is searched recursively for .jpeg, .jpg, .png,
.bmp and .gif files. Hidden files and folders (a leading ".", such as
`.ipynb_checkpoints`) are skipped.

Splits: the file list is shuffled once with a fixed seed (not the training
seed, so that every run and every search sees the same splits), then laid
out as `[train | validation | test]`. The test split is a `test_directory` of
the same layout when one is given, else the last `test_size` files; the
validation split is carved right before it, as for TFDS data. Images are
decoded, resized to uint8 squares and cached, then go through the pipeline
of `edgekeras.images` (augmentation, normalization, batching).

Example:

```python
from edgekeras.folders import load_image_folders

data = load_image_folders("photos/", image_size=96, validation_size=200, test_size=200,
                          normalization="pixels")
print(data.class_names, data.num_train)
```
"""

import os

import numpy as np
import tensorflow as tf

from edgekeras.errors import EdgekerasError
from edgekeras.images import (
    AUTOTUNE,
    DataNotFoundError,
    build_image_data,
    carve_splits,
    filled_cache,
    check_load_arguments,
    check_normalization,
    resize_to_uint8,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderError", "list_image_files", "load_image_folders"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
# The first bytes of each format `tf.io.decode_image` reads: a file with an
# image extension but other contents is refused before training, not when
# the pipeline reaches it.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a")
# The file list is shuffled with this seed, whatever the training seed.
_SPLIT_SEED = 1337


class ImageFolderError(EdgekerasError, ValueError):
    """A directory of class sub-folders is empty, lacks classes, or holds a file that is no image."""


def _visible(name):
    return not name.startswith(".")


def _class_names(directory, argument):
    if not os.path.isdir(directory):
        raise DataNotFoundError(
            f"Argument `{argument}` names a directory that does not exist. Received: {argument}={directory!r}. "
            "Pass a directory with one sub-folder of images per class (config: `data.directory`)."
        )
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and _visible(entry.name))


def _image_files(folder):
    """Image files under `folder`, recursively, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found += [
            os.path.join(root, name) for name in sorted(files)
            if _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _check_image(path):
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head.startswith(_SIGNATURES):
        raise ImageFolderError(
            f"File {path!r} has an image extension but is not a JPEG, PNG, BMP or GIF image (it starts with "
            f"{head!r}). Delete it or replace it with the image it should be."
        )


def list_image_files(directory, class_names=None, *, argument="directory"):
    """The image files of a directory of class sub-folders and their labels.

    Args:
        directory: a directory with one sub-folder per class.
        class_names: the classes labels refer to (default: the sorted
            sub-folder names, at least two). Given for a test directory, its
            sub-folders must be among them; missing classes are allowed.
        argument: the argument named in error messages.

    Returns:
        `(paths, labels, class_names)`: file paths (sorted by class, then
        path), int64 class ids, and the class names.

    Raises:
        DataNotFoundError: `directory` does not exist.
        ImageFolderError: fewer than two classes, a class folder without
            images, a folder of an unknown class, or a file that is no image.

    Example:

    ```python
    paths, labels, names = list_image_files("photos/")
    ```
    """
    directory = os.fspath(directory)
    folders = _class_names(directory, argument)
    if not folders:
        raise ImageFolderError(
            f"Argument `{argument}` must hold one sub-folder of images per class. Received: {argument}={directory!r}, "
            "which has no sub-folders."
        )
    if class_names is None:
        if len(folders) < 2:
            raise ImageFolderError(
                f"Argument `{argument}` must hold one sub-folder of images per class, at least two. Received: "
                f"{argument}={directory!r} with sub-folders {folders}"
            )
        class_names = folders
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise ImageFolderError(
            f"Argument `{argument}` has class folders the training data do not have: {unknown}. Received: "
            f"{argument}={directory!r}; the training classes are {list(class_names)}. Rename or remove them."
        )
    paths, labels = [], []
    for name in folders:
        files = _image_files(os.path.join(directory, name))
        if not files:
            raise ImageFolderError(
                f"Class folder {os.path.join(directory, name)!r} holds no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}). Received: {argument}={directory!r}. Add images or remove the folder."
            )
        for path in files:
            _check_image(path)
        paths += files
        labels += [list(class_names).index(name)] * len(files)
    return paths, np.asarray(labels, np.int64), list(class_names)


def _read(paths, labels, image_size, cache):
    """Decoded, resized uint8 `(image, label)` examples, cached after resizing (files vary in size)."""

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return resize_to_uint8(image, image_size), label

    ds = tf.data.Dataset.from_tensor_slices((list(paths), labels)).map(decode, num_parallel_calls=AUTOTUNE)
    return filled_cache(ds) if cache else ds


def _layout(directory, test_directory, validation_size, test_size, max_train_examples):
    """`(class names, {split: (paths, labels)}, {split: description})` of the folder data."""
    paths, labels, class_names = list_image_files(directory)
    # A fixed shuffle: sorted files are grouped by class, and carving the
    # last files would leave whole classes out of training.
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(paths))
    paths, labels = [paths[i] for i in order], labels[order]
    ranges = carve_splits(len(paths), validation_size, test_size, max_train_examples, carve_test=test_directory is None)
    splits, described = {}, {"validation": None}
    for name, bounds in ranges.items():
        if bounds:
            start, end = bounds
            splits[name] = (paths[start:end], labels[start:end])
            described[name] = f"files[{start}:{end}] of {len(paths)}"
    if test_directory is not None:
        test_paths, test_labels, _ = list_image_files(test_directory, class_names, argument="test_directory")
        splits["test"] = (test_paths, test_labels)
        described["test"] = os.fspath(test_directory)
    return class_names, splits, described


def load_image_folders(
    directory,
    *,
    test_directory=None,
    image_size=160,
    batch_size=64,
    validation_size=5000,
    test_size=None,
    augment=False,
    shuffle_buffer=10000,
    cache=True,
    seed=0,
    max_train_examples=None,
    normalization="minus_one_to_one",
):
    """Loads a directory with one sub-folder of images per class as batched pipelines.

    The counterpart of `edgekeras.data.load_image_data` for your own images,
    with the same pipeline: images resized to `image_size` squares, scaled as
    `normalization` says, labels as integer class ids (sorted sub-folder
    names, as `keras.utils.image_dataset_from_directory` gives them).

    Args:
        directory: a directory with one sub-folder of images per class.
        test_directory: a directory of the same layout holding the test
            images; None carves the test split from `directory`.
        image_size: side of the square images after resizing.
        batch_size: examples per batch.
        validation_size: files held out for validation, carved from the end
            of the (shuffled) training files. 0 disables the validation split.
        test_size: without `test_directory`, the files held out for testing
            (None: `validation_size` of them). Must be None with one.
        augment: random pad-crop and horizontal flip on training images.
        shuffle_buffer: shuffle buffer size for the training pipeline.
        cache: cache the decoded, resized images in memory, each split read
            once here so that every later pass sees all of it.
        seed: seed for shuffling and augmentation (not for the splits, which
            are the same for every seed).
        max_train_examples: use only the first N training files. None: all.
        normalization: how pixels are scaled (see `edgekeras.images.normalize`).

    Returns:
        An `edgekeras.images.ImageData` named after the directory.

    Raises:
        DataNotFoundError: a directory does not exist.
        ImageFolderError: fewer than two classes, an empty class folder, an
            unknown class in `test_directory`, or a file that is no image.
        DataSplitError: the held-out splits leave no training file, or
            `test_size` is given with a `test_directory`.
        ValueError: an argument is out of range.

    Example:

    ```python
    data = load_image_folders("photos/train", test_directory="photos/test", image_size=128,
                              validation_size=300, normalization="pixels")
    ```
    """
    check_load_arguments(image_size, batch_size, validation_size, shuffle_buffer, max_train_examples, test_size)
    check_normalization(normalization)
    class_names, splits, described = _layout(directory, test_directory, validation_size, test_size, max_train_examples)
    read = {name: _read(paths, labels, image_size, cache) for name, (paths, labels) in splits.items()}
    counts = {name: len(paths) for name, (paths, _) in splits.items()}
    return build_image_data(
        os.path.basename(os.path.normpath(os.fspath(directory))), read, counts, class_names, described,
        image_size=image_size, batch_size=batch_size, normalization=normalization, augment=augment,
        shuffle_buffer=shuffle_buffer, seed=seed,
    )
