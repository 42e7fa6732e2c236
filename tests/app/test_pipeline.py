"""`edgekeras run`: the whole pipeline on a tiny TFDS dataset, and its CLI."""

import json
import os

import numpy as np
import pytest

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
    assert roles == {
        "float32": "original", "int8": "other", "qat_int8": "quantized",
        "pruned_float32": "pruned", "pqat_int8": "pruned_quantized",
    }
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
    assert {"data_and_model", "cache_features", "train_and_prune", "qat", "export", "evaluate"} <= set(result.timings)


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


def test_qat_skip_layers_reach_the_trainer(tiny_tfds_dir, tmp_path):
    import tensorflow as tf

    from edgekeras.models import build_transfer_model
    from edgekeras.app.factories import make_trainer

    config = tiny_config(tiny_tfds_dir, tmp_path, qat={"skip_layers": ["Conv_1", "Conv_1_bn", "out_relu"]})
    model = build_transfer_model(3, 32, alpha=0.35, weights=None, trainable_from="block_16_expand")
    trainer = make_trainer(model, config, None, tf.distribute.get_strategy(), None)
    assert trainer.quantize_skip == ("Conv_1", "Conv_1_bn", "out_relu")


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

    config = tiny_config(tiny_tfds_dir, tmp_path)
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
    assert calls == ["qat_int8", "pruned_float32", "pqat_int8"]
    for name in ("tflite/float32.tflite", "tflite/int8.tflite"):
        assert _files(run_dir)[name] == before[name]
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "qat_int8", "pruned_float32", "pqat_int8"]
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
