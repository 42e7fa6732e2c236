"""`caches_features`: what `train.cache_features` = true / false / "auto" decides on a machine."""

import pytest
import tensorflow as tf

from edgekeras.app.config import parse_config
from edgekeras.app.phase_inputs import caches_features

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def config(value):
    return parse_config({"train": {"cache_features": value}})


@pytest.mark.parametrize("value", [True, False])
def test_an_explicit_setting_is_kept_on_any_machine(value):
    assert caches_features(config(value)) is value


@pytest.mark.parametrize("gpus, cached", [([], True), (["/physical_device:GPU:0"], False)])
def test_auto_caches_only_without_a_gpu(monkeypatch, gpus, cached):
    asked = []

    def devices(kind=None):
        asked.append(kind)
        return gpus if kind == "GPU" else []

    monkeypatch.setattr(tf.config, "list_physical_devices", devices)
    assert caches_features(config("auto")) is cached
    assert asked == ["GPU"]


def test_auto_is_the_default():
    assert parse_config({}).train.cache_features == "auto"


@pytest.mark.skipif(HAS_GPU, reason="the CPU branch: this machine has a GPU")
def test_auto_caches_on_this_cpu_machine():
    assert caches_features(config("auto")) is True


@pytest.mark.skipif(not HAS_GPU, reason="the GPU branch needs a GPU")
def test_auto_trains_on_images_on_this_gpu_machine():
    assert caches_features(config("auto")) is False
