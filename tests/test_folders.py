"""Image directories with one sub-folder per class: classes, labels, splits, normalization, errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.app.factories import load_data
from edgekeras.app.inputs import DataSection, ModelSection
from edgekeras.choices import ARCHITECTURE_NORMALIZATION
from edgekeras.data import DataNotFoundError, DataSplitError
from edgekeras.folders import ImageFolderError, list_image_files, load_image_folders
from edgekeras.images import normalize

# Written in this order, so sorting is what makes the classes ['apple', 'mango', 'zebra'].
CLASSES = ("zebra", "apple", "mango")
PER_CLASS = 8
# Each class has one bright channel: zebra red, apple green, mango blue.
CHANNEL = {"zebra": 0, "apple": 1, "mango": 2}


def write_image(path, image):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encoded = tf.io.encode_png(image) if path.lower().endswith(".png") else tf.io.encode_jpeg(image, quality=100)
    with open(path, "wb") as handle:
        handle.write(encoded.numpy())


def write_folders(root, classes=CLASSES, per_class=PER_CLASS, seed=0):
    """PNG and JPEG images of several sizes, one nested, plus files that must be skipped."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for index in range(per_class):
            image = rng.integers(0, 60, (20 + index, 28, 3), dtype=np.uint8)
            image[..., CHANNEL[name]] += 180
            extension = ".png" if index % 2 else ".JPG"
            folder = root / name / ("nested" if index == 0 else "")
            write_image(folder / f"{name}_{index}{extension}", image)
        (root / name / "notes.txt").write_text("not an image, not listed")
    hidden = root / classes[0] / ".ipynb_checkpoints" / "copy.png"  # a notebook's leftover: skipped
    write_image(hidden, np.zeros((8, 8, 3), np.uint8))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("photos") / "train")


def _collect(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def _load(directory, **kwargs):
    options = dict(image_size=32, batch_size=4, validation_size=4, test_size=5)
    options.update(kwargs)
    return load_image_folders(directory, **options)


def test_classes_are_the_sorted_sub_folders_and_labels_their_indices(folders):
    paths, labels, names = list_image_files(folders)
    assert names == ["apple", "mango", "zebra"]
    assert len(paths) == 3 * PER_CLASS  # notes.txt and the hidden folder are skipped
    assert not any(".ipynb_checkpoints" in p or p.endswith(".txt") for p in paths)
    assert any(os.sep + "nested" + os.sep in p for p in paths)  # class folders are searched recursively
    for path, label in zip(paths, labels):
        assert os.path.relpath(path, folders).split(os.sep)[0] == names[label]
    data = _load(folders, validation_size=0, test_size=3, normalization="pixels")
    images, labels = _collect(data.train)
    assert data.num_classes == 3 and data.class_names == names and labels.dtype == np.int64
    # Each image's bright channel is its class's: images and labels stay paired.
    bright = images.mean(axis=(1, 2)).argmax(axis=1)
    assert np.array_equal(bright, [CHANNEL[names[label]] for label in labels])


def test_splits_are_carved_disjoint_and_the_same_for_every_seed(folders):
    data = _load(folders, seed=1)
    assert (data.num_train, data.num_validation, data.num_test) == (15, 4, 5)
    assert data.splits == {"train": "files[0:15] of 24", "validation": "files[15:19] of 24", "test": "files[19:24] of 24"}
    train, validation, test = (_collect(getattr(data, split))[0] for split in ("train", "validation", "test"))
    assert (train.shape, validation.shape, test.shape) == ((15, 32, 32, 3), (4, 32, 32, 3), (5, 32, 32, 3))
    rows = {row.tobytes() for row in train.reshape(len(train), -1)}
    assert not any(row.tobytes() in rows for row in np.concatenate([validation, test]).reshape(9, -1))
    other = _load(folders, seed=2)
    np.testing.assert_array_equal(_collect(other.test)[0], test)  # the test split does not follow the seed
    # Without test_size, the test split is as large as the validation split.
    assert _load(folders, test_size=None, validation_size=6).num_test == 6
    assert _load(folders, max_train_examples=5).num_train == 5


def test_test_directory_is_the_test_split_and_may_lack_classes(folders, tmp_path):
    test_dir = write_folders(tmp_path / "test", classes=("mango", "zebra"), per_class=2, seed=3)
    data = _load(folders, test_directory=test_dir, test_size=None)
    assert (data.num_train, data.num_validation, data.num_test) == (20, 4, 4)
    assert data.splits["test"] == str(test_dir)
    assert sorted(_collect(data.test)[1].tolist()) == [1, 1, 2, 2]  # labels of the training classes


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURE_NORMALIZATION))
def test_normalization_follows_the_architecture(tmp_path, architecture):
    # One flat colour per class, so resizing keeps the pixel values exactly.
    colour = np.array([200, 100, 50], np.uint8)
    for name in ("a", "b"):
        for index in range(3):
            write_image(tmp_path / name / f"{index}.png", np.broadcast_to(colour, (10, 12, 3)).copy())
    section = DataSection(directory=str(tmp_path), image_size=32, batch_size=2, validation_size=1, test_size=1)
    data = load_data(section, seed=0, model=ModelSection(architecture=architecture))
    expected = normalize(colour.astype(np.float32), ARCHITECTURE_NORMALIZATION[architecture]).numpy()
    for split in (data.train, data.validation, data.test):
        images, _ = _collect(split)
        np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), rtol=1e-5, atol=1e-4)
    assert data.normalization == ARCHITECTURE_NORMALIZATION[architecture]
    if architecture == "resnet50":  # caffe: BGR, minus the ImageNet means
        np.testing.assert_allclose(expected, [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-5)


def _one_class(tmp_path):
    write_image(tmp_path / "only" / "0.png", np.zeros((8, 8, 3), np.uint8))
    return tmp_path


def _empty_class(tmp_path):
    write_folders(tmp_path, classes=("apple", "mango"), per_class=2)
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "readme.md").write_text("no images here")
    return tmp_path


