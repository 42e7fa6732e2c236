"""Tests of `edgekeras tune --config FILE.toml`: the config file and the CLI command."""

import json
import os

import pytest

from edgekeras.app.tune import load_tune_config, parse_tune_config
from edgekeras.choices import KERASES


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
        ({"tune": {"space": {"target_latency": 0}}}, r"\[tune.space\].*`target_latency` must be in \(0, 1\]. Received"),
        ({"tune": {"channel_epochs": 0}}, r"Config key `tune.channel_epochs` must be an integer >= 1. Received: tune.channel_epochs=0"),
        ({"tune": {"channel_steps_per_epoch": -1}}, r"Config key `tune.channel_steps_per_epoch` must be an integer >= 0"),
        ({"tune": {"channel_allocation": "fast"}}, r"Config key `tune.channel_allocation` must be one of 'latency', 'uniform'"),
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


def tiny_data(tiny_tfds_dir):
    """The [data] table of the tiny tune configs."""
    return f"""[data]
dataset = "edgekeras_tiny_images"
data_dir = "{tiny_tfds_dir}"
download = false
image_size = 32
batch_size = 16
validation_size = 20
augment = false
"""


@pytest.mark.parametrize("keras_name", KERASES)
def test_cli_tune_runs_a_search_and_prints_the_top_trials(tmp_path, tiny_tfds_dir, capsys, keras_name):
    from edgekeras.app.cli import main
    from edgekeras.models import load_model
    from edgekeras.qat import engine_for

    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
{tiny_data(tiny_tfds_dir)}
[model]
keras = "{keras_name}"
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
    # Each trial keeps its model in its Keras' own format.
    saved = load_model(tmp_path / "cli" / "trial_0" / ("model.h5" if keras_name == "tf_keras" else "model.keras"))
    assert engine_for(saved).name == {"tf_keras": "tfmot", "keras3": "keras3"}[keras_name]


def test_tune_config_channel_keys_reach_the_tuner(tiny_tfds_dir, monkeypatch):
    from edgekeras.app import tune as tune_module

    class Stop(Exception):
        pass

    def tuner(oracle, build, **kwargs):
        raise Stop(kwargs)

    monkeypatch.setattr(tune_module, "EdgeTuner", tuner)
    config = parse_tune_config({
        "data": {"dataset": "edgekeras_tiny_images", "data_dir": str(tiny_tfds_dir), "image_size": 32, "validation_size": 20},
        "tune": {"channel_epochs": 2, "channel_steps_per_epoch": 5, "channel_allocation": "uniform",
                 "space": {"target_latency": {"values": [0.6, 1.0]}}},
    })
    assert config.space.target_latency == {"values": [0.6, 1.0]}
    with pytest.raises(Stop) as stopped:
        tune_module.tune(config, verbose=0)
    (kwargs,) = stopped.value.args
    assert (kwargs["channel_epochs"], kwargs["channel_steps_per_epoch"], kwargs["channel_allocation"]) == (2, 5, "uniform")
    assert kwargs["search_space"] is config.space
    defaults = parse_tune_config({}).tune
    assert (defaults.channel_epochs, defaults.channel_steps_per_epoch, defaults.channel_allocation) == (1, 0, "latency")
    assert parse_tune_config({}).space.target_latency == 1.0


@pytest.mark.slow
def test_cli_tune_searches_the_latency_target_of_mobilenet_v2(tmp_path, tiny_tfds_dir, capsys):
    from edgekeras.models import load_model

    path = tmp_path / "slim.toml"
    path.write_text(
        f"""
{tiny_data(tiny_tfds_dir)}
[model]
alpha = 0.35
weights = "none"
trainable_from = "block_16_expand"

[tune]
max_trials = 1
directory = "{tmp_path}"
project_name = "slim"
conversion = "int8"
cache_features = true
cache_engine = "keras"
channel_steps_per_epoch = 2
channel_allocation = "uniform"

[tune.space]
qat_epochs = 0
final_sparsity = 0.5
target_latency = 0.7
"""
    )
    assert main_tune(path) == 0
    assert "latency table of" in capsys.readouterr().out
    (slim,) = json.loads((tmp_path / "slim" / "results.json").read_text())["trials"]
    assert slim["epochs"]["channels"] == 1 and os.path.isfile(slim["tflite_path"])
    model = load_model(slim["model_path"])
    widths = [layer.filters for layer in model.layers if layer.name == "block_1_expand"]
    assert widths and widths[0] < 48  # the frozen, high-resolution prefix was narrowed
    assert not model.get_layer("block_1_expand").trainable and model.get_layer("block_16_expand").trainable


