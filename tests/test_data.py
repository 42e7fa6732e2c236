import pathlib
import re
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

import edgekeras.app.stages as stages_module
import edgekeras.trainers.edge_trainer as edge_trainer_module
import edgekeras.tuning.training as training_module
from edgekeras.compat import keras
from edgekeras.data import (
    DataNotFoundError,
    DataSplitError,
    load_image_data,
    normalize,
    representative_dataset,
    resolve_steps_per_epoch,
)

TINY = "edgekeras_tiny_images"


def _load(data_dir, **kwargs):
    options = dict(data_dir=data_dir, download=False, image_size=40, batch_size=16, validation_size=12)
    options.update(kwargs)
    return load_image_data(TINY, **options)


def _count(dataset):
    return sum(int(images.shape[0]) for images, _ in dataset)


def _collect(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def test_split_sizes_and_metadata(tiny_tfds_dir):
    data = _load(tiny_tfds_dir)
    assert (data.num_train, data.num_validation, data.num_test) == (48, 12, 20)
    assert (_count(data.train), _count(data.validation), _count(data.test)) == (48, 12, 20)
    assert data.num_classes == 3
    assert data.class_names == ["red", "green", "blue"]
    assert data.splits == {"train": "train[:48]", "validation": "train[48:]", "test": "test"}


def test_validation_is_disjoint_from_train(tiny_tfds_dir):
    data = _load(tiny_tfds_dir, image_size=32)
    train, _ = _collect(data.train)
    validation, _ = _collect(data.validation)
    train_rows = {row.tobytes() for row in train.reshape(len(train), -1)}
    assert not any(row.tobytes() in train_rows for row in validation.reshape(len(validation), -1))


@pytest.mark.parametrize("augment", [False, True])
def test_shapes_dtype_and_value_range(tiny_tfds_dir, augment):
    data = _load(tiny_tfds_dir, augment=augment)
    images, labels = next(iter(data.train))
    assert images.shape == (16, 40, 40, 3)
    assert images.dtype.name == "float32"
    assert labels.dtype.is_integer
    values = images.numpy()
    assert values.min() >= -1.0 and values.max() <= 1.0
    # The colour-coded classes span most of the range, so normalization really happened.
    assert values.min() < -0.5 and values.max() > 0.5


def test_normalize_maps_pixel_range_to_minus_one_one():
    np.testing.assert_allclose(normalize(np.array([0.0, 127.5, 255.0])).numpy(), [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("augment", [False, True])
def test_same_seed_gives_same_batches(tiny_tfds_dir, augment):
    first, labels_1 = _collect(_load(tiny_tfds_dir, augment=augment, seed=7).train)
    second, labels_2 = _collect(_load(tiny_tfds_dir, augment=augment, seed=7).train)
    other, _ = _collect(_load(tiny_tfds_dir, augment=augment, seed=8).train)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(labels_1, labels_2)
    assert not np.array_equal(first, other)


def test_augmentation_changes_images_each_epoch(tiny_tfds_dir):
    data = _load(tiny_tfds_dir, augment=True, shuffle_buffer=1)
    epoch_1, labels_1 = _collect(data.train)
    epoch_2, labels_2 = _collect(data.train)
    np.testing.assert_array_equal(labels_1, labels_2)  # buffer 1: same order
    assert not np.array_equal(epoch_1, epoch_2)


def test_eval_splits_are_not_shuffled(tiny_tfds_dir):
    import tensorflow_datasets as tfds

    # At their stored size and in pixels, the evaluation batches are the split's examples in file order.
    data = _load(tiny_tfds_dir, image_size=32, normalization="pixels")
    builder = tfds.builder(TINY, data_dir=tiny_tfds_dir)
    for name, split in [("validation", "train[48:]"), ("test", "test")]:
        stored = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        images, labels = zip(*[(image.numpy(), label.numpy()) for image, label in stored])
        evaluated, evaluated_labels = _collect(getattr(data, name))
        np.testing.assert_array_equal(evaluated_labels, labels, err_msg=name)
        np.testing.assert_array_equal(evaluated, np.stack(images).astype(np.float32), err_msg=name)


def test_max_train_examples_and_no_validation(tiny_tfds_dir):
    data = _load(tiny_tfds_dir, validation_size=0, max_train_examples=10)
    assert data.validation is None
    assert data.num_train == 10 and _count(data.train) == 10


def test_representative_dataset_yields_single_float_examples(tiny_tfds_dir):
    data = _load(tiny_tfds_dir)
    samples = list(representative_dataset(data.train, num_examples=20)())
    assert len(samples) == 20
    assert all(len(s) == 1 and s[0].shape == (1, 40, 40, 3) and s[0].dtype == np.float32 for s in samples)


def test_a_pass_that_stops_early_leaves_every_later_pass_whole(tiny_tfds_dir):
    # A representative dataset reads the first images and stops; TF's in-memory
    # cache then kept only what that pass read (5,000 validation images became 580).
    data = _load(tiny_tfds_dir, batch_size=2, validation_size=40)
    assert len(list(representative_dataset(data.validation, num_examples=2)())) == 2
    assert _count(data.validation) == 40
    assert len(list(representative_dataset(data.test, num_examples=2)())) == 2
    assert _count(data.test) == 20


def test_missing_data_without_download_says_how_to_fix(tmp_path):
    match = r"not prepared in .*download=False`\. Received: dataset='cifar10', data_dir='.*'\. .*TFDS_DATA_DIR"
    with pytest.raises(DataNotFoundError, match=match):
        load_image_data("cifar10", data_dir=str(tmp_path), download=False)


def _partial_copy(tiny_tfds_dir, tmp_path, damage):
    copy = tmp_path / "tfds"
    shutil.copytree(tiny_tfds_dir, copy)
    version = copy / TINY / "1.0.0"
    shard = next(version.glob(f"{TINY}-{'test' if damage == 'missing' else 'train'}.tfrecord-*"))
    if damage == "missing":
        shard.unlink()
    else:
        with open(shard, "r+b") as handle:
            handle.truncate(1000)
    return str(copy)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing", r"is incomplete: split 'test' lacks 1 of its 1 files, e\.g\. .*test\.tfrecord-00000-of-00001"),
        ("truncated", r"is incomplete: the files of split 'train' hold 1000 bytes, fewer than the \d+ recorded .*\(truncated\)"),
    ],
)
def test_partial_data_dir_is_refused_before_training(tiny_tfds_dir, tmp_path, damage, match):
    data_dir = _partial_copy(tiny_tfds_dir, tmp_path, damage)
    fix = r"\. Received: data_dir='.*tfds'\. Copy the whole `edgekeras_tiny_images/1\.0\.0/` directory again"
    with pytest.raises(DataNotFoundError, match=match + fix):
        _load(data_dir)


def test_tfds_data_dir_environment_variable_is_used(tiny_tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_tfds_dir)
    assert load_image_data(TINY, download=False, image_size=32, validation_size=0).num_train == 60


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `dataset` must name a TFDS dataset. Received: dataset='no_such_set'"):
        load_image_data("no_such_set", data_dir=str(tmp_path), download=False)


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("image_size", 0, r"`image_size` must be a positive integer. Received: image_size=0"),
        ("batch_size", 2.5, r"`batch_size` must be a positive integer. Received: batch_size=2.5"),
        ("validation_size", -1, r"`validation_size` must be a non-negative integer. Received: validation_size=-1"),
        ("validation_size", 60, r"`validation_size` must be smaller than the training split \(60 examples\)"),
        ("max_train_examples", 0, r"`max_train_examples` must be a positive integer"),
    ],
)
def test_bad_arguments(tiny_tfds_dir, argument, value, message):
    with pytest.raises(ValueError, match=message):
        _load(tiny_tfds_dir, **{argument: value})


