"""EdgeTrainer on Keras 3 models: the same phases, the QAT engine chosen by the model's Keras."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from edgekeras import distillation
from edgekeras.distillation import Distillation
from edgekeras.litert import convert, tflite_sparsity
from edgekeras.qat import Keras3QAT, engine_for
from edgekeras.runtime import TFLiteModel
from edgekeras.trainers import EdgeTrainer

SAMPLES, BATCH, CLASSES = 96, 16, 3


def data():
    """Images whose class is their brightest colour channel: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, SAMPLES)
    images = rng.uniform(0.0, 0.5, (SAMPLES, 8, 8, 3)).astype(np.float32)
    images[np.arange(SAMPLES), :, :, labels] += 0.5
    return images, labels


def net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    base = keras.Model(inputs, x, name="base")
    outer = keras.Input((8, 8, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base(outer))
    return keras.Model(outer, keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(pooled))


def op_names(flatbuffer):
    return [op["op_name"] for op in Interpreter(model_content=flatbuffer)._get_ops_details()]


@pytest.fixture(scope="module")
def trained():
    x, y = data()
    trainer = EdgeTrainer(net(), keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    histories = trainer.fit(x, y, batch_size=BATCH, validation_data=(x, y), float_epochs=4, prune=0.5, prune_epochs=2,
                            qat_epochs=2, verbose=0)
    return trainer, histories


def test_every_phase_runs_on_a_flattened_keras3_model_with_its_own_engine(trained):
    trainer, histories = trained
    assert isinstance(trainer.model, keras.Model) and "conv" in [layer.name for layer in trainer.model.layers]
    assert list(histories) == ["float", "prune", "qat"]
    assert {"sparsity", "target_sparsity", "learning_rate"} <= set(histories["prune"])
    assert {"quant_range_width_mean", "quant_range_change", "sparsity"} <= set(histories["qat"])
    assert isinstance(engine_for(trainer.qat_model), Keras3QAT) and engine_for(trainer.qat_model).is_quantization_aware(trainer.qat_model)
    assert trainer.quantize_scheme == "prune_preserve"
    assert trainer.summary()["sparsity"] == pytest.approx({"float": 0.0, "prune": 0.5, "qat": 0.5}, abs=0.01)


def test_the_pqat_file_keeps_the_zeros_has_the_post_training_ops_and_agrees(trained):
    trainer, _ = trained
    x, y = data()
    qat_file = convert(trainer.qat_model, "int8")
    post_training = convert(trainer.pruned_model, "int8", representative_data=x)
    assert op_names(qat_file) == op_names(post_training)
    assert tflite_sparsity(qat_file) >= 0.45
    file_classes = TFLiteModel(qat_file).predict(x).argmax(axis=1)
    keras_classes = trainer.qat_model.predict(x, verbose=0).argmax(axis=1)
    assert np.mean(file_classes == keras_classes) >= 0.95
    assert np.mean(file_classes == y) >= 0.8


def test_mirrored_strategy_trains_a_keras3_model_on_two_replicas():
    script = """
import json, keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from edgekeras.trainers import EdgeTrainer
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pointwise")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
rng = np.random.default_rng(0)
x, y = rng.random((32, 6, 6, 2), dtype=np.float32), rng.integers(0, 3, 32)
trainer = EdgeTrainer(model, "adam", "sparse_categorical_crossentropy")
trainer.fit(x, y, batch_size=8, prune=0.5, prune_epochs=1, qat_epochs=1, verbose=0)
print(json.dumps({"replicas": trainer.strategy.num_replicas_in_sync, "sparsity": trainer.summary()["sparsity"]}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2
    assert summary["sparsity"]["prune"] == pytest.approx(0.5, abs=0.02) and summary["sparsity"]["qat"] == pytest.approx(0.5, abs=0.02)


def test_qat_or_export_on_another_backend_is_refused_before_anything_is_trained_or_written(tmp_path):
    script = f"""
import keras, numpy as np
from edgekeras.litert import export_tflite
from edgekeras.trainers import EdgeTrainer
inputs = keras.Input((4, 4, 3))
model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
x, y = np.zeros((8, 4, 4, 3), np.float32), np.zeros(8, np.int64)
for name, call in [
    ("qat", lambda: EdgeTrainer(model, "adam", "sparse_categorical_crossentropy").fit(x, y, float_epochs=1, qat_epochs=1)),
    ("export", lambda: export_tflite(model, {str(tmp_path / "m.tflite")!r}, "float32")),
]:
    weights = [w.copy() for w in model.get_weights()]
    try:
        call()
    except Exception as error:
        print(name, type(error).__name__, str(error).split(".")[0], all((a == b).all() for a, b in zip(weights, model.get_weights())))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND="jax"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()[-2:]
    expected = "BackendError Quantization-aware training and TFLite export of Keras 3 models need the TensorFlow backend True"
    assert lines == [f"qat {expected}", f"export {expected}"]
    assert list(tmp_path.iterdir()) == []


def test_distillation_packs_the_float_models_outputs_into_a_keras3_loss(monkeypatch):
    x, y = data()
    seen = []
    call = distillation.Keras3DistillationLoss.call

    def spy(self, y_true, y_pred):
        seen.append(np.array(y_true))
        return call(self, y_true, y_pred)

    monkeypatch.setattr(distillation.Keras3DistillationLoss, "call", spy)
    trainer = EdgeTrainer(net(), "adam", "sparse_categorical_crossentropy", ["accuracy"], compile_kwargs={"run_eagerly": True},
                          distillation=Distillation(temperature=2.0, weight=0.7, phases=("prune",)))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    histories = trainer.fit(batches, float_epochs=1, prune=0.5, prune_epochs=1, verbose=0)
    assert isinstance(trainer.model.loss, distillation.Keras3DistillationLoss) and trainer.model.loss.weight == 0.7
    assert "accuracy" in histories["prune"] and len(seen) == SAMPLES // BATCH
    expected = distillation.pack_labels(y, trainer.float_model.predict(x, verbose=0))
    np.testing.assert_allclose(np.concatenate(seen), expected, rtol=1e-5, atol=1e-6)


def test_the_keras3_distillation_loss_and_metric_compute_what_the_tf_keras_ones_do():
    labels, teacher = np.array([0, 2, 1]), np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]], np.float32)
    student = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.6, 0.2, 0.2]], np.float32)
    packed = distillation.pack_labels(labels, teacher)
    settings = Distillation(temperature=3.0, weight=0.4)
    tf_keras_loss = float(settings.loss()(packed, student))
    keras3_loss = float(settings.loss(keras)(packed, student))
    assert keras3_loss == pytest.approx(tf_keras_loss, rel=1e-6) and keras3_loss > 0
    metric = settings.metrics(keras)[0]
    metric.update_state(packed, student)
    assert float(metric.result()) == pytest.approx(2 / 3) and metric.name == "accuracy"