def main_tune(path):
    from edgekeras.app.cli import main

    return main(["tune", "--config", str(path)])


def test_tune_configs_take_the_same_model_and_data_keys():
    config = parse_tune_config({
        "data": {"directory": "photos", "test_size": 20},
        "model": {"architecture": "efficientnet_b0", "weights": "none"},
    })
    assert (config.data.directory, config.model.resolved_architecture) == ("photos", "efficientnet_b0")
    config = parse_tune_config({"model": {"factory": "mymodels:build", "factory_args": {"width": 4}},
                                "data": {"normalization": "zero_to_one"}})
    assert config.model.kind == "factory" and config.model.factory_args == {"width": 4}


@pytest.mark.parametrize(
    "values, match",
    [
        ({"model": {"architecture": "vgg16"}}, r"Config key `model.architecture` must be one of 'mobilenet_v2'"),
        ({"model": {"factory": "mymodels:build"}}, r"Config key `data.normalization` must say how the model of `model.factory`"),
        ({"data": {"dataset": "mnist", "directory": "x"}}, r"Config keys `data.dataset`, `data.directory` each name"),
    ],
)
def test_tune_config_model_and_data_errors(values, match):
    from edgekeras.app.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        parse_tune_config(values)


def _photos(root):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for label, name in enumerate(("ant", "bee")):
        os.makedirs(root / name)
        for index in range(10):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            image[..., label] += 180
            (root / name / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


def test_tune_searches_an_architecture_on_an_image_directory(tmp_path, capsys):
    from edgekeras.app.tune import tune

    config = parse_tune_config({
        "data": {"directory": str(_photos(tmp_path / "photos")), "image_size": 32, "batch_size": 8, "validation_size": 4,
                 "test_size": 2, "augment": False},
        "model": {"architecture": "mobilenet_v3_small", "weights": "none", "train_batchnorm": True},
        "tune": {"max_trials": 1, "directory": str(tmp_path), "project_name": "v3", "conversion": "float32",
                 "float_epochs": 1, "prune_epochs": 0, "cache_features": False, "space": {"qat_epochs": 0}},
    })
    tuner = tune(config, verbose=1)
    out = capsys.readouterr().out
    assert "14 training / 4 validation photos images at 32px (scaled 'pixels')" in out
    summary = json.loads((tmp_path / "v3" / "results.json").read_text())
    assert [t["trial_id"] for t in summary["trials"]] == ["0"]
    assert (tmp_path / "v3" / "trial_0" / "model.tflite").is_file()
    assert tuner.oracle.get_best_trials(1)[0].status == "COMPLETED"


def test_tune_passes_each_trial_hp_to_a_factory_that_takes_it(tmp_path, tiny_tfds_dir, monkeypatch):
    from edgekeras.app.tune import tune

    (tmp_path / "edgekeras_tune_factories.py").write_text(
        "from edgekeras import keras\n\n\n"
        "def build(num_classes, image_size, hp):\n"
        "    inputs = keras.Input((image_size, image_size, 3))\n"
        "    x = keras.layers.Conv2D(hp.Choice('filters', [2, 4]), 3, name='stem')(inputs)\n"
        "    x = keras.layers.GlobalAveragePooling2D()(x)\n"
        "    return keras.Model(inputs, keras.layers.Dense(num_classes, activation='softmax')(x))\n"
    )
    monkeypatch.chdir(tmp_path)
    config = parse_tune_config({
        "data": {"dataset": "edgekeras_tiny_images", "data_dir": tiny_tfds_dir, "download": False, "image_size": 32,
                 "batch_size": 16, "validation_size": 20, "augment": False, "normalization": "zero_to_one"},
        "model": {"factory": "edgekeras_tune_factories:build"},
        "tune": {"max_trials": 2, "directory": str(tmp_path), "project_name": "hp", "conversion": "float32",
                 "prune_epochs": 0, "cache_features": False, "space": {"qat_epochs": 0}},
    })
    tuner = tune(config, verbose=0)
    trials = tuner.oracle.trials.values()
    assert {trial.hyperparameters.values["filters"] for trial in trials} <= {2, 4}
    assert all("filters" in trial.hyperparameters.values for trial in trials) and len(trials) == 2