@pytest.mark.real_data
def test_real_cifar10_copy_has_full_splits(shared_data):
    data = load_image_data("cifar10", data_dir=shared_data["tfds"], download=False, validation_size=0, image_size=32)
    assert (data.num_train, data.num_test, data.num_classes) == (50000, 10000, 10)
    default = load_image_data("cifar10", data_dir=shared_data["tfds"], download=False)
    assert (default.num_train, default.num_validation) == (45000, 5000)
    images, labels = next(iter(default.test))
    assert images.shape == (64, 160, 160, 3)


@pytest.mark.parametrize(
    "normalization, expected",
    [
        ("minus_one_to_one", [[-1.0, 0.0, 1.0]]),
        ("zero_to_one", [[0.0, 0.5, 1.0]]),
        ("pixels", [[0.0, 127.5, 255.0]]),
        # BGR, minus the ImageNet means of keras.applications' "caffe" mode.
        ("caffe", [[255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68]]),
        ("torch", [[(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225]]),
    ],
)
def test_normalize_modes(normalization, expected):
    rgb = np.array([[0.0, 127.5, 255.0]])
    np.testing.assert_allclose(normalize(rgb, normalization).numpy(), expected, rtol=1e-5)


def test_pixels_normalization_keeps_the_pixel_range(tiny_tfds_dir):
    images, _ = next(iter(_load(tiny_tfds_dir, normalization="pixels").test))
    values = images.numpy()
    assert values.min() >= 0.0 and values.max() <= 255.0 and values.max() > 200.0


def _train_only_builder_class():
    import tensorflow_datasets as tfds

    class EdgekerasTrainOnlyGray(tfds.core.GeneratorBasedBuilder):
        """Grayscale images of varying sizes, a `train` split only (as tf_flowers has)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(None, None, 1)), "label": tfds.features.ClassLabel(names=["dark", "light"])}
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for index in range(30):
                label = index % 2
                side = 20 + index % 7
                yield index, {"image": np.full((side, side + 3, 1), 40 + 170 * label, np.uint8), "label": label}

    return EdgekerasTrainOnlyGray


@pytest.fixture(scope="module")
def train_only_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_train_only")
    _train_only_builder_class()(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_dataset_without_a_test_split_has_one_carved_from_train(train_only_dir):
    options = dict(data_dir=train_only_dir, download=False, image_size=32, batch_size=8, validation_size=4)
    data = load_image_data("edgekeras_train_only_gray", test_size=6, **options)
    assert data.splits == {"train": "train[:20]", "validation": "train[20:24]", "test": "train[24:]"}
    assert (data.num_train, data.num_validation, data.num_test) == (20, 4, 6)
    assert (_count(data.train), _count(data.validation), _count(data.test)) == (20, 4, 6)
    # Grayscale images of several sizes come out as batched RGB squares.
    images, labels = _collect(data.test)
    assert images.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(images[..., 0], images[..., 2])
    np.testing.assert_allclose(images[labels == 1].max(), 210 / 127.5 - 1, rtol=1e-5)
    # Without test_size, the test split is as large as the validation split.
    assert load_image_data("edgekeras_train_only_gray", **options).num_test == 4


def test_test_size_for_a_dataset_with_a_test_split_is_refused(tiny_tfds_dir):
    with pytest.raises(DataSplitError, match=r"Argument `test_size` must be None when the data have a test split of "
                                             r"their own \(config: `data.test_size` = 0\)\. Received: test_size=5"):
        _load(tiny_tfds_dir, test_size=5)


def _batches(count, sized=True):
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((count * 4, 2), "float32"), np.zeros((count * 4, 2)))).batch(4)
    return dataset if sized else dataset.filter(lambda x, y: True)


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        (_batches(5), {"steps_per_epoch": 3}, 3),  # explicit steps win over the data's length
        (_batches(5, sized=False), {"steps_per_epoch": 3, "num_examples": 100}, 3),
        (_batches(5), {"num_examples": 100, "batch_size": 4}, 5),  # the data's length wins over a count
        (np.zeros((100, 2)), {"batch_size": 32}, 4),
        (np.zeros((100, 2)), {}, 4),  # Keras' default batch size
        (_batches(5, sized=False), {"num_examples": 18, "batch_size": 4}, 5),
        (_batches(5, sized=False), {"num_examples": 18, "batch_size": 4, "passes": 3}, 15),
        (_batches(5).repeat(), {"num_examples": 18}, 1),
    ],
)
def test_steps_per_epoch_explicit_then_length_then_count(x, kwargs, expected):
    assert resolve_steps_per_epoch(x, **kwargs) == expected


def test_steps_per_epoch_of_unknown_data_names_the_argument_and_the_fix():
    match = (r"^Argument `steps_per_epoch` is needed to place the ramp: .* unknown .* Received: steps_per_epoch=None\. "
             r"Pass steps_per_epoch=<batches per epoch> to `search`\.$")
    with pytest.raises(ValueError, match=match):
        resolve_steps_per_epoch(_batches(5).repeat(), batch_size=4, needed_for="to place the ramp", fix=" to `search`")


def _trainer_steps(x, steps):
    return edge_trainer_module.EdgeTrainer(keras.Sequential([keras.layers.Dense(2, input_shape=(2,))]), "sgd",
                                           "mse").fit(x, prune=0.5, prune_epochs=1, steps_per_epoch=steps, verbose=0)


def _stage_steps(x, steps):
    config = types.SimpleNamespace(train=types.SimpleNamespace(steps_per_epoch=steps or 0, cache_passes=1),
                                   data=types.SimpleNamespace(batch_size=4))
    return stages_module._steps_per_epoch(types.SimpleNamespace(config=config, train_data=x,
                                                                data=types.SimpleNamespace(num_train=30)))


# Each caller that lays a schedule out over epochs, and how to make it count the batches of `x`.
CALLERS = {
    "EdgeTrainer.fit": (edge_trainer_module, _trainer_steps),
    "TrialTraining": (training_module, lambda x, steps: training_module._batches_per_epoch(x, None, steps)),
    "run stages": (stages_module, _stage_steps),
}


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize("steps, sized", [(3, True), (None, True), (None, False)])
def test_every_schedule_counts_its_steps_with_the_one_rule(caller, steps, sized, monkeypatch):
    module, count = CALLERS[caller]
    calls = []

    class Counted(Exception):
        pass

    def spy(*args, **kwargs):
        calls.append(args[1])
        raise Counted(resolve_steps_per_epoch(*args, **kwargs))

    monkeypatch.setattr(module, "resolve_steps_per_epoch", spy)
    if steps is None and not sized and caller != "run stages":  # no example count to fall back on
        with pytest.raises(ValueError, match=r"^Argument `steps_per_epoch` is needed to "):
            count(_batches(5, sized), steps)
    else:
        with pytest.raises(Counted) as counted:
            count(_batches(5, sized), steps)
        assert counted.value.args[0] == (steps or (5 if sized else 8))  # 30 examples in batches of 4
    assert calls == [steps]


def test_only_the_rule_reads_the_batches_per_epoch():
    # Another caller of batches_per_epoch would be a second steps-per-epoch rule.
    package = pathlib.Path(edge_trainer_module.__file__).parents[1]
    callers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "data.py" and re.search(r"\bbatches_per_epoch\(", path.read_text())
    ]
    assert callers == []
