"""`EdgeTrainer.fit` checks its data against the model and the loss before the first epoch (issue #14, goal 4)."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from edgekeras import keras
from edgekeras.trainers import EdgeTrainer
from edgekeras.trainers.checks import check_inputs

SAMPLES = 16
BATCH = 4
SIZE = 16
CLASSES = 3
SPARSE = "sparse_categorical_crossentropy"
CATEGORICAL = "categorical_crossentropy"


def image_model(size=SIZE, channels=3, classes=CLASSES):
    inputs = keras.Input((size, size, channels), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name="tiny")


def two_input_model():
    image = keras.Input((SIZE, SIZE, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    x = keras.layers.Concatenate()([x, meta])
    return keras.Model([image, meta], keras.layers.Dense(CLASSES)(x), name="two")


def nested_model():
    """A sub-model inside a model, as `keras.applications` bases are used; EdgeTrainer flattens it."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    return keras.Model(inputs, image_model()(inputs), name="nested")


def features_model(features=4):
    inputs = keras.Input((features,), name="features")
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(inputs), name="dense")


def images(size=SIZE, channels=3):
    return np.random.default_rng(0).random((SAMPLES, size, size, channels), dtype=np.float32)


def labels(classes=CLASSES):
    return np.arange(SAMPLES) % classes


def one_hot(classes=CLASSES):
    return np.eye(classes, dtype=np.float32)[labels(classes)]


