"""edgekeras under tf.distribute: argument checks, MirroredStrategy over two logical
CPU devices, and a two-process MultiWorkerMirroredStrategy `edgekeras run` on 127.0.0.1.

Logical devices and multi-worker clusters must be set up before TensorFlow starts,
so those cases run in fresh Python processes.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from edgekeras import keras
from edgekeras.app.config import ConfigError, parse_config
from edgekeras.distribute import get_strategy, is_chief, worker_id
from edgekeras.trainers import EdgeTrainer


def _python(script, *args, env=None, timeout=240):
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "horovod"}, r"Argument `name` must be one of \('default', 'mirrored', 'multi_worker'\)\. Received: name='horovod'"),
        ({"name": "default", "devices": ["/cpu:0"]}, r"Argument `devices` only applies to the 'mirrored' strategy"),
        ({"name": "mirrored", "devices": "/cpu:0"}, r"Argument `devices` must be a non-empty list of device names"),
        (
            {"name": "mirrored", "communication": "mpi"},
            r"Argument `communication` must be one of \('auto', 'ring', 'nccl'\)\. Received: communication='mpi'",
        ),
    ],
)
def test_get_strategy_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_strategy(**kwargs)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, r"needs the TF_CONFIG environment variable\. Received: TF_CONFIG unset"),
        ("{not json", r"TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', r"TF_CONFIG needs a `cluster` and a `task`"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
            r"TF_CONFIG's task .* is not in its cluster",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        get_strategy("multi_worker")


def test_single_process_is_the_chief():
    assert is_chief()
    assert worker_id() == "chief"
    assert get_strategy("default") is tf.distribute.get_strategy()


def test_trainer_refuses_a_model_built_outside_the_strategy_scope():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(4,), name="dense")])
    with pytest.raises(ValueError, match=r"Argument `model` was built outside the scope of the MirroredStrategy"):
        EdgeTrainer(model, "adam", "mse", strategy=strategy)


def test_trainer_bad_strategy_argument():
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(4,))])
    with pytest.raises(ValueError, match=r"Argument `strategy` must be a tf.distribute.Strategy.*Received: strategy='mirrored'"):
        EdgeTrainer(model, "adam", "mse", strategy="mirrored")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"strategy": "parameter_server"}, r"Config key `distribute.strategy` must be one of 'default', 'mirrored', 'multi_worker'"),
        ({"strategy": "default", "devices": ["/gpu:0"]}, r"Config key `distribute.devices` must be empty unless strategy = \"mirrored\""),
        ({"communication": "mpi"}, r"Config key `distribute.communication` must be one of 'auto', 'ring', 'nccl'"),
        (
            {"workers": 2},
            r"Unknown key `workers` in section \[distribute\].*Valid keys of \[distribute\]: communication, devices, strategy",
        ),
    ],
)
def test_distribute_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"distribute": section})


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from edgekeras import keras, sparsity
    from edgekeras.schedules import ConstantSparsity
    from edgekeras.trainers import EdgeTrainer

    def conv_net():
        inputs = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
        x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
        x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="tiny")

    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 4), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    keras.utils.set_random_seed(0)
    initial = conv_net().get_weights()

    def train(strategy):
        with strategy.scope():
            model = conv_net()
            model.set_weights(initial)
        trainer = EdgeTrainer(model, lambda: keras.optimizers.SGD(0.05),
                              keras.losses.SparseCategoricalCrossentropy(from_logits=True), calibration_steps=0)
        trainer.fit(data, float_epochs=1, prune=ConstantSparsity(0.6, begin_step=0, frequency=2),
                    prune_epochs=2, qat_epochs=1, verbose=0)
        qat_kernels = {layer.name: weight.numpy() for layer, weight in sparsity.prunable_weights(trainer.qat_model)}
        return {
            "replicas": strategy.num_replicas_in_sync,
            "mirrored": all(strategy.extended.variable_created_in_scope(v) for v in trainer.qat_model.weights),
            "sparsity": trainer.summary()["sparsity"],
            "scheme": trainer.quantize_scheme,
            "pruned": [w.tolist() for w in trainer.pruned_model.get_weights()],
            "qat": {name: w.tolist() for name, w in qat_kernels.items()},
        }

    single = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"single": single, "mirrored": mirrored}))
    """
)


