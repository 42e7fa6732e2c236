"""`edgekeras run` with `model.keras = "keras3"`: the whole pipeline on Keras 3 models."""

import json

import pytest

from edgekeras.app.config import ConfigError, load_config, parse_config
from edgekeras.app.factories import build_model
from edgekeras.app.pipeline import run
from edgekeras.app.report import validate_report
from edgekeras.models import load_model
from edgekeras.qat import engine_for

from tests.app.test_pipeline import tiny_config


def test_keras3_run_trains_every_phase_exports_and_reports(tiny_tfds_dir, tmp_path):
    config = tiny_config(tiny_tfds_dir, tmp_path, model={"keras": "keras3"})
    result = run(config)
    run_dir = tmp_path / "tiny"
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "qat_int8", "pruned_float32", "pqat_int8"]
    by_name = {v["name"]: v for v in report["variants"]}
    assert 0.05 < by_name["pruned_float32"]["sparsity"] < 0.5
    assert by_name["pqat_int8"]["sparsity"] > 0.05
    for variant in report["variants"]:
        assert (run_dir / variant["file"]).is_file()
    assert load_config(run_dir / "config.toml").model.keras == "keras3"
    pqat = load_model(run_dir / "models" / "pqat.keras")
    assert engine_for(pqat).name == "keras3" and engine_for(pqat).is_quantization_aware(pqat)
    assert "| pqat_int8 | pruned_quantized |" in result.table


def test_model_keras_must_name_a_keras():
    with pytest.raises(ConfigError, match=r"Config key `model.keras` must be one of 'tf_keras', 'keras3'. Received: model.keras='keras2'"):
        parse_config({"model": {"keras": "keras2"}}, source="test")


@pytest.mark.parametrize("key, model_keras", [("tf_keras", "keras3"), ("keras3", "tf_keras")])
def test_a_factory_model_of_the_other_keras_is_refused_before_training(tmp_path, monkeypatch, key, model_keras):
    module = f"{model_keras}_models_for_a_{key}_run"  # one module per case: imports are cached
    (tmp_path / f"{module}.py").write_text(
        "from edgekeras.backend import by_name\n"
        "def build(num_classes, image_size):\n"
        f"    keras = by_name({model_keras!r}).keras\n"
        "    inputs = keras.Input((image_size, image_size, 3))\n"
        "    x = keras.layers.GlobalAveragePooling2D()(inputs)\n"
        "    return keras.Model(inputs, keras.layers.Dense(num_classes, activation='softmax')(x))\n"
    )
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        {"model": {"factory": f"{module}:build", "keras": key}, "data": {"normalization": "zero_to_one"}},
        source="test",
    )
    with pytest.raises(ConfigError, match=rf"gives a {model_keras} model, but `model.keras` says the run uses {key}"):
        build_model(config.model, num_classes=3, image_size=32)


def test_model_keras_keeps_earlier_run_directories_resumable():
    from edgekeras.app.state import config_fingerprint

    # The fingerprint edgekeras wrote for this config before `model.keras` existed (8b42761).
    earlier = "206a2e2f85eec9d1b2f4aeff5c0a88060809321b33963342c3367dbd0ffc3b17"
    assert config_fingerprint(parse_config({"run": {"name": "old"}}, source="test")) == earlier
    keras3 = parse_config({"run": {"name": "old"}, "model": {"keras": "keras3"}}, source="test")
    assert config_fingerprint(keras3) != earlier