def batched(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


# (id, model, fit arguments, loss, message): one error branch each, raised by EdgeTrainer.fit.
ERRORS = [
    (
        "unbatched dataset", image_model, lambda: {"x": tf.data.Dataset.from_tensor_slices((images(), labels()))}, SPARSE,
        r"Argument `x` yields unbatched examples of shape \(16, 16, 3\), but input 'image' of model 'tiny' takes "
        r"batches of shape \(None, 16, 16, 3\)\. Received: x=<_TensorSliceDataset element_spec=.*>\. "
        r"Batch it: dataset\.batch\(64\)\.",
    ),
    (
        "one-hot labels with a sparse loss", image_model, lambda: {"x": images(), "y": one_hot()}, SPARSE,
        r"Argument `y` holds one-hot labels \(rows of 3 values\), but 'sparse_categorical_crossentropy' expects "
        r"integer class ids, one per example\. Received: labels of shape \(16, 3\) and "
        r"loss='sparse_categorical_crossentropy'\. Use loss='categorical_crossentropy' with one-hot labels, or "
        r"turn them into class ids: np\.argmax\(y, axis=-1\)\.",
    ),
    (
        "one-hot labels in a dataset with a sparse loss object", image_model, lambda: {"x": batched(images(), one_hot())},
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        r"Argument `x` holds one-hot labels \(rows of 3 values\), but SparseCategoricalCrossentropy\(\) expects .*"
        r"Received: labels of shape \(4, 3\) in the first batch and loss=SparseCategoricalCrossentropy\(\)\. .*"
        r"dataset\.map\(lambda x, y: \(x, tf\.argmax\(y, axis=-1\)\)\)",
    ),
    (
        "class ids with a categorical loss", image_model, lambda: {"x": images(), "y": labels()}, CATEGORICAL,
        r"Argument `y` holds integer class ids, but 'categorical_crossentropy' expects one-hot labels of 3 classes "
        r"\(rows of 3 values\)\. Received: labels of shape \(16,\) and loss='categorical_crossentropy'\. Use "
        r"loss='sparse_categorical_crossentropy' with class ids, or one-hot them: keras\.utils\.to_categorical\(y, 3\)\.",
    ),
    (
        "image size", lambda: image_model(size=24), lambda: {"x": batched(images(), labels())}, SPARSE,
        r"Argument `x` yields images of 16x16 pixels in the first batch, but model 'tiny' was built for 24x24 "
        r"\(input 'image' of shape \(None, 24, 24, 3\)\)\. Received: x=<_BatchDataset .*>\. Resize the images to "
        r"24x24 \(dataset\.map\(lambda image, label: \(tf\.image\.resize\(image, \(24, 24\)\), label\)\)\) or build "
        r"the model for the data's images \(input_shape=\(16, 16, 3\)\)\.",
    ),
    (
        "channels", image_model, lambda: {"x": images(channels=1), "y": labels()}, SPARSE,
        r"Argument `x` yields images of 1 channel, but model 'tiny' takes 3 \(input 'image' of shape "
        r"\(None, 16, 16, 3\)\)\. Received: x=array of shape \(16, 16, 16, 1\)\. Convert them with "
        r"tf\.image\.grayscale_to_rgb, or build the model for 1-channel images \(input_shape=\(16, 16, 1\)\)\.",
    ),
    (
        "feature shape", features_model, lambda: {"x": np.zeros((SAMPLES, 5), np.float32), "y": labels()}, SPARSE,
        r"Argument `x` yields inputs of shape \(16, 5\), but input 'features' of model 'dense' takes shape "
        r"\(None, 4\)\. Received: x=array of shape \(16, 5\)\. Give examples of shape \(4,\), or build the model "
        r"for the data \(keras\.Input\(shape=\(5,\)\)\)\.",
    ),
    (
        "class ids beyond the outputs", image_model, lambda: {"x": images(), "y": labels(classes=5)}, SPARSE,
        r"Argument `x`/`y` does not match the number of classes of model 'tiny', which has 3 outputs \(class ids "
        r"0 to 2\)\. Received: class ids from 0 to 4\. Build the model with the data's number of classes",
    ),
    (
        "one-hot labels of more classes than outputs", image_model, lambda: {"x": batched(images(), one_hot(classes=5))},
        CATEGORICAL,
        r"Argument `x`/`y` does not match the number of classes of model 'tiny', which has 3 outputs \(class ids "
        r"0 to 2\)\. Received: one-hot labels of 5 classes in the first batch\.",
    ),
    (
        "validation class ids", image_model,
        lambda: {"x": images(), "y": labels(), "validation_data": (images(), labels(classes=5))}, SPARSE,
        r"Argument `validation_data` does not match the number of classes of model 'tiny', which has 3 outputs "
        r"\(class ids 0 to 2\)\. Received: class ids from 0 to 4\.",
    ),
    (
        "validation unbatched", image_model,
        lambda: {"x": images(), "y": labels(), "validation_data": tf.data.Dataset.from_tensor_slices((images(), labels()))},
        SPARSE, r"Argument `validation_data` yields unbatched examples of shape \(16, 16, 3\).*Batch it: dataset\.batch\(64\)\.",
    ),
    (
        "dict keys", image_model, lambda: {"x": batched({"img": images()}, labels())}, SPARSE,
        r"Argument `x` yields a dict with keys \['img'\], but model 'tiny' has inputs named \['image'\] \(missing: "
        r"\['image'\]\)\. Received: x=<_BatchDataset .*>\. Key the dict by the model's input names, or name each "
        r"input after its key: keras\.Input\(shape, name=key\)\.",
    ),
    (
        "number of inputs", two_input_model, lambda: {"x": images(), "y": labels()}, SPARSE,
        r"Argument `x` yields 1 input\(s\), but model 'two' has 2 inputs \['image', 'meta'\]\. Received: x=array of "
        r"shape \(16, 16, 16, 3\)\. Give one array per input: a tuple in the model's input order or a dict keyed by "
        r"input name\.",
    ),
]


@pytest.mark.parametrize("make_model, make_data, loss, message", [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_bad_data_fails_before_the_first_epoch(make_model, make_data, loss, message):
    model = make_model()
    before = [weight.copy() for weight in model.get_weights()]
    trainer = EdgeTrainer(model, "adam", loss)
    with pytest.raises(ValueError, match=message):
        trainer.fit(**make_data(), float_epochs=1, verbose=0)
    assert trainer.histories == {}
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def custom_loss(y_true, y_pred):
    return tf.reduce_mean(tf.square(tf.cast(y_true, tf.float32) - y_pred))


class Batches(keras.utils.Sequence):
    def __getitem__(self, index):
        start = index * BATCH
        return images()[start:start + BATCH], labels()[start:start + BATCH]

    def __len__(self):
        return SAMPLES // BATCH


# (id, model, check_inputs arguments, loss): data that matches the model and the loss.
PASSES = [
    ("numpy arrays", image_model, lambda: {"x": images(), "y": labels()}, SPARSE),
    ("one-hot labels with a categorical loss", image_model, lambda: {"x": batched(images(), one_hot())}, CATEGORICAL),
    ("one-hot labels with a categorical loss object", image_model, lambda: {"x": images(), "y": one_hot()},
     keras.losses.CategoricalCrossentropy(from_logits=True)),
    ("class ids with a sparse loss object", image_model, lambda: {"x": batched(images(), labels())},
     keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ("float class ids with a sparse loss", image_model, lambda: {"x": images(), "y": labels().astype(np.float32)}, SPARSE),
    ("class ids as a column", image_model, lambda: {"x": images(), "y": labels()[:, None]}, SPARSE),
    ("custom loss, one-hot labels", image_model, lambda: {"x": images(), "y": one_hot()}, custom_loss),
    ("custom loss, class ids", image_model, lambda: {"x": batched(images(), labels())}, custom_loss),
    ("grayscale without a channel axis", lambda: image_model(channels=1), lambda: {"x": images(channels=1)[..., 0], "y": labels()},
     SPARSE),
    ("dict input", image_model, lambda: {"x": batched({"image": images()}, labels())}, SPARSE),
    ("dict with an extra key", image_model, lambda: {"x": batched({"image": images(), "id": np.arange(SAMPLES)}, labels())},
     SPARSE),
    ("two inputs as a dict", two_input_model,
     lambda: {"x": batched({"meta": np.zeros((SAMPLES, 4), np.float32), "image": images()}, labels())}, SPARSE),
    ("two inputs as a tuple", two_input_model, lambda: {"x": (images(), np.zeros((SAMPLES, 4), np.float32)), "y": labels()},
     SPARSE),
    ("batches of one scalar", lambda: features_model(1),
     lambda: {"x": tf.data.Dataset.from_tensor_slices((np.zeros(SAMPLES, np.float32), labels())).batch(1)}, SPARSE),
    ("a Sequence", image_model, lambda: {"x": Batches(), "validation_data": Batches()}, SPARSE),
    ("validation arrays", image_model, lambda: {"x": images(), "y": labels(), "validation_data": (images(), labels())}, SPARSE),
]


@pytest.mark.parametrize("make_model, make_data, loss", [case[1:] for case in PASSES], ids=[case[0] for case in PASSES])
def test_matching_data_passes(make_model, make_data, loss):
    check_inputs(make_model(), **make_data(), loss=loss)


@pytest.mark.parametrize(
    "make_model, x",
    [
        (image_model, lambda: batched({"image": images()}, labels())),
        (nested_model, lambda: batched({"image": images()}, labels())),
        (two_input_model, lambda: batched({"image": images(), "meta": np.zeros((SAMPLES, 4), np.float32)}, labels())),
    ],
    ids=["dict input", "nested model, dict input", "two inputs"],
)
def test_dict_and_multi_input_data_trains(make_model, x):
    trainer = EdgeTrainer(make_model(), "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    histories = trainer.fit(x(), validation_data=x(), float_epochs=1, verbose=0)
    assert len(histories["float"]["loss"]) == 1


def test_a_generator_is_not_read():
    def generator():
        for start in range(0, SAMPLES, BATCH):
            yield images()[start:start + BATCH], labels(classes=5)[start:start + BATCH]

    batches = generator()
    check_inputs(image_model(), batches, loss=SPARSE)
    assert len(list(batches)) == SAMPLES // BATCH


def _endless(read, stop):
    """An endless dataset of batches that appends to `read` for each batch taken.

    It ends once `stop` is set or after 1,000 batches, so that a check reading it whole fails on
    the count instead of filling the memory.
    """
    x, y = images()[:BATCH], labels()[:BATCH]

    def generate():
        while not stop.is_set() and len(read) < 1000:
            read.append(1)
            yield x, y

    signature = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def test_an_endless_dataset_is_read_one_batch_at_most():
    train, validation, stop, errors = [], [], threading.Event(), []

    def check():
        try:
            check_inputs(image_model(), _endless(train, stop), loss=SPARSE, validation_data=_endless(validation, stop))
        except Exception as error:  # re-raised below, in the test's thread
            errors.append(error)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=30)
    stop.set()  # ends a runaway read, so that a hung check does not keep reading after the test
    assert not worker.is_alive(), f"check_inputs still running after 30 s: {len(train)} training batches read"
    if errors:
        raise errors[0]
    assert (len(train), len(validation)) == (1, 1)