def test_mirrored_strategy_prunes_and_quantizes_like_one_device():
    import numpy as np

    out = json.loads(_python(MIRRORED_SCRIPT).strip().splitlines()[-1])
    single, mirrored = out["single"], out["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["mirrored"]  # the QAT clone was built in the strategy's scope
    assert mirrored["scheme"] == single["scheme"] == "prune_preserve"
    for phase in ("prune", "qat"):
        assert mirrored["sparsity"][phase] == pytest.approx(0.6, abs=0.005)
        assert mirrored["sparsity"][phase] == pytest.approx(single["sparsity"][phase], abs=1e-6)
    for a, b in zip(single["pruned"], mirrored["pruned"]):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_array_equal(a == 0, b == 0)  # the same positions pruned
    for name in single["qat"]:
        np.testing.assert_allclose(single["qat"][name], mirrored["qat"][name], atol=1e-4)


TRAINER_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import tensorflow as tf
    from edgekeras.distribute import get_strategy, is_chief, shard_by_data, worker_id

    strategy = get_strategy("multi_worker", communication="ring")  # first: before other TF work
    from edgekeras import keras, sparsity
    from edgekeras.litert import export_tflite
    from edgekeras.models import clone_with_weights
    from edgekeras.schedules import ConstantSparsity
    from edgekeras.trainers import EdgeTrainer

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 4), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    data = shard_by_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 4))
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
        h = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="logits")(h))
    trainer = EdgeTrainer(model, lambda: keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy",
                          calibration_steps=0)
    trainer.fit(data, float_epochs=1, prune=ConstantSparsity(0.5, begin_step=0, frequency=2), prune_epochs=2,
                qat_epochs=1, verbose=0)
    out = sys.argv[1]
    if is_chief(strategy):
        export_tflite(clone_with_weights(trainer.qat_model), os.path.join(out, "model.tflite"), "int8",
                      representative_data=tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                      representative_examples=16, verify_data=tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                      verify_examples=16)
    kernels = [w.numpy() for _, w in sparsity.prunable_weights(trainer.pruned_model)]
    print("RESULT " + json.dumps({
        "worker": worker_id(strategy), "chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
        "sparsity": trainer.summary()["sparsity"], "checksum": float(sum(np.abs(k).sum() for k in kernels)),
        "zeros": [int((k == 0).sum()) for k in kernels], "seconds": time.perf_counter() - started,
    }))
    """
)


def _start_workers(script, count, tmp_path, args):
    ports = _free_ports(count)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    for index in range(count):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
        )
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", script, *args(index)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
    return processes, logs


def _wait_for(processes, logs, tmp_path, timeout):
    try:
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker{index}.log").read_text() for index in range(len(processes))]
    for index, process in enumerate(processes):
        assert process.returncode == 0, f"worker {index} failed:\n{outputs[index][-4000:]}"
    return outputs


def test_two_worker_trainer_prunes_in_step_and_the_chief_exports_once(tmp_path):
    outdirs = [tmp_path / f"out{index}" for index in range(2)]
    for directory in outdirs:
        directory.mkdir()
    processes, logs = _start_workers(TRAINER_WORKER_SCRIPT, 2, tmp_path, lambda index: [str(outdirs[index])])
    outputs = _wait_for(processes, logs, tmp_path, timeout=300)
    results = [json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]) for out in outputs]
    assert [r["worker"] for r in results] == ["worker_0", "worker_1"]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["replicas"] == 2 for r in results)
    for r in results:
        assert r["sparsity"]["prune"] == pytest.approx(0.5, abs=0.005)
        assert r["sparsity"]["qat"] == pytest.approx(0.5, abs=0.005)
    # Both workers hold the same weights and the same pruned positions.
    assert results[0]["zeros"] == results[1]["zeros"]
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-5)
    assert os.listdir(outdirs[0]) == ["model.tflite"]
    assert os.listdir(outdirs[1]) == []  # the second worker wrote nothing


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from edgekeras.app.cli import main
    started = time.perf_counter()
    status = main(["run", "--config", sys.argv[1], "--output-dir", sys.argv[2], "--no-progress"])
    print(f"WALL {time.perf_counter() - started:.2f}")
    sys.exit(status)
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _tiny_run_config(tfds_dir, path, strategy):
    path.write_text(
        textwrap.dedent(
            f"""
            [run]
            name = "tiny"
            seed = 1
            [data]
            dataset = "edgekeras_tiny_images"
            data_dir = "{tfds_dir}"
            download = false
            image_size = 32
            batch_size = 16
            validation_size = 12
            [model]
            alpha = 0.35
            weights = "none"
            trainable_from = "block_16_expand"
            [prune]
            target_sparsity = 0.5
            epochs = 1
            mask_updates = 2
            [train]
            epochs = 1
            learning_rate = 0.01
            cache_features = false
            [qat]
            epochs = 1
            steps_per_epoch = 1
            quantize_float = false
            [export]
            conversions = ["float32", "int8"]
            pruned_conversions = ["float32"]
            representative_examples = 8
            verify_examples = 8
            [report]
            quantized = "int8"
            [evaluate]
            latency_runs = 50
            warmup = 1
            latency_threads = [1]
            progress = false
            [distribute]
            strategy = "{strategy}"
            communication = "ring"
            """
        )
    )
    return path


MIRRORED_RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import edgekeras.app.stages as stages
    from edgekeras.app.cli import main

    trainers = []
    real_make_trainer = stages.make_trainer

    def recording_make_trainer(model, config, float_steps, strategy, backup_dir, **kwargs):
        trainer = real_make_trainer(model, config, float_steps, strategy, backup_dir, **kwargs)
        if backup_dir is not None:  # a training phase, not the trial conversion's copy
            trainers.append({"phases": backup_dir.rsplit("/", 1)[-1], "strategy": type(strategy).__name__,
                             "replicas": strategy.num_replicas_in_sync,
                             "mirrored": all(strategy.extended.variable_created_in_scope(v) for v in model.weights)})
        return trainer

    stages.make_trainer = recording_make_trainer
    status = main(["run", "--config", sys.argv[1], "--no-progress"])
    print("RESULT " + json.dumps({"status": status, "trainers": trainers}))
    """
)

