"""keras-tuner's chief/worker mode with `EdgeTuner`: a chief and two workers on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

MAX_TRIALS = 4
TIMEOUT_SECONDS = 150

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    from edgekeras import keras
    from edgekeras.tuning import SearchSpace
    from edgekeras.tuning import EdgeTuner, make_oracle

    def build(hp):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

    ran = []

    class RecordingTuner(EdgeTuner):
        def run_trial(self, trial, *args, **kwargs):
            ran.append(trial.trial_id)
            return super().run_trial(trial, *args, **kwargs)

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (48, 8, 8, 3)).astype("float32")
    labels = (np.arange(48) % 3).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    space = SearchSpace(learning_rate=(1e-3, 1e-2), final_sparsity=(0.3, 0.8), pruning_begin=0.0,
                        pruning_end=(0.5, 1.0), qat_epochs=0)
    tuner = RecordingTuner(make_oracle("random", max_trials=int(sys.argv[2]), seed=7), build, search_space=space,
                           conversion="float32", eval_threads=1, directory=sys.argv[1], project_name="shared",
                           verbose=1)
    tuner.search(data, validation_data=data)
    with open(os.path.join(sys.argv[1], f"ran_{tuner.tuner_id}.json"), "w") as handle:
        json.dump(ran, handle)
    """
)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_chief_and_two_workers_run_every_trial_exactly_once(tmp_path):
    script = tmp_path / "tune_process.py"
    script.write_text(SCRIPT)
    port = str(_free_port())
    processes = {}
    logs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = dict(
                os.environ,
                KERASTUNER_TUNER_ID=tuner_id,
                KERASTUNER_ORACLE_IP="127.0.0.1",
                KERASTUNER_ORACLE_PORT=port,
                TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="",
            )
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w")
            processes[tuner_id] = subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), str(MAX_TRIALS)],
                env=env,
                stdout=logs[tuner_id],
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + TIMEOUT_SECONDS
        for tuner_id, process in processes.items():
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{tuner_id} did not finish within {TIMEOUT_SECONDS} s")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in logs.values():
            handle.close()
    outputs = {tuner_id: (tmp_path / f"{tuner_id}.log").read_text() for tuner_id in processes}
    for tuner_id, process in processes.items():
        assert process.returncode == 0, f"{tuner_id} failed:\n{outputs[tuner_id][-3000:]}"

    ran = {tuner_id: json.loads((tmp_path / f"ran_{tuner_id}.json").read_text()) for tuner_id in processes}
    assert ran["chief"] == []  # the chief only serves the oracle
    every = ran["tuner0"] + ran["tuner1"]
    expected = [str(index) for index in range(MAX_TRIALS)]
    assert sorted(every) == expected, ran  # each trial ran exactly once, by one of the workers

    project = tmp_path / "shared"
    summary = json.loads((project / "results.json").read_text())  # written by the chief at the end
    assert sorted(t["trial_id"] for t in summary["trials"]) == expected
    for trial in summary["trials"]:
        assert trial["status"] == "COMPLETED"
        assert trial["trial_id"] in ran[trial["tuner_id"]]
        assert os.path.isfile(project / f"trial_{trial['trial_id']}" / "model.tflite")
        state = json.loads((project / f"trial_{trial['trial_id']}" / "trial.json").read_text())
        assert state["score"] == pytest.approx(trial["metrics"]["score"])