def _fake_image(tmp_path):
    write_folders(tmp_path, classes=("apple", "mango"), per_class=2)
    (tmp_path / "apple" / "broken.jpg").write_text("this is text")
    return tmp_path


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: p / "missing", DataNotFoundError, r"Argument `directory` names a directory that does not exist"),
        (lambda p: p, ImageFolderError, r"Argument `directory` must hold one sub-folder of images per class\. "
                                        r"Received: directory='.*', which has no sub-folders"),
        (_one_class, ImageFolderError, r"must hold one sub-folder of images per class, at least two\. "
                                       r"Received: directory='.*' with sub-folders \['only'\]"),
        (_empty_class, ImageFolderError, r"Class folder '.*zebra' holds no image files \(\.jpeg, .*\)"),
        (_fake_image, ImageFolderError, r"File '.*broken\.jpg' has an image extension but is not a JPEG, PNG"),
    ],
)
def test_bad_directories_are_refused_before_training(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        _load(make(tmp_path), validation_size=1, test_size=1)


def test_test_directory_with_an_unknown_class_is_refused(folders, tmp_path):
    write_folders(tmp_path / "test", classes=("apple", "zebra"), per_class=1)
    write_image(tmp_path / "test" / "kiwi" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageFolderError, match=r"Argument `test_directory` has class folders the training data do not "
                                               r"have: \['kiwi'\]\. .*the training classes are \['apple', 'mango', 'zebra'\]"):
        _load(folders, test_directory=tmp_path / "test", test_size=None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_directory": "x", "test_size": 2}, r"Argument `test_size` must be None when the data have a test split"),
        ({"validation_size": 12, "test_size": 12}, r"`validation_size` and `test_size` must together be smaller than "
                                                   r"the training data \(24 examples\).*validation_size=12, test_size=12"),
        ({"validation_size": 0, "test_size": None}, r"Argument `test_size` must be a positive integer when the data have "
                                                    r"no test split"),
    ],
)
def test_splits_that_do_not_fit_are_refused(folders, kwargs, match):
    with pytest.raises(DataSplitError, match=match):
        _load(folders, **kwargs)


def test_bad_arguments(folders):
    with pytest.raises(ValueError, match=r"Argument `normalization` must be one of \('minus_one_to_one', .*"
                                         r"Received: normalization='imagenet'"):
        _load(folders, normalization="imagenet")
    with pytest.raises(ValueError, match=r"Argument `test_size` must be a positive integer. Received: test_size=0"):
        _load(folders, test_size=0)
