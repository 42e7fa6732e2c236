"""EdgeTrainer with distillation, learning-rate schedules per phase, global allocation and epoch numbering."""

import numpy as np
import pytest
import tensorflow as tf

from edgekeras import distillation, keras
from edgekeras.distillation import Distillation
from edgekeras.schedules import ConstantSparsity
from edgekeras.trainers import EdgeTrainer, phase_optimizer

SAMPLES, BATCH, CLASSES = 48, 8, 3


def net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pointwise")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def data():
    rng = np.random.default_rng(0)
    return rng.random((SAMPLES, 6, 6, 2), dtype=np.float32), rng.integers(0, CLASSES, SAMPLES)


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_pruning_distils_from_the_float_model_computing_its_outputs_once(monkeypatch):
    calls = []
    original = distillation.teacher_outputs
    monkeypatch.setattr(distillation, "teacher_outputs", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, y = data()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"],
                          distillation=Distillation(temperature=2.0, weight=0.7, phases=("prune",)))
    histories = trainer.fit(x, y, batch_size=BATCH, validation_data=(x, y), float_epochs=1, prune=0.5, prune_epochs=2)
    assert calls == [1]  # once for the two pruning epochs
    assert {"accuracy", "val_accuracy", "sparsity"} <= set(histories["prune"])
    assert isinstance(trainer.model.loss, distillation.DistillationLoss)
    assert trainer.model.loss.temperature == 2.0 and trainer.model.loss.weight == 0.7


def test_float_phase_keeps_the_users_loss_when_only_pruning_distils():
    x, y = data()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"],
                          distillation=Distillation(phases=("prune",)))
    trainer.fit(x, y, batch_size=BATCH, float_epochs=1)
    assert trainer.model.loss == "sparse_categorical_crossentropy"


def test_packed_datasets_pass_through_and_plain_ones_get_the_teacher_per_batch(monkeypatch):
    x, y = data()
    packed = distillation.pack_labels(y, np.full((SAMPLES, CLASSES), 1 / CLASSES, np.float32))
    monkeypatch.setattr(distillation, "with_teacher", lambda *a: pytest.fail("packed labels were packed again"))
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"], distillation=Distillation())
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, packed)).batch(BATCH), prune=0.5, prune_epochs=1)
    assert trainer.summary()["sparsity"]["prune"] == pytest.approx(0.5, abs=0.05)
    monkeypatch.undo()
    # The loss falls back to cross-entropy on plain labels, so what it receives is checked:
    # each batch's labels followed by the float model's outputs (run eagerly to read them).
    seen = []
    call = distillation.DistillationLoss.call

    def spy(self, y_true, y_pred):
        seen.append(np.array(y_true))
        return call(self, y_true, y_pred)

    monkeypatch.setattr(distillation.DistillationLoss, "call", spy)
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"],
                          compile_kwargs={"run_eagerly": True}, distillation=Distillation())
    histories = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), prune=0.5, prune_epochs=1)
    assert "accuracy" in histories["prune"]
    assert len(seen) == SAMPLES // BATCH
    expected = distillation.pack_labels(y, trainer.float_model.predict(x, verbose=0))
    np.testing.assert_allclose(np.concatenate(seen), expected, rtol=1e-5, atol=1e-6)


def test_distillation_needs_arrays_or_a_dataset():
    x, y = data()

    def batches():
        while True:
            yield x[:BATCH], y[:BATCH]

    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", distillation=Distillation())
    with pytest.raises(ValueError, match=r"Argument `x` must be arrays \(with `y`\) or a tf.data.Dataset"):
        trainer.fit(batches(), prune=ConstantSparsity(0.5, begin_step=0, frequency=1), prune_epochs=1,
                    steps_per_epoch=2)


def test_distillation_argument_checked():
    with pytest.raises(ValueError, match=r"Argument `distillation` must be None or an edgekeras.distillation.Distillation"):
        EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", distillation={"weight": 0.5})


def test_initial_epoch_numbers_the_phases_after_an_earlier_fit():
    x, y = data()
    epochs = Epochs()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy")
    trainer.fit(x, y, batch_size=BATCH, prune=0.5, prune_epochs=2, initial_epoch=3, callbacks=[epochs])
    assert epochs.seen == [3, 4]


def test_global_allocation_reaches_the_target_over_the_pruned_layers():
    x, y = data()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", prune_allocation="global",
                          max_layer_sparsity=0.9)
    trainer.fit(x, y, batch_size=BATCH, prune=0.6, prune_epochs=2)
    assert trainer.summary()["sparsity"]["prune"] == pytest.approx(0.6, abs=0.01)


def test_prune_phase_rate_warms_up_then_follows_a_cosine():
    make = phase_optimizer({"float": 1e-3, "prune": 4e-4, "qat": 1e-5}, decay_steps={"prune": 100},
                           warmup_steps={"prune": 10})
    schedule = make("prune").learning_rate if callable(make("prune").learning_rate) else make("prune")._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates == pytest.approx([0.0, 2e-4, 4e-4, 2e-4, 0.0], abs=1e-6)
    assert float(keras.backend.get_value(make("float").learning_rate)) == pytest.approx(1e-3)


def test_warmup_must_fit_in_the_decay():
    with pytest.raises(ValueError, match=r"Argument `warmup_steps` must be within the phase's `decay_steps` \(100\)"):
        phase_optimizer({"float": 1e-3, "prune": 4e-4, "qat": 1e-5}, decay_steps={"prune": 100},
                        warmup_steps={"prune": 100})


def test_qat_distils_from_the_model_it_quantizes_per_batch(monkeypatch):
    teachers = []
    original = distillation.with_teacher
    monkeypatch.setattr(distillation, "with_teacher", lambda data, teacher: teachers.append(teacher) or original(data, teacher))
    x, y = data()
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"],
                          distillation=Distillation(phases=("qat",)))
    histories = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), qat_epochs=1)
    assert teachers == [trainer.model]  # the float model, not its quantization-aware copy
    assert isinstance(trainer.qat_model.loss, distillation.DistillationLoss)
    assert "accuracy" in histories["qat"]
