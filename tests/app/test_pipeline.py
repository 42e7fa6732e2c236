"""`edgekeras run`: the whole pipeline on a tiny TFDS dataset, and its CLI."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.app.cli import main
from edgekeras.compat import keras
from edgekeras.app.config import config_to_toml, load_config, parse_config
from edgekeras.app.report import validate_report
from edgekeras.app.pipeline import resolve_weights, run
from edgekeras.features import cache_features
from edgekeras.models import split_model


def tiny_config(tfds_dir, output_dir, **sections):
    values = {
        "run": {"name": "tiny", "output_dir": str(output_dir), "seed": 1},
        "data": {
            "dataset": "edgekeras_tiny_images", "data_dir": tfds_dir, "download": False, "image_size": 32,
            "batch_size": 16, "validation_size": 12, "augment": True, "shuffle_buffer": 64,
        },
        "model": {"alpha": 0.35, "weights": "none", "trainable_from": "block_16_expand"},
        "train": {"epochs": 1, "learning_rate": 0.01, "lr_schedule": "cosine"},
        "prune": {"target_sparsity": 0.5, "epochs": 1, "mask_updates": 2, "learning_rate": 0.001},
        "qat": {"epochs": 1, "steps_per_epoch": 1},
        "export": {
            "conversions": ["float32", "int8"], "pruned_conversions": ["float32"], "io_dtype": "uint8",
            "representative_examples": 8, "verify_examples": 8,
        },
        "evaluate": {"latency_runs": 50, "warmup": 1, "latency_threads": [1], "progress": False},
    }
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    return parse_config(values, source="test")


def test_full_run_on_tiny_dataset(tiny_tfds_dir, tmp_path):
    result = run(tiny_config(tiny_tfds_dir, tmp_path))
    run_dir = tmp_path / "tiny"
    assert result.run_dir == str(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert (report["dataset"], report["split"], report["examples"]) == ("edgekeras_tiny_images", "test", 20)
    names = [v["name"] for v in report["variants"]]
    assert names == ["float32", "int8", "qat_int8", "pruned_float32", "pqat_int8"]
    roles = {v["name"]: v["role"] for v in report["variants"]}
    # "auto": the better of int8 and qat_int8 on the 12 validation images; pqat_int8 is the only pruned int8 file.
    choices = report["role_choices"]
    assert choices["pruned_quantized"] == {"chosen": "pqat_int8", "accuracy": {}}
    chosen = choices["quantized"]["chosen"]
    assert chosen in ("int8", "qat_int8") and (choices["quantized"]["split"], choices["quantized"]["examples"]) == ("validation", 12)
    assert roles == {
        "float32": "original", "int8": "other", "qat_int8": "other", chosen: "quantized",
        "pruned_float32": "pruned", "pqat_int8": "pruned_quantized",
    }
    assert json.loads((run_dir / "state.json").read_text())["role_choices"]["quantized"]["chosen"] == chosen
    assert f"- quantized → {chosen}: " in (run_dir / "report.md").read_text()
    for variant in report["variants"]:
        assert (run_dir / variant["file"]).is_file()
        assert variant["verification"]["examples"] == 8
    by_name = {v["name"]: v for v in report["variants"]}
    # Only the trainable top is pruned (frozen layers never are): some, not all, zeros.
    assert 0.05 < by_name["pruned_float32"]["sparsity"] < 0.5
    assert by_name["pqat_int8"]["sparsity"] > 0.05
    assert by_name["float32"]["sparsity"] < 0.01
    assert by_name["int8"]["io_dtype"] == "uint8"
    assert sorted(os.listdir(run_dir)) == [
        "checkpoints", "config.toml", "logs", "models", "pareto.png", "report.json", "report.md", "state.json", "tflite",
    ]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["pqat", "qat", "train"]
    assert sorted(os.listdir(run_dir / "models")) == ["float.h5", "pqat.h5", "pruned.h5", "qat.h5"]
    assert load_config(run_dir / "config.toml").data.image_size == 32
    from edgekeras.models import load_model
    from edgekeras.models import is_quantization_aware

    assert is_quantization_aware(load_model(run_dir / "models" / "pqat.h5"))
    assert "| pqat_int8 | pruned_quantized |" in result.table
    assert {"data_and_model", "cache_features", "train_and_prune", "qat", "export", "choose_roles", "evaluate"} <= set(result.timings)


def test_split_model_shares_layers_and_computes_the_same(tmp_path):
    from edgekeras.models import build_transfer_model

    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from="block_16_expand", dropout=0.2)
    prefix, top, cut = split_model(model)
    assert cut == "block_16_expand"
    assert all(any(layer is other for other in model.layers) for layer in top.layers[1:])
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(top(prefix(images)), model(images), atol=1e-5)

    frozen = build_transfer_model(3, 32, alpha=0.35, weights=None, dropout=0.2)
    _, head, cut = split_model(frozen)
    assert cut == "dropout" and [layer.name for layer in head.layers[1:]] == ["dropout", "classifier"]


def test_cache_features_litert_matches_keras(tmp_path):
    import tensorflow as tf

    from edgekeras.models import build_transfer_model

    model = build_transfer_model(3, 32, alpha=0.35, weights=None)
    prefix, _, _ = split_model(model)
    images = np.random.default_rng(0).uniform(-1, 1, (10, 32, 32, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(10))).batch(4)
    lite, labels = cache_features(prefix, dataset, engine="litert", progress=False)
    plain, _ = cache_features(prefix, dataset, engine="keras", passes=2, progress=False)
    assert lite.shape == (10, 1280) and plain.shape == (20, 1280)
    assert lite.dtype == plain.dtype == np.float16
    np.testing.assert_array_equal(labels, np.arange(10))
    # Against the live forward pass: float16 storage rounds to ~1e-3 relative.
    live = prefix(images, training=False).numpy()
    np.testing.assert_allclose(lite, live, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(plain[:10], live, rtol=2e-3, atol=1e-3)


def test_split_model_without_trainable_weights():
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(2)
    model = keras.Model(inputs, layer(inputs))
    layer.trainable = False
    with pytest.raises(ValueError, match="has no trainable weights"):
        split_model(model)


def test_resolve_weights(monkeypatch, tmp_path):
    local = tmp_path / "w.h5"
    local.write_bytes(b"")
    monkeypatch.setenv("EDGEKERAS_WEIGHTS", str(local))
    assert resolve_weights("imagenet") == str(local)
    assert resolve_weights("none") is None and resolve_weights("x.h5") == "x.h5"
    monkeypatch.setenv("EDGEKERAS_WEIGHTS", "imagenet")
    assert resolve_weights("imagenet") == "imagenet"


def test_cli_run_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 1\nbogus = 2\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "Unknown key `bogus` in section [train]" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert not (tmp_path / "runs").exists()


def test_cli_run_without_pruning_or_qat(tiny_tfds_dir, tmp_path, capsys):
    config = tiny_config(
        tiny_tfds_dir, tmp_path / "elsewhere",
        prune={"enabled": False}, qat={"epochs": 0},
        train={"cache_features": False, "steps_per_epoch": 2},
        export={"conversions": ["float32", "float16"]},
        report={"quantized": "", "pruned": "", "pruned_quantized": ""},
    )
    path = tmp_path / "plain.toml"
    path.write_text(config_to_toml(config))
    assert main(["run", "--config", str(path), "--name", "plain", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "| float32 | original |" in output and "| float16 | other |" in output
    report = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["float32", "float16"]


def test_array_dataset_batches_and_reshuffles():
    from edgekeras.features import array_dataset

    features = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    labels = np.arange(10)
    dataset = array_dataset(features, labels, 4, shuffle_seed=0)
    assert int(dataset.cardinality()) == 3
    first = [b for b in dataset.as_numpy_iterator()]
    second = [b for b in dataset.as_numpy_iterator()]
    assert [len(y) for _, y in first] == [4, 4, 2]
    for epoch in (first, second):
        seen = np.concatenate([y for _, y in epoch])
        assert sorted(seen) == list(range(10))
        assert all(np.array_equal(x[:, 0], y) for x, y in epoch)
    assert not np.array_equal(np.concatenate([y for _, y in first]), np.concatenate([y for _, y in second]))
    ordered = np.concatenate([y for _, y in array_dataset(features, labels, 4).as_numpy_iterator()])
    np.testing.assert_array_equal(ordered, labels)


def test_array_dataset_keeps_static_shapes_and_reshuffles_each_repeat():
    from edgekeras.features import array_dataset

    features = np.arange(8, dtype=np.float16)[:, None, None] * np.ones((1, 2, 3), np.float16)
    labels = np.eye(8, dtype=np.float32)
    dataset = array_dataset(features, labels, 4, shuffle_seed=1)
    # Models trace their training step on these shapes.
    assert dataset.element_spec[0].shape.as_list() == [None, 2, 3]
    assert dataset.element_spec[1].shape.as_list() == [None, 8]
    assert dataset.element_spec[0].dtype.name == "float32"
    passes = list(dataset.repeat(2).as_numpy_iterator())
    assert len(passes) == 4
    orders = [np.concatenate([y.argmax(axis=1) for _, y in passes[i:i + 2]]) for i in (0, 2)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(8))
    assert not np.array_equal(orders[0], orders[1])
    assert all(np.array_equal(x[:, 0, 0], y.argmax(axis=1)) for x, y in passes)


def test_qat_skip_layers_reach_the_trainer(tiny_tfds_dir, tmp_path):
    import tensorflow as tf

    from edgekeras.models import build_transfer_model
    from edgekeras.app.factories import make_trainer

    config = tiny_config(tiny_tfds_dir, tmp_path, qat={"skip_layers": ["Conv_1", "Conv_1_bn", "out_relu"]})
    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from="block_16_expand")
    trainer = make_trainer(model, config, None, tf.distribute.get_strategy(), None)
    assert trainer.quantize_skip == ("Conv_1", "Conv_1_bn", "out_relu")


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_qat_lr_schedule_reaches_the_qat_optimizer(tiny_tfds_dir, tmp_path, schedule):
    from edgekeras.app.factories import make_trainer
    from edgekeras.models import build_transfer_model
    from edgekeras.trainers import make_optimizer

    config = tiny_config(tiny_tfds_dir, tmp_path, qat={"lr_schedule": schedule, "learning_rate": 1e-3})
    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from="block_16_expand")
    trainer = make_trainer(model, config, None, tf.distribute.get_strategy(), None, qat=True, qat_steps=10)
    rate = make_optimizer(trainer.optimizer, "qat").get_config()["learning_rate"]
    if schedule == "cosine":
        rate = keras.optimizers.schedules.deserialize(rate)
        # From the full rate down to 0 over exactly the QAT phase's steps.
        assert [round(float(rate(step)), 7) for step in (0, 5, 10)] == [1e-3, 5e-4, 0.0]
    else:
        assert float(rate) == pytest.approx(1e-3)
    # The float phase keeps its own rate: the QAT schedule is the QAT phase's alone.
    assert make_optimizer(trainer.optimizer, "float").get_config()["learning_rate"] == pytest.approx(0.01)


@pytest.mark.parametrize("steps_per_epoch, sized, expected", [(3, True, 6), (0, True, 8), (0, False, 10)])
def test_qat_stage_decays_over_its_epochs_times_its_steps(tiny_tfds_dir, tmp_path, monkeypatch, steps_per_epoch,
                                                          sized, expected):
    import dataclasses
    import types

    import edgekeras.app.stages as stages_module

    class Stop(Exception):
        pass

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(stages_module, "make_trainer", record)
    config = tiny_config(tiny_tfds_dir, tmp_path, qat={"epochs": 2, "steps_per_epoch": steps_per_epoch})
    # 4 batches of 4: a QAT epoch without steps_per_epoch is the whole training split. A pipeline of
    # unknown length counts num_train images in batches of data.batch_size (18 in batches of 4: 5).
    train = tf.data.Dataset.from_tensor_slices((np.zeros((16, 8, 8, 3), "float32"), np.zeros(16))).batch(4)
    if not sized:
        train = train.filter(lambda x, y: True)
    data = types.SimpleNamespace(train=train, num_train=18)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=4))
    context = types.SimpleNamespace(config=config, data=data, strategy=None,
                                    path=lambda *parts: str(tmp_path.joinpath(*parts)))
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(Stop):
        stages_module._quantization_aware(context, "qat", model)
    assert seen["qat"] is True and seen["qat_steps"] == expected


def _files(run_dir):
    """{relative path: (size, mtime_ns)} of every file under `run_dir`."""
    found = {}
    for root, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, run_dir)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


class Killed(BaseException):
    """Like a signal, not an error: nothing may catch it on the way out."""


def test_run_resumes_after_a_crash_and_a_finished_run_is_a_noop(tiny_tfds_dir, tmp_path, monkeypatch, capsys):
    # The export stage looks export_tflite up in edgekeras.app.stages.
    import edgekeras.app.stages as stages_module

    # Without QAT (two minutes of tracing on 2 cores): test_resume_qat.py resumes a tiny run killed during PQAT,
    # and the slow SIGKILL test in test_faults.py a real one.
    config = tiny_config(tiny_tfds_dir, tmp_path, qat={"epochs": 0})
    run_dir = tmp_path / "tiny"
    real_export = stages_module.export_tflite
    calls, died = [], []

    def export_then_die(*args, **kwargs):
        calls.append(kwargs.get("name"))
        if len(calls) == 3 and not died:
            died.append(True)
            raise Killed("killed during the third export")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(stages_module, "export_tflite", export_then_die)
    with pytest.raises(Killed):
        run(config)
    state = json.loads((run_dir / "state.json").read_text())
    assert not state["finished"] and sorted(state["exports"]) == ["float32", "int8"]
    assert sorted(state["cache"]) == ["train", "validation"]
    before = _files(run_dir)
    assert not [name for name in before if name.endswith(".tmp")]
    capsys.readouterr()

    calls.clear()
    result = run(config)
    output = capsys.readouterr().out
    # Training is restored from the checkpoints, the two files are reused.
    assert "Epoch" not in output
    assert "reusing the cached train activations" in output
    assert calls == ["pruned_float32"]
    for name in ("tflite/float32.tflite", "tflite/int8.tflite"):
        assert _files(run_dir)[name] == before[name]
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "pruned_float32"]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["attempts"] == 2 and state["cache"] == {}
    assert not (run_dir / "cache").exists()

    finished = _files(run_dir)
    calls.clear()
    again = run(config)
    assert "nothing to do" in capsys.readouterr().out
    assert calls == [] and again.report == report and again.table == result.table
    assert _files(run_dir) == finished

    # A changed file is not trusted: only that variant is exported again.
    (run_dir / "tflite" / "int8.tflite").write_bytes(b"corrupt")
    run(config)
    assert calls == ["int8"]


def test_run_directory_of_another_config(tiny_tfds_dir, tmp_path):
    from edgekeras.app.pipeline import RunDirectoryError
    from edgekeras.app.state import RunState

    config = tiny_config(tiny_tfds_dir, tmp_path)
    RunState(config.run_dir, config, overwrite=False, enabled=True).save()
    (tmp_path / "tiny" / "report.md").write_text("earlier results")
    other = tiny_config(tiny_tfds_dir, tmp_path, prune={"target_sparsity": 0.6})
    with pytest.raises(RunDirectoryError, match=r"Run directory `.*tiny` holds a run of another config .*Pass --overwrite"):
        run(other)
    assert (tmp_path / "tiny" / "report.md").read_text() == "earlier results"

    state = RunState(other.run_dir, other, overwrite=True, enabled=True)
    assert not (tmp_path / "tiny" / "report.md").exists() and state.data["attempts"] == 1


def test_run_directory_without_state_is_refused(tiny_tfds_dir, tmp_path):
    from edgekeras.app.pipeline import RunDirectoryError

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"holds files but no state.json.*Received: run.name='tiny'"):
        run(tiny_config(tiny_tfds_dir, tmp_path))
    assert (tmp_path / "tiny" / "notes.txt").read_text() == "mine"


def test_a_cache_computed_now_comes_back_memory_mapped_from_its_file(tmp_path):
    from edgekeras.app.state import RunState

    config = parse_config({"run": {"name": "cache", "output_dir": str(tmp_path)}}, source="test")
    computed = np.arange(24, dtype=np.float16).reshape(6, 2, 2)
    state = RunState(config.run_dir, config, overwrite=False, enabled=True)
    features, labels = state.cached_arrays("train", lambda: (computed.copy(), np.arange(6)))
    assert isinstance(features, np.memmap)
    assert os.path.samefile(features.filename, tmp_path / "cache" / "cache" / "train_features.npy")
    np.testing.assert_array_equal(features, computed)
    np.testing.assert_array_equal(labels, np.arange(6))


def test_corrupt_cache_is_computed_again(tmp_path):
    from edgekeras.app.state import RunState

    config = parse_config({"run": {"name": "cache", "output_dir": str(tmp_path)}}, source="test")
    computed = []

    def compute():
        computed.append(1)
        return np.ones((4, 2, 2), np.float16), np.arange(4)

    state = RunState(config.run_dir, config, overwrite=False, enabled=True)
    state.cached_arrays("train", compute)
    features, labels = state.cached_arrays("train", compute)
    assert len(computed) == 1 and isinstance(features, np.memmap)
    np.testing.assert_array_equal(labels, np.arange(4))
    with open(tmp_path / "cache" / "cache" / "train_features.npy", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x01")
    features, _ = state.cached_arrays("train", compute)
    assert len(computed) == 2 and float(features.max()) == 1.0


def test_cli_refuses_a_run_directory_of_another_config(tiny_tfds_dir, tmp_path, capsys):
    from edgekeras.app.state import RunState

    config = tiny_config(tiny_tfds_dir, tmp_path)
    RunState(config.run_dir, config, overwrite=False, enabled=True).save()
    path = tmp_path / "other.toml"
    path.write_text(config_to_toml(tiny_config(tiny_tfds_dir, tmp_path, train={"epochs": 2})))
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("edgekeras run: error: Run directory") and "--overwrite" in error
    assert error.count("\n") == 1


def test_verify_run_dir_lists_what_is_wrong(tmp_path):
    from edgekeras.app.state import RunState, verify_run_dir

    config = parse_config({"run": {"name": "v", "output_dir": str(tmp_path)}}, source="test")
    assert verify_run_dir(config.run_dir) == ["state.json is missing or unreadable"]
    state = RunState(config.run_dir, config, overwrite=False, enabled=True)
    model = tmp_path / "v" / "tflite" / "x.tflite"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    state.data["exports"]["x"] = state.record_file(str(model))
    state.save()
    model.write_bytes(b"y")
    (tmp_path / "v" / ".report.json.abc.tmp").write_text("")
    assert verify_run_dir(config.run_dir) == [
        "the run is not finished",
        "report.json is missing or unreadable",
        "report.md is missing",
        "pareto.png is missing",
        "tflite/x.tflite is missing or does not match its checksum",
        f"temporary file left: {tmp_path / 'v' / '.report.json.abc.tmp'}",
    ]


def test_overwrite_clears_the_run_directory_without_following_links(tmp_path):
    from edgekeras.app.pipeline import RunDirectoryError
    from edgekeras.app.state import RunState

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    config = parse_config({"run": {"name": "o", "output_dir": str(tmp_path)}}, source="test")
    run_dir = tmp_path / "o"
    (run_dir / "tflite").mkdir(parents=True)
    (run_dir / "tflite" / "a.tflite").write_bytes(b"a")
    (run_dir / "link").symlink_to(outside)
    (run_dir / "state.json").write_text("not json")
    with pytest.raises(RunDirectoryError, match=r"has an unreadable .*state.json .*Pass --overwrite"):
        RunState(config.run_dir, config, overwrite=False, enabled=True)
    state = RunState(config.run_dir, config, overwrite=True, enabled=True)
    assert os.listdir(run_dir) == [] and (outside / "keep.txt").read_text() == "mine"
    assert state.data["attempts"] == 1


def test_a_non_chief_worker_leaves_no_empty_directories(tmp_path):
    # What Keras' BackupAndRestore leaves on a non-chief worker: its parents, emptied.
    from edgekeras.app.pipeline import _existing_ancestor, _remove_empty_dirs

    output = tmp_path / "out1"
    keep = _existing_ancestor(output / "tiny")
    (output / "tiny" / "checkpoints" / "train" / "float").mkdir(parents=True)
    (output / "tiny" / "checkpoints" / "qat").mkdir(parents=True)
    _remove_empty_dirs(output / "tiny", keep=keep)
    assert keep == str(tmp_path) and not output.exists()

    # A directory that existed before, and any file, stay.
    shared = tmp_path / "shared"
    (shared / "tiny" / "logs").mkdir(parents=True)
    (shared / "tiny" / "report.json").write_text("{}")
    _remove_empty_dirs(shared / "tiny", keep=_existing_ancestor(shared / "tiny"))
    assert (shared / "tiny" / "report.json").is_file() and not (shared / "tiny" / "logs").exists()


def _atan(x):
    return tf.math.atan(x)


def _atan_classifier(num_classes, image_size):
    """A classifier TFLite cannot hold: `tf.math.atan` needs TF Select ops."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.Lambda(_atan, name="my_atan")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="atan_classifier")