MIRRORED_FACTORY = """
from edgekeras import keras


def build(num_classes, image_size):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax", name="head")(x))
"""


def test_mirrored_run_over_two_devices_trains_every_phase_and_exports(tiny_tfds_dir, tmp_path):
    # The default suite's `edgekeras run` under a [distribute] strategy (the two-worker run below is
    # slow): a tiny model of a factory, two logical CPU devices, every phase a step or two.
    (tmp_path / "mirrored_factory.py").write_text(MIRRORED_FACTORY)
    config = tmp_path / "mirrored.toml"
    config.write_text(textwrap.dedent(
        f"""
        [run]
        name = "mirrored"
        output_dir = "{tmp_path / 'runs'}"
        seed = 1
        [data]
        dataset = "edgekeras_tiny_images"
        data_dir = "{tiny_tfds_dir}"
        download = false
        image_size = 32
        batch_size = 16
        validation_size = 12
        normalization = "zero_to_one"
        [model]
        factory = "mirrored_factory:build"
        [train]
        epochs = 0
        steps_per_epoch = 2
        cache_features = false
        [prune]
        target_sparsity = 0.5
        epochs = 1
        mask_updates = 2
        [qat]
        epochs = 1
        steps_per_epoch = 2
        quantize_float = false
        [export]
        conversions = ["float32"]
        pruned_conversions = ["float32"]
        representative_examples = 8
        verify_examples = 8
        [evaluate]
        latency_runs = 50
        warmup = 1
        latency_threads = [1]
        progress = false
        [distribute]
        strategy = "mirrored"
        devices = ["/cpu:0", "/cpu:1"]
        """
    ))
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    output = _python(MIRRORED_RUN_SCRIPT, str(config), env={"PYTHONPATH": pythonpath})
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    assert result["status"] == 0
    # The pruning phase and PQAT (the phases the one-device tests do not run mirrored in a run): each
    # on both devices, its variables mirrored.
    assert [t["phases"] for t in result["trainers"]] == ["train", "pqat"]
    assert all((t["strategy"], t["replicas"], t["mirrored"]) == ("MirroredStrategy", 2, True) for t in result["trainers"])
    from edgekeras.app.pipeline import verify_run_dir

    run_dir = tmp_path / "runs" / "mirrored"
    assert verify_run_dir(str(run_dir)) == []
    report = json.loads((run_dir / "report.json").read_text())
    by_name = {variant["name"]: variant for variant in report["variants"]}
    assert list(by_name) == ["float32", "pruned_float32", "pqat_int8"]
    assert by_name["pruned_float32"]["sparsity"] > 0.3 and by_name["pqat_int8"]["sparsity"] > 0.3
    assert all(variant["verification"]["examples"] == 8 for variant in report["variants"])


@pytest.mark.slow
def test_two_worker_run_trains_prunes_and_exports_once(tiny_tfds_dir, tmp_path):
    config = _tiny_run_config(tiny_tfds_dir, tmp_path / "multi.toml", "multi_worker")
    started = time.perf_counter()
    processes, logs = _start_workers(
        WORKER_SCRIPT, 2, tmp_path, lambda index: [str(config), str(tmp_path / f"out{index}")]
    )
    outputs = _wait_for(processes, logs, tmp_path, timeout=900)
    two_workers = time.perf_counter() - started

    chief_dir = tmp_path / "out0" / "tiny"
    report = json.loads((chief_dir / "report.json").read_text())
    names = [variant["name"] for variant in report["variants"]]
    assert names == ["float32", "int8", "pruned_float32", "pqat_int8"]
    pruned = next(v for v in report["variants"] if v["name"] == "pruned_float32")
    assert pruned["sparsity"] > 0.05  # the pruning phase ran (on the top of a frozen base)
    # The second worker trained with the chief but wrote nothing.
    assert "training only, the chief writes" in outputs[1]
    assert not (tmp_path / "out1").exists()

    # The same job on one worker, for the wall-time comparison.
    single = _tiny_run_config(tiny_tfds_dir, tmp_path / "single.toml", "default")
    started = time.perf_counter()
    _python(WORKER_SCRIPT, str(single), str(tmp_path / "single"), timeout=900)
    one_worker = time.perf_counter() - started
    assert (tmp_path / "single" / "tiny" / "report.json").is_file()
    print(f"\ntiny edgekeras run wall time: two workers {two_workers:.1f} s, one worker {one_worker:.1f} s")
