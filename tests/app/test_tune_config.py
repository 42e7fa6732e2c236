"""Tests of `edgekeras tune --config FILE.toml`: the config file and the CLI command."""

import json
import os

import pytest

from edgekeras.app.tune import load_tune_config, parse_tune_config


def test_the_shipped_tune_config_is_valid():
    config = load_tune_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tune.toml"))
    assert config.tune.max_trials == 20
    assert config.data.validation_size > 0
    assert config.budget.max_gzip_bytes == 1_800_000 and config.budget.max_latency_ms is None
    assert config.tune.int8_float_layers == ("expanded_conv_depthwise",)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"tune": {"trials": 3}}, r"Unknown key `trials` in section \[tune\]"),
        ({"tune": {"oracle": "grid"}}, r"Config key `tune.oracle` must be one of 'random', 'bayesian', 'hyperband'"),
        ({"tune": {"max_trials": 0}}, r"Config key `tune.max_trials` must be an integer >= 1. Received: tune.max_trials=0"),
        ({"tune": {"overwrite": "yes"}}, r"Config key `tune.overwrite` must be true or false"),
        ({"tune": {"int8_float_layers": "Conv1"}}, r"Config key `tune.int8_float_layers` must be a list of layer names"),
        ({"tune": {"space": {"final_sparsity": 1.5}}}, r"\[tune.space\].*`final_sparsity` must be in \[0, 1\)"),
        ({"tune": {"budget": {"max_size": 1}}}, r"Unknown key `max_size` in table \[tune.budget\]"),
        ({"tune": {"budget": {"max_gzip_bytes": -1}}}, r"`tune.budget.max_gzip_bytes` must be a number >= 0"),
        ({"train": {"epochs": 1}}, r"Unknown section `train`"),
        ({"data": {"image_size": 8}}, r"data.image_size"),
    ],
)
def test_tune_config_errors_name_the_key(values, match):
    from edgekeras.app.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        parse_tune_config(values)


def test_cli_tune_reports_config_errors_in_one_line(tmp_path, capsys):
    from edgekeras.app.cli import main

    path = tmp_path / "bad.toml"
    path.write_text("[tune]\noracle = 'grid'\n")
    assert main(["tune", "--config", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("edgekeras tune: error: Config key `tune.oracle`") and "\n" not in error


def test_cli_tune_runs_a_search_and_prints_the_top_trials(tmp_path, tiny_tfds_dir, capsys):
    from edgekeras.app.cli import main

    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
[data]
dataset = "edgekeras_tiny_images"
data_dir = "{tiny_tfds_dir}"
download = false
image_size = 32
batch_size = 16
validation_size = 20
augment = false

[model]
alpha = 0.35
weights = "none"
trainable_from = "block_16_expand"

[tune]
max_trials = 2
directory = "{tmp_path}"
project_name = "cli"
conversion = "float32"
cache_features = true
cache_engine = "keras"

[tune.space]
qat_epochs = 0
"""
    )
    assert main(["tune", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[edgekeras tune] trial 0: .tflite val accuracy" in out and "[edgekeras tune] trial 1:" in out
    assert out.count("cached the frozen prefix's activations") == 1  # once per search, not per trial
    assert "tflite acc" in out and "2 finished trial(s)" in out
    summary = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert sorted(t["trial_id"] for t in summary["trials"]) == ["0", "1"]
    assert summary["best_trial"] == summary["trials"][0]["trial_id"]
    assert all((tmp_path / "cli" / f"trial_{i}" / "model.tflite").is_file() for i in "01")