def test_run_stops_before_training_on_a_model_the_converter_refuses(tiny_tfds_dir, tmp_path, monkeypatch, capsys):
    from edgekeras.app import stages

    monkeypatch.setattr(stages, "build_model", lambda section, num_classes, image_size, *a, **k: _atan_classifier(num_classes, image_size))
    config = tiny_config(tiny_tfds_dir, tmp_path, train={"cache_features": False})
    path = tmp_path / "atan.toml"
    path.write_text(config_to_toml(config))
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "tiny"
    log = run_dir / "logs" / "conversion.log"
    assert (
        "edgekeras run: error: Checked before training, on the untrained model: TFLite conversion 'float32' of model "
        "'atan_classifier' failed at layer 'my_atan' (op tf.Atan)"
    ) in err and f"The converter's full output is in {log}" in err
    assert "atan_classifier/my_atan/Atan" in log.read_text() and "my_atan/Atan" not in err
    state = json.loads((run_dir / "state.json").read_text())
    assert "data_and_model" in state["timings"] and "train_and_prune" not in state["timings"]
    assert not (run_dir / "checkpoints").exists(), "training started"


def write_image_folders(root, classes=("cat", "ant", "bee"), per_class=6):
    """A directory of class sub-folders with colour-coded PNG and JPEG images of several sizes."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        os.makedirs(root / name)
        for index in range(per_class):
            image = rng.integers(0, 60, (24 + index, 30, 3), dtype=np.uint8)
            image[..., label % 3] += 180
            encoded = tf.io.encode_png(image) if index % 2 else tf.io.encode_jpeg(image)
            (root / name / f"{index}.{'png' if index % 2 else 'jpg'}").write_bytes(encoded.numpy())
    return root


def test_run_on_an_image_directory_with_mobilenet_v3_small(tmp_path, capsys):
    # Another architecture (its own Rescaling layer: pixels in [0, 255]) on a directory of images,
    # randomly initialized: every layer trains, nothing is cached.
    photos = write_image_folders(tmp_path / "photos")
    config = parse_config({
        "run": {"name": "v3", "output_dir": str(tmp_path / "runs"), "seed": 1},
        "data": {"directory": str(photos), "image_size": 32, "batch_size": 8, "validation_size": 3, "test_size": 3},
        "model": {"architecture": "mobilenet_v3_small", "weights": "none", "train_batchnorm": True},
        "train": {"epochs": 1},
        "prune": {"enabled": False},
        "qat": {"epochs": 0},
        "export": {"conversions": ["float32"], "representative_examples": 4, "verify_examples": 3},
        "evaluate": {"latency_runs": 50, "warmup": 1, "latency_threads": [1], "progress": False},
        "report": {"quantized": "", "pruned": "", "pruned_quantized": ""},
    }, source="test")
    result = run(config)
    log = capsys.readouterr().out
    assert "photos: 12 train / 3 validation / 3 test images at 32 px, scaled 'pixels'" in log
    assert "model mobilenetv3small_transfer (model.architecture)" in log
    assert "caching the activations" not in log  # a Rescaling layer alone is no prefix worth caching
    report = json.loads((tmp_path / "runs" / "v3" / "report.json").read_text())
    validate_report(report)
    assert (report["dataset"], report["examples"]) == ("photos", 3)
    assert [v["name"] for v in report["variants"]] == ["float32"]
    assert report["variants"][0]["verification"]["top1_agreement"] == 1.0
    assert "| float32 | original |" in result.table


FACTORY_MODULE = '''
from edgekeras import keras


def build(num_classes, image_size, width=4, hp=None):
    """A small functional CNN; `hp` gives keras-tuner a choice of width (its default outside a search)."""
    if hp is not None:
        width = hp.Int("width", 2, 8, step=2, default=width)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax", name="head")(x))


def nested(num_classes, image_size):
    inputs = keras.Input((image_size, image_size, 3))
    return keras.Model(inputs, build(num_classes, image_size)(inputs))


def fixed(num_classes):
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def logits(num_classes, image_size):
    inputs = keras.Input((image_size, image_size, 3))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.GlobalAveragePooling2D()(inputs)))


def two_classes(image_size):
    return build(2, image_size)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3, activation="softmax")

    def call(self, inputs):
        return self.dense(keras.layers.GlobalAveragePooling2D()(inputs))


def subclassed():
    return Subclassed()
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch, request):
    """A module of model factories in the current directory, named after the test (no sys.modules clash)."""
    name = "edgekeras_factories_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    (tmp_path / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)
    return name


def test_run_with_a_factory_of_yours_through_every_phase(tiny_tfds_dir, tmp_path, factory_module):
    from edgekeras.models import load_model

    config = tiny_config(
        tiny_tfds_dir, tmp_path / "runs",
        data={"normalization": "zero_to_one"},
        model={"alpha": 1.0, "weights": "imagenet", "trainable_from": "auto", "factory": f"{factory_module}:build",
               "factory_args": {"width": 6}},
        export={"io_dtype": "float32"},
    )
    result = run(config)
    run_dir = tmp_path / "runs" / "tiny"
    report = json.loads((run_dir / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "qat_int8", "pruned_float32", "pqat_int8"]
    assert report["variants"][3]["sparsity"] > 0.3  # every layer of the factory's model trains, so all are pruned
    assert load_model(run_dir / "models" / "float.h5").get_layer("stem").filters == 6  # factory_args reached it
    assert load_config(run_dir / "config.toml").model.factory_args == {"width": 6}
    assert "| pqat_int8 | pruned_quantized |" in result.table


def test_run_with_a_trained_model_file_and_no_float_training(tiny_tfds_dir, tmp_path, factory_module):
    from edgekeras.app.factories import build_model
    from edgekeras.app.inputs import ModelSection
    from edgekeras.models import load_model, save_model

    trained = build_model(ModelSection(factory=f"{factory_module}:build"), 3, 32)
    save_model(trained, tmp_path / "trained.h5")
    config = tiny_config(
        tiny_tfds_dir, tmp_path / "runs",
        data={"normalization": "zero_to_one"},
        model={"alpha": 1.0, "weights": "imagenet", "trainable_from": "pw", "file": str(tmp_path / "trained.h5")},
        train={"epochs": 0},
        qat={"epochs": 0},
        export={"conversions": ["float32"], "pruned_conversions": ["float32"], "io_dtype": "float32"},
        report={"quantized": "", "pruned_quantized": ""},
    )
    run(config)
    run_dir = tmp_path / "runs" / "tiny"
    float_model, pruned = (load_model(run_dir / "models" / f"{name}.h5") for name in ("float", "pruned"))
    # No float epoch: the float variant is the file's model; only the layers from `pw` on were pruned.
    for layer in trained.layers:
        for kept, saved in zip(layer.get_weights(), float_model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(kept, saved)
    assert np.array_equal(pruned.get_layer("stem").get_weights()[0], trained.get_layer("stem").get_weights()[0])
    assert (pruned.get_layer("pw").get_weights()[0] == 0).mean() >= 0.45


@pytest.mark.parametrize(
    "model, match",
    [
        ({"factory": "no_such_module_xyz:build"}, r"`model.factory` names a module that cannot be imported \(ModuleNotFoundError"),
        ({"factory": "{module}:missing"}, r"`model.factory` must name a function of module '.*', which has no callable 'missing'"),
        ({"factory": "{module}:build", "factory_args": {"depth": 3}},
         r"`model.factory_args` has arguments the factory does not take: \['depth'\]\. .*takes \['num_classes', 'image_size', "
         r"'width', 'hp'\]"),
        ({"factory": "{module}:fixed"},
         r"`model.factory` gives a model whose input shape is \(None, 48, 48, 3\), but the data are 32 px RGB images "
         r"\(None, 32, 32, 3\)\. Received: model.factory='.*:fixed', data.image_size=32"),
        ({"factory": "{module}:two_classes"}, r"`model.factory` gives a model with 2 outputs .* but the data have 3 classes"),
        ({"factory": "{module}:logits"}, r"last layer 'dense.*' has no activation.* End the model in a softmax"),
        ({"factory": "{module}:subclassed"}, r"`model.factory` must give a functional or Sequential tf_keras model .*a Subclassed model"),
        ({"factory": "{module}:build", "trainable_from": "Conv_1"},
         r"Config key `model.trainable_from` must name a layer of the model\. Received: model.trainable_from='Conv_1'"),
        ({"file": "missing.h5"}, r"Config key `model.file` names nothing on disk\. Received: model.file='missing.h5'"),
        ({"file": "model.onnx"}, r"`model.file` must be a .h5 or .keras file or a SavedModel directory"),
        ({"architecture": "mobilenet_v3_small", "weights": "none", "trainable_from": "block_16_expand"},
         r"Config key `model.trainable_from` must name a layer of the base model\. Received: model.trainable_from='block_16_expand'\. "
         r"Valid names include expanded_conv_6/expand"),
    ],
)
def test_models_that_do_not_fit_are_config_errors(factory_module, tmp_path, model, match):
    from edgekeras.app.config import ConfigError
    from edgekeras.app.factories import build_model
    from edgekeras.app.inputs import ModelSection

    (tmp_path / "model.onnx").write_text("not keras")
    section = ModelSection(**{k: v.format(module=factory_module) if isinstance(v, str) else v for k, v in model.items()})
    with pytest.raises(ConfigError, match=match):
        build_model(section, 3, 32)


def test_a_nested_factory_model_is_flattened_and_hp_gets_its_default(factory_module):
    from edgekeras.app.factories import build_model
    from edgekeras.app.inputs import ModelSection
    from edgekeras.models import is_nested

    model = build_model(ModelSection(factory=f"{factory_module}:nested"), 3, 32)
    assert not is_nested(model) and model.get_layer("stem").filters == 4
    assert build_model(ModelSection(factory=f"{factory_module}:build", factory_args={"width": 2}), 3, 32).get_layer(
        "stem"
    ).filters == 2


def test_resolve_weights_per_architecture(monkeypatch, tmp_path):
    v2, v3 = tmp_path / "v2.h5", tmp_path / "v3.h5"
    v2.write_bytes(b"")
    v3.write_bytes(b"")
    monkeypatch.setenv("EDGEKERAS_WEIGHTS", str(v2))
    monkeypatch.delenv("EDGEKERAS_WEIGHTS_MOBILENET_V3_SMALL", raising=False)
    # $EDGEKERAS_WEIGHTS is MobileNetV2's: another architecture downloads rather than load it.
    assert resolve_weights("imagenet", "mobilenet_v3_small") == "imagenet"
    monkeypatch.setenv("EDGEKERAS_WEIGHTS_MOBILENET_V3_SMALL", str(v3))
    assert resolve_weights("imagenet", "mobilenet_v3_small") == str(v3)
    assert resolve_weights("imagenet", "mobilenet_v2") == str(v2) and resolve_weights("imagenet") == str(v2)


def test_pruning_phase_fine_tunes_and_prunes_an_earlier_cut_with_distillation(tiny_tfds_dir, tmp_path, capsys):
    # The float phase trains only the head on a frozen base (the notebook's recipe); the pruning
    # phase fine-tunes from block_15 on, on activations cached at that second cut, and distils.
    config = tiny_config(
        tiny_tfds_dir, tmp_path, model={"trainable_from": ""},
        prune={"trainable_from": "block_15_expand", "policy": "pointwise", "allocation": "global",
               "distill_weight": 0.5, "lr_schedule": "cosine", "warmup_fraction": 0.2},
        qat={"epochs": 0}, export={"conversions": ["float32"], "pruned_conversions": ["float32"]},
        report={"quantized": "", "pruned_quantized": ""},
    )
    run(config)
    out = capsys.readouterr().out
    assert "caching the activations entering 'block_15_expand'" in out
    assert "distilling from the float model" in out
    report = json.loads((tmp_path / "tiny" / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    # block_15, block_16 and Conv_1 hold most of the weights: the whole file is far sparser than with
    # the head alone (a few percent), and the float file stays dense.
    assert by_name["pruned_float32"]["sparsity"] > 0.25
    assert by_name["float32"]["sparsity"] < 0.01
    assert "WARNING" not in out  # the pruning phase fine-tunes what it prunes


def test_pruning_a_frozen_base_is_warned_about(tiny_tfds_dir, tmp_path, capsys):
    config = tiny_config(
        tiny_tfds_dir, tmp_path, model={"trainable_from": ""}, qat={"epochs": 0},
        export={"conversions": ["float32"], "pruned_conversions": ["float32"]},
        report={"quantized": "", "pruned_quantized": ""},
    )
    run(config)
    assert "are in frozen layers, which are never pruned" in capsys.readouterr().out


def test_prune_trainable_from_names_a_layer(tiny_tfds_dir, tmp_path):
    config = tiny_config(tiny_tfds_dir, tmp_path, prune={"trainable_from": "no_such_layer"}, qat={"epochs": 0},
                         report={"quantized": "int8", "pruned_quantized": ""})
    with pytest.raises(ValueError, match=r"`prune.trainable_from` must name a layer"):
        run(config)
