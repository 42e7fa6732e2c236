import inspect
import re

import numpy as np
import pytest
import tensorflow as tf

from edgekeras import distillation
from edgekeras.compat import keras
from edgekeras.distillation import (
    Distillation,
    DistillationLoss,
    LabelAccuracy,
    is_packed,
    pack_labels,
    teacher_outputs,
    with_teacher,
)

LABELS = np.array([0, 2, 1])
TEACHER = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]], dtype=np.float32)
STUDENT = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]], dtype=np.float32)


def _reference(labels, teacher, student, temperature, weight):
    """The distillation loss, by hand: mean over the batch."""
    cross_entropy = -np.log(student[np.arange(len(labels)), labels])

    def soften(probabilities):
        powered = probabilities.astype(np.float64) ** (1.0 / temperature)
        return powered / powered.sum(axis=-1, keepdims=True)

    q, p = soften(teacher), soften(student)
    kl = (q * np.log(q / p)).sum(axis=-1)
    return np.mean((1 - weight) * cross_entropy + weight * temperature**2 * kl)


class CountingTeacher(keras.Model):
    """A softmax teacher (with dropout) that counts the examples it sees."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.dropout = keras.layers.Dropout(0.5)
        self.dense = keras.layers.Dense(num_classes, activation="softmax")
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, x, training=None):
        self.seen.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return self.dense(self.dropout(x, training=training))


def _data(count=24, features=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    x = rng.normal(0, 0.3, (count, features)).astype(np.float32)
    x[np.arange(count), labels] += 2.0
    return x, labels


def _teacher():
    keras.utils.set_random_seed(0)
    teacher = CountingTeacher()
    teacher(np.zeros((1, 4), np.float32))
    teacher.seen.assign(0)
    return teacher


def _student():
    keras.utils.set_random_seed(1)
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    student.compile(keras.optimizers.SGD(0.1), DistillationLoss(temperature=2.0, weight=0.5), metrics=[LabelAccuracy()])
    return student


# The loss.


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("weight", [0.3, 0.9])
def test_loss_is_the_formula(temperature, weight):
    loss = DistillationLoss(temperature=temperature, weight=weight)
    value = loss(pack_labels(LABELS, TEACHER), STUDENT)
    np.testing.assert_allclose(value.numpy(), _reference(LABELS, TEACHER, STUDENT, temperature, weight), rtol=1e-5)


def test_weight_zero_is_cross_entropy():
    value = DistillationLoss(temperature=3.0, weight=0.0)(pack_labels(LABELS, TEACHER), STUDENT)
    np.testing.assert_allclose(value.numpy(), np.mean(-np.log(STUDENT[np.arange(3), LABELS])), rtol=1e-6)


@pytest.mark.parametrize("labels", [LABELS, LABELS[:, None], LABELS.astype(np.float32)[:, None]], ids=["rank1", "column", "float"])
def test_plain_labels_give_cross_entropy(labels):
    value = DistillationLoss(weight=0.9)(labels, STUDENT)
    np.testing.assert_allclose(value.numpy(), np.mean(-np.log(STUDENT[np.arange(3), LABELS])), rtol=1e-6)


def test_loss_reads_labels_of_unknown_width():
    loss = DistillationLoss(temperature=2.0, weight=0.5)
    compute = tf.function(loss.__call__, input_signature=[tf.TensorSpec((None, None)), tf.TensorSpec((None, 3))])
    packed, plain = pack_labels(LABELS, TEACHER), LABELS[:, None].astype(np.float32)
    np.testing.assert_allclose(compute(packed, STUDENT).numpy(), _reference(LABELS, TEACHER, STUDENT, 2.0, 0.5), rtol=1e-5)
    np.testing.assert_allclose(compute(plain, STUDENT).numpy(), _reference(LABELS, TEACHER, STUDENT, 2.0, 0.0), rtol=1e-5)


def test_loss_rejects_labels_packed_for_other_classes():
    with pytest.raises(ValueError, match=re.escape("1 + 3 columns for 3 classes, or plain labels. Received: y_true with 5 columns")):
        DistillationLoss()(np.zeros((3, 5), np.float32), STUDENT)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"temperature": 0}, "Argument `temperature` must be a finite number > 0. Received: temperature=0"),
        ({"temperature": float("inf")}, "Received: temperature=inf"),
        ({"temperature": True}, "Received: temperature=True"),
        ({"weight": 1.5}, re.escape("Argument `weight` (the share of the teacher term) must be in [0, 1]. Received: weight=1.5")),
        ({"weight": -0.1}, "Received: weight=-0.1"),
    ],
)
def test_loss_checks_its_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**arguments)


# The metric.


def test_label_accuracy_reads_the_label_column():
    metric = LabelAccuracy()
    metric.update_state(pack_labels(LABELS, TEACHER), STUDENT)  # argmax 0, 2, 0: two of three right
    np.testing.assert_allclose(metric.result().numpy(), 2 / 3, rtol=1e-6)


@pytest.mark.parametrize("labels", [LABELS, LABELS[:, None]], ids=["rank1", "column"])
def test_label_accuracy_reads_plain_labels(labels):
    metric = LabelAccuracy()
    metric.update_state(labels, STUDENT)
    np.testing.assert_allclose(metric.result().numpy(), 2 / 3, rtol=1e-6)


def test_loss_and_metric_configs_round_trip():
    loss = DistillationLoss(temperature=2.5, weight=0.25, name="kd")
    again = DistillationLoss.from_config(loss.get_config())
    assert (again.temperature, again.weight, again.name) == (2.5, 0.25, "kd")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, DistillationLoss) and again.get_config() == loss.get_config()
    metric = LabelAccuracy.from_config(LabelAccuracy(name="top1").get_config())
    assert isinstance(metric, LabelAccuracy) and metric.name == "top1"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(LabelAccuracy()))
    assert isinstance(again, LabelAccuracy) and again.name == "accuracy"


# Packing labels.


def test_pack_labels_puts_the_label_first():
    packed = pack_labels(LABELS[:, None], TEACHER.astype(np.float64))
    assert packed.dtype == np.float32 and packed.shape == (3, 4)
    np.testing.assert_array_equal(packed[:, 0], LABELS)
    np.testing.assert_array_equal(packed[:, 1:], TEACHER)


@pytest.mark.parametrize(
    "labels, outputs, message",
    [
        (np.zeros((3, 2), int), TEACHER, re.escape("Argument `labels` must have shape (N,) or (N, 1). Received: labels of shape (3, 2)")),
        (LABELS, TEACHER[0], re.escape("Argument `teacher_outputs` must have shape (N, num_classes). Received: shape (3,)")),
        (
            np.arange(90) % 3,
            np.full((100, 3), 1 / 3),
            "Argument `teacher_outputs` must have one row per label. Received: 100 rows for 90 labels",
        ),
        (np.array([0.5, 1, 2]), TEACHER, re.escape("Argument `labels` must be integer class ids in [0, 3) for a teacher with 3 classes")),
        (np.array([0, 3, 1]), TEACHER, re.escape("for a teacher with 3 classes. Received: labels of dtype int64: [0, 3, 1]")),
        (LABELS, np.log(TEACHER), "must hold probabilities .* not logits. Received: values in"),
    ],
    ids=["labels-shape", "teacher-shape", "rows", "fractional", "range", "logits"],
)
def test_pack_labels_errors(labels, outputs, message):
    with pytest.raises(ValueError, match=message):
        pack_labels(labels, outputs)


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.zeros((8, 4)), True),
        (tf.TensorSpec((None, 4)), True),
        (tf.zeros((2, 4)), True),
        (np.zeros((8, 1)), False),
        (tf.TensorSpec((None,), tf.int64), False),
        (np.zeros(4), False),
        (tf.TensorSpec(None), False),
        ([[0, 0.5, 0.5, 0]], True),
    ],
)
def test_is_packed(value, expected):
    assert is_packed(value, num_classes=3) is expected


# The teacher's outputs, once.


def test_teacher_outputs_are_its_predictions_and_it_runs_once_per_example():
    x, _ = _data()
    teacher = _teacher()
    probabilities = teacher_outputs(teacher, x, batch_size=5)
    assert probabilities.dtype == np.float32 and probabilities.shape == (24, 3)
    assert int(teacher.seen.numpy()) == 24
    np.testing.assert_allclose(probabilities, teacher(x, training=False).numpy(), rtol=1e-6)


def test_teacher_outputs_of_a_large_float16_array_take_it_batch_by_batch(monkeypatch):
    # Cached activations are float16 and can be gigabytes: `predict` on an array converts all of it to
    # one float32 tensor first, so the array must reach the teacher one batch at a time.
    x, _ = _data(count=40)
    teacher = _teacher()
    given = []
    for method in ("predict", "predict_on_batch", "__call__"):
        original = getattr(teacher, method)
        monkeypatch.setattr(teacher, method, lambda value, *args, _run=original, **kwargs: (
            given.append(len(value)), _run(value, *args, **kwargs))[1])
    probabilities = teacher_outputs(teacher, x.astype(np.float16), batch_size=16)
    monkeypatch.undo()
    assert given and max(given) <= 16, given
    assert int(teacher.seen.numpy()) == 40
    np.testing.assert_allclose(probabilities, teacher(x.astype(np.float16).astype(np.float32)).numpy(), rtol=1e-5)


def test_teacher_outputs_of_a_dataset_match_the_array_ones():
    x, y = _data()
    teacher = _teacher()
    expected = teacher_outputs(teacher, x)
    for elements in [x, (x, y)]:
        dataset = tf.data.Dataset.from_tensor_slices(elements).batch(7)
        np.testing.assert_allclose(teacher_outputs(teacher, dataset), expected, rtol=1e-6)


def test_fitting_on_cached_outputs_never_calls_the_teacher():
    x, y = _data()
    teacher = _teacher()
    packed = pack_labels(y, teacher_outputs(teacher, x))
    assert int(teacher.seen.numpy()) == 24
    _student().fit(x, packed, batch_size=8, epochs=2, verbose=0)
    assert int(teacher.seen.numpy()) == 24


def test_teacher_outputs_errors():
    x, _ = _data()
    with pytest.raises(ValueError, match="Argument `batch_size` must be a positive integer. Received: batch_size=0"):
        teacher_outputs(_teacher(), x, batch_size=0)
    inputs = keras.Input((4,))
    two = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match=re.escape("must have one (batch, num_classes) output of probabilities. Received: 2 outputs")):
        teacher_outputs(two, x)
    with pytest.raises(TypeError, match=r"Argument `teacher` must be a Keras model \(tf_keras or Keras 3 `keras.Model`\)"):
        teacher_outputs(lambda batch: batch, x)


# The teacher on each batch.


def test_with_teacher_packs_each_batch_in_inference_mode():
    x, y = _data()
    teacher = _teacher()
    batches = list(with_teacher(tf.data.Dataset.from_tensor_slices((x, y)).batch(10), teacher))
    assert [tuple(packed.shape) for _, packed in batches] == [(10, 4), (10, 4), (4, 4)]
    assert int(teacher.seen.numpy()) == 24
    for inputs, packed in batches:
        np.testing.assert_allclose(packed[:, 1:].numpy(), teacher(inputs, training=False).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([packed[:, 0] for _, packed in batches]), y)


def test_with_teacher_keeps_sample_weights_and_trains_a_student():
    x, y = _data()
    weights = np.linspace(0.5, 1.5, 24).astype(np.float32)
    dataset = with_teacher(tf.data.Dataset.from_tensor_slices((x, y[:, None], weights)).batch(8), _teacher())
    assert dataset.element_spec[1].shape.as_list() == [None, 4]
    np.testing.assert_allclose(np.concatenate([w.numpy() for _, _, w in dataset]), weights)
    history = _student().fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_with_teacher_errors():
    teacher = _teacher()
    x, y = _data()
    with pytest.raises(TypeError, match="Argument `dataset` must be a tf.data.Dataset. Received: dataset="):
        with_teacher((x, y), teacher)
    with pytest.raises(ValueError, match=re.escape("must yield (x, y) or (x, y, sample_weight) batches. Received: element_spec=")):
        with_teacher(tf.data.Dataset.from_tensor_slices(x).batch(4), teacher)
    one_hot = tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])).batch(4)
    with pytest.raises(ValueError, match=re.escape("class ids `y` of shape (batch,) or (batch, 1), not one-hot")):
        with_teacher(one_hot, teacher)


# Training.


def test_a_student_keeps_accuracy_and_val_accuracy_in_history():
    x, y = _data()
    x_val, y_val = _data(count=9, seed=1)
    student = _student()
    packed = pack_labels(y, teacher_outputs(_teacher(), x))
    history = student.fit(x, packed, batch_size=8, epochs=2, validation_data=(x_val, y_val), verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    probabilities = student.predict(x_val, verbose=0)
    np.testing.assert_allclose(history.history["val_accuracy"][-1], np.mean(probabilities.argmax(axis=1) == y_val), rtol=1e-6)
    np.testing.assert_allclose(history.history["val_loss"][-1], np.mean(-np.log(probabilities[np.arange(9), y_val])), rtol=1e-4)


# The settings.


def test_distillation_settings():
    settings = Distillation(temperature=2, weight=0.7, phases=["qat"])
    assert settings.phases == ("qat",) and Distillation().phases == ("channels", "prune", "qat")
    loss = settings.loss()
    assert isinstance(loss, DistillationLoss) and (loss.temperature, loss.weight) == (2.0, 0.7)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"temperature": -1.0}, "Argument `temperature` must be a finite number > 0. Received: temperature=-1.0"),
        ({"weight": 2}, re.escape("must be in [0, 1]. Received: weight=2")),
        ({"phases": ()}, re.escape("must be a non-empty tuple of distinct phases from ('channels', 'prune', 'qat'). Received: phases=()")),
        ({"phases": ("prune", "train")}, re.escape("Received: phases=('prune', 'train')")),
        ({"phases": ("qat", "qat")}, re.escape("Received: phases=('qat', 'qat')")),
        ({"phases": "qat"}, "Received: phases='qat'"),
    ],
    ids=["temperature", "weight", "empty", "unknown", "repeated", "string"],
)
def test_distillation_settings_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        Distillation(**arguments)


def _comment_above(module, name):
    """The comment lines right above `name = ...` in the module's source."""
    lines = inspect.getsource(module).splitlines()
    line = next(index for index, text in enumerate(lines) if text.startswith(f"{name} = "))
    comment = []
    while line > 0 and lines[line - 1].startswith("#"):
        line -= 1
        comment.insert(0, lines[line].lstrip("# "))
    return " ".join(comment)


@pytest.mark.parametrize("name", distillation.__all__)
def test_public_names_are_documented_and_their_examples_run(name):
    value = getattr(distillation, name)
    if not callable(value):
        # A constant has no docstring of its own: the comment above its assignment documents it.
        assert len(_comment_above(distillation, name).split()) >= 3, f"{name} has no comment above it"
        return
    doc = inspect.getdoc(value)
    assert "Args:" in doc and "Example:" in doc
    for block in re.findall(r"```python\n(.*?)```", doc, flags=re.S):
        exec(block, {"np": np, "tf": tf, "keras": keras, **{n: getattr(distillation, n) for n in distillation.__all__}})


def test_phases_are_the_trainer_phases_after_the_float_one():
    from edgekeras.trainers import PHASES as TRAINER_PHASES

    # The float model is the teacher, so every later phase can distil, and by default does.
    assert distillation.PHASES == tuple(phase for phase in TRAINER_PHASES if phase != "float")
    assert Distillation().phases == distillation.PHASES
    assert all(Distillation(phases=(phase,)).phases == (phase,) for phase in distillation.PHASES)
