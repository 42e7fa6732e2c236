"""Tests for edgekeras.trainers.optimizers: one new optimizer per phase, of the model's Keras."""

import keras as keras3
import pytest

import edgekeras.app.sections as sections
import edgekeras.choices as choices
import edgekeras.trainers.optimizers as optimizers_module
from edgekeras.app.sections import ConfigError, TrainSection
from edgekeras.choices import OPTIMIZERS
from edgekeras.compat import keras as tf_keras
from edgekeras.trainers import make_optimizer, phase_optimizer

KERASES = [pytest.param(tf_keras, id="tf_keras"), pytest.param(keras3, id="keras3")]


@pytest.mark.parametrize("library", KERASES)
@pytest.mark.parametrize("given", ["adam", {"class_name": "Adam", "config": {"learning_rate": 0.01}}])
def test_identifiers_make_a_new_optimizer_of_the_models_keras(library, given):
    first, second = make_optimizer(given, "float", library), make_optimizer(given, "float", library)
    # (tf_keras makes a config dict without "module" a legacy Adam)
    assert type(first).__name__ == "Adam" and type(first).__module__.split(".")[0] == library.__name__
    assert first is not second


@pytest.mark.parametrize("library", KERASES)
def test_an_instance_is_made_anew_from_its_config(library):
    given = library.optimizers.SGD(0.05, momentum=0.9)
    made = make_optimizer(given, "qat", library)
    assert type(made) is type(given) and made is not given
    assert made.get_config()["momentum"] == pytest.approx(0.9)


@pytest.mark.parametrize("library", KERASES)
def test_phase_optimizer_makes_each_phase_with_the_keras_it_is_given(library):
    make = phase_optimizer({"float": 1e-3, "prune": 4e-4, "qat": 1e-5}, kind="sgd", decay_steps={"prune": 100})
    pruning = make_optimizer(make, "prune", library)
    assert isinstance(pruning, library.optimizers.SGD)
    assert isinstance(pruning._learning_rate, library.optimizers.schedules.CosineDecay)
    assert float(make_optimizer(make, "qat", library).learning_rate.numpy()) == pytest.approx(1e-5)


def test_functions_of_no_argument_or_the_phase_still_work():
    assert isinstance(make_optimizer(lambda: keras3.optimizers.SGD(), "float", keras3), keras3.optimizers.SGD)
    phases = []
    make_optimizer(lambda phase: phases.append(phase) or tf_keras.optimizers.Adam(), "prune")
    assert phases == ["prune"]


def test_an_optimizer_of_the_other_keras_is_a_clear_error():
    with pytest.raises(TypeError, match=r"Argument `optimizer` must be an optimizer of the model's Keras \(keras\)\. "
                                        r"Received: optimizer=<tf_keras.*pass its name"):
        make_optimizer(tf_keras.optimizers.Adam(), "float", keras3)


def test_a_function_returning_the_other_keras_optimizer_is_a_clear_error():
    with pytest.raises(TypeError, match=r"Argument `optimizer` must return an optimizer of the model's Keras \(tf_keras\)\. "
                                        r"Received: optimizer\('qat'\) returned <keras"):
        make_optimizer(lambda phase: keras3.optimizers.Adam(), "qat", tf_keras)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_name_a_config_accepts_is_one_the_trainer_builds(name):
    # The config (no TensorFlow) and the trainer read one tuple: a name added there must work in both.
    assert TrainSection(optimizer=name).check("train") is None
    made = make_optimizer(phase_optimizer(dict.fromkeys(("float", "prune", "qat"), 0.01), kind=name), "float")
    assert type(made).__name__.lower() == name


def test_the_optimizer_names_have_one_home():
    assert optimizers_module.OPTIMIZERS is choices.OPTIMIZERS and sections.OPTIMIZERS is choices.OPTIMIZERS
    with pytest.raises(ValueError, match=r"Argument `kind` must be one of adam, sgd. Received: kind='lion'"):
        phase_optimizer(dict.fromkeys(("float", "prune", "qat"), 0.01), kind="lion")
    with pytest.raises(ConfigError, match=r"`train.optimizer` must be one of 'adam', 'sgd'"):
        TrainSection(optimizer="lion").check("train")
