"""`edgekeras run` with [channels]: the slimmed variants, the latency target, and the checks made before training."""

import json

import pytest

from edgekeras.app.config import ConfigError, parse_config
from edgekeras.app.pipeline import run
from edgekeras.models import load_model
from tests.app.test_pipeline import tiny_config

CHANNELS = {"enabled": True, "remove_fraction": 0.5, "round_to": 8, "epochs": 1, "steps_per_epoch": 2,
            "learning_rate": 0.001, "mask_updates": 2}


def slim_config(tfds_dir, output_dir, **channels):
    return tiny_config(
        tfds_dir, output_dir, prune={"enabled": False}, qat={"epochs": 0},
        channels={**CHANNELS, **channels}, report={"pruned": "", "pruned_quantized": "", "quantized": "int8"},
    )


def widths(model):
    return {layer.name: layer.kernel.shape[-1] for layer in model.layers if layer.__class__.__name__ == "Conv2D"}


def test_slimmed_variants_are_exported_evaluated_and_narrower(tiny_tfds_dir, tmp_path):
    run(slim_config(tiny_tfds_dir, tmp_path))
    run_dir = tmp_path / "tiny"
    report = json.loads((run_dir / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "slim_float32", "slim_int8"]
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["slim_int8"]["source"] == "slim" and by_name["slim_int8"]["size_bytes"] < by_name["int8"]["size_bytes"]
    dense, slim = load_model(run_dir / "models" / "float.h5"), load_model(run_dir / "models" / "slim.h5")
    narrowed = {name for name in widths(dense) if widths(slim)[name] < widths(dense)[name]}
    assert "block_1_expand" in narrowed and "Conv_1" in narrowed
    chosen = json.loads((run_dir / "channels" / "widths.json").read_text())
    assert all(widths(slim)[name] == kept for name, kept in chosen.items())
    assert json.loads((run_dir / "state.json").read_text())["timings"]["slim"] > 0


def test_the_slimmed_model_pruned_on_top_is_exported_beside_it(tiny_tfds_dir, tmp_path):
    run(slim_config(tiny_tfds_dir, tmp_path, prune=True, prune_conversions=["float32", "int8"]))
    run_dir = tmp_path / "tiny"
    report = json.loads((run_dir / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert list(by_name) == ["float32", "int8", "slim_float32", "slim_int8", "slim_pruned_float32", "slim_pruned_int8"]
    assert by_name["slim_pruned_float32"]["sparsity"] > 0.3 > by_name["slim_float32"]["sparsity"]
    assert by_name["slim_pruned_int8"]["gzip_bytes"] < by_name["slim_int8"]["gzip_bytes"]
    slim, sparse = load_model(run_dir / "models" / "slim.h5"), load_model(run_dir / "models" / "slim_pruned.h5")
    assert widths(slim) == widths(sparse)


def test_a_latency_target_measures_a_table_and_allocates_widths(tiny_tfds_dir, tmp_path):
    run(slim_config(tiny_tfds_dir, tmp_path, target_latency=0.7, allocation="latency"))
    run_dir = tmp_path / "tiny"
    table = json.loads((run_dir / "channels" / "latency_table.json").read_text())
    assert table["layers"]
    chosen = json.loads((run_dir / "channels" / "widths.json").read_text())
    assert chosen and all(kept % 8 == 0 for kept in chosen.values())


@pytest.mark.parametrize(
    "channels, match",
    [
        ({"skip_groups": ["nowhere"]}, r"Config key `channels.skip_groups` must name prunable channel groups"),
        ({"trainable_from": "nowhere"}, r"Config key `channels.trainable_from` must name a layer of the model"),
        ({"latency_table": "missing.json", "target_latency": 0.5}, r"Config key `channels.latency_table` must name"),
    ],
)
def test_bad_keys_fail_before_training(tiny_tfds_dir, tmp_path, channels, match):
    with pytest.raises(ConfigError, match=match):
        run(slim_config(tiny_tfds_dir, tmp_path, **channels))
    assert not (tmp_path / "tiny" / "checkpoints").exists()


@pytest.mark.parametrize(
    "channels, match",
    [
        ({"remove_fraction": 1.0}, r"Config key `channels.remove_fraction` must be in \(0, 1\)"),
        ({"target_latency": 1.0}, r"Config key `channels.target_latency` must be in \[0, 1\)"),
        ({"allocation": "greedy"}, r"Config key `channels.allocation` must be one of 'latency', 'uniform'"),
        ({"score": "taylor"}, r"Config key `channels.score` must be one of 'activation', 'bn', 'l2'"),
        ({"conversions": ["int4"]}, r"Config key `channels.conversions` must be a non-empty list of conversions"),
        ({"epochs": 0}, r"Config key `channels.epochs` must be an integer >= 1"),
        ({"prune": True, "prune_epochs": 0}, r"Config key `channels.prune_epochs` must be an integer >= 1"),
        ({"prune_conversions": []}, r"Config key `channels.prune_conversions` must be a non-empty list"),
    ],
)
def test_channels_section_values_are_checked(channels, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"channels": {"enabled": True, **channels}})


def test_a_slimmed_variant_can_hold_a_report_role_only_when_channels_run():
    with pytest.raises(ConfigError, match=r"'slim_int8' needs `channels.enabled` = true"):
        parse_config({"report": {"quantized": "slim_int8"}})


class _Killed(Exception):
    pass


def test_a_run_killed_during_channel_pruning_resumes_from_its_checkpoint(tiny_tfds_dir, tmp_path, monkeypatch):
    from edgekeras.app import stages
    from edgekeras.compat import keras

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise _Killed(f"killed after epoch {epoch}")

    original = stages._fit_callbacks
    epochs_seen = []

    def callbacks(context, name, model):
        found = original(context, name, model)
        if name == "slim" and not epochs_seen:
            epochs_seen.append(name)
            return found + [KillAfterFirstEpoch()]
        return found

    monkeypatch.setattr(stages, "_fit_callbacks", callbacks)
    config = slim_config(tiny_tfds_dir, tmp_path, epochs=2)
    with pytest.raises(_Killed):
        run(config)
    run_dir = tmp_path / "tiny"
    chosen = json.loads((run_dir / "channels" / "widths.json").read_text())
    assert (run_dir / "checkpoints" / "slim" / "channels").is_dir()
    monkeypatch.setattr(stages, "_fit_callbacks", original)
    run(config)  # resumes: the float phase and the first channel epoch come from their checkpoints
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["attempts"] == 2
    slim = load_model(run_dir / "models" / "slim.h5")
    assert {name: widths(slim)[name] for name in chosen} == chosen
    assert json.loads((run_dir / "channels" / "widths.json").read_text()) == chosen
