"""Tests of the oracles for `EdgeTuner` and of the distributed role."""

import keras_tuner
import pytest

from edgekeras.tuning import OBJECTIVE, ORACLES, distributed_role, make_oracle
from edgekeras.tuning.oracle import check_oracle

ORACLE_CLASSES = {
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "hyperband": keras_tuner.oracles.HyperbandOracle,
}


@pytest.mark.parametrize("kind", ORACLES)
def test_make_oracle_builds_each_kind_with_the_score_objective(kind):
    oracle = make_oracle(kind, max_trials=3, max_epochs=3, seed=1)
    assert isinstance(oracle, ORACLE_CLASSES[kind])
    assert oracle.objective.name == OBJECTIVE.name == "score" and oracle.objective.direction == "max"
    check_oracle(oracle)


def test_make_oracle_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="Argument `kind` must be one of random, bayesian, hyperband. Received: kind='grid'"):
        make_oracle("grid")


def test_check_oracle_names_the_problem():
    with pytest.raises(ValueError, match="`oracle` must be a keras-tuner oracle"):
        check_oracle("random")
    with pytest.raises(ValueError, match=r"objective named after a trial metric \(score, val_tflite_accuracy"):
        check_oracle(keras_tuner.oracles.RandomSearchOracle(objective="val_loss", max_trials=1))


@pytest.mark.parametrize(
    "environment, role",
    [
        ({}, None),
        ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}, "chief"),
        ({"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}, "worker"),
    ],
)
def test_distributed_role_follows_keras_tuner_environment(monkeypatch, environment, role):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert distributed_role() == role
