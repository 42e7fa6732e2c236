"""`edgekeras run` killed in the middle of quantization-aware training, then resumed.

The default suite's small case of the slow SIGKILL test (tests/app/test_faults.py): a
tiny model of a factory, so that QAT and PQAT trace in seconds, killed in-process
at a chosen QAT batch. The resumed run must continue QAT from its last finished
epoch, not train the finished phases or epochs again, and finish a complete run.
"""

import json

import numpy as np
import pytest

from edgekeras.app.pipeline import run, verify_run_dir
from edgekeras.app.report import validate_report
from edgekeras.backend import Callback
from edgekeras.choices import KERASES

from test_pipeline import tiny_config

FACTORY = '''
from edgekeras.backend import by_name

keras = by_name("{keras_name}").keras


def build(num_classes, image_size):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax", name="head")(x))
'''


class Killed(BaseException):
    """Like a signal, not an error: nothing may catch it on the way out."""


class CountBatches(Callback):
    """Counts the batches a phase trains; raises `Killed` as batch `kill_at` (1-based) begins."""

    def __init__(self, counts, name, kill_at=None):
        super().__init__()
        self.counts, self.name, self.kill_at = counts, name, kill_at

    def on_train_batch_begin(self, batch, logs=None):
        if self.kill_at is not None and self.counts.get(self.name, 0) + 1 == self.kill_at:
            raise Killed(f"killed as {self.name} batch {self.kill_at} began")
        self.counts[self.name] = self.counts.get(self.name, 0) + 1


@pytest.fixture(params=KERASES)
def keras_name(request):
    return request.param


def epoch_steps(directory):
    """The sorted steps at which the event files under `directory` hold `epoch_loss`."""
    import tensorflow as tf

    steps = set()
    for event_file in directory.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            steps.update(event.step for value in event.summary.value if value.tag == "epoch_loss")
    return sorted(steps)


@pytest.fixture
def factory(tmp_path, monkeypatch, request, keras_name):
    name = "edgekeras_resume_qat_" + request.node.name.replace("[", "_").replace("]", "")
    (tmp_path / f"{name}.py").write_text(FACTORY.format(keras_name=keras_name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:build"


def test_a_run_killed_during_pqat_resumes_pqat_at_its_last_finished_epoch(tiny_tfds_dir, tmp_path, monkeypatch,
                                                                          factory, keras_name, capsys):
    import edgekeras.app.stages as stages_module

    config = tiny_config(
        tiny_tfds_dir, tmp_path,
        data={"normalization": "zero_to_one", "augment": False},
        model={"alpha": 1.0, "weights": "imagenet", "trainable_from": "auto", "factory": factory, "keras": keras_name},
        train={"cache_features": False, "steps_per_epoch": 2},
        # Two QAT epochs of two batches: the kill falls in PQAT's second epoch, after its first one's checkpoint.
        qat={"epochs": 2, "steps_per_epoch": 2},
        export={"conversions": ["float32"], "pruned_conversions": ["float32"], "io_dtype": "float32"},
    )
    run_dir = tmp_path / "tiny"
    real_callbacks = stages_module.tensorboard_callbacks
    counts, kill = {}, {"pqat": 3}

    def callbacks_with_counter(log_dir, name, chief, model):
        return [*real_callbacks(log_dir, name, chief, model), CountBatches(counts, name, kill.get(name))]

    monkeypatch.setattr(stages_module, "tensorboard_callbacks", callbacks_with_counter)
    with pytest.raises(Killed, match="pqat batch 3"):
        run(config)
    # float 2 + prune 2 batches, QAT's 2 epochs of 2, PQAT's first epoch: the kill came as its third batch began.
    assert counts == {"train": 4, "qat": 4, "pqat": 2}
    state = json.loads((run_dir / "state.json").read_text())
    assert not state["finished"] and state["exports"] == {}
    assert {"train_and_prune"} <= set(state["timings"]) and "qat" not in state["timings"]
    assert (run_dir / "checkpoints" / "pqat" / "qat").is_dir()
    capsys.readouterr()

    counts.clear()
    kill.clear()
    result = run(config)
    output = capsys.readouterr().out
    # Finished phases restored from their checkpoints; PQAT trains its second epoch only.
    assert counts == {"pqat": 2}, counts
    assert "resuming the run" in output
    pqat_log = output.split("QAT of the pqat model")[1]
    # Its epochs go on from the float and pruning phases' (1 + 1) on TensorBoard's axis.
    assert "Epoch 4/4" in pqat_log and "Epoch 3/4" not in pqat_log
    assert verify_run_dir(run_dir) == []
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert [v["name"] for v in report["variants"]] == ["float32", "qat_int8", "pruned_float32", "pqat_int8"]
    assert json.loads((run_dir / "state.json").read_text())["attempts"] == 2
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["pqat_int8"]["sparsity"] > 0.3  # PQAT resumed from the pruned weights, not a dense model
    assert json.loads(json.dumps(result.report)) == report
    # TensorBoard's epoch axis: float epoch 0, pruning 1; QAT of the float model goes on at 1, PQAT at 2,
    # across the kill (the events of both attempts together).
    steps = {name: epoch_steps(run_dir / "logs" / name / "train") for name in ("train", "qat", "pqat")}
    assert steps == {"train": [0, 1], "qat": [1, 2], "pqat": [2, 3]}, steps

    from edgekeras.models import load_model
    from edgekeras.qat import engine_for

    pqat = load_model(run_dir / "models" / ("pqat.h5" if keras_name == "tf_keras" else "pqat.keras"))
    assert engine_for(pqat).is_quantization_aware(pqat)
    kernel = next(w for w in pqat.weights if "pw" in getattr(w, "path", w.name) and "kernel" in w.name).numpy()
    assert np.mean(kernel == 0) >= 0.45
