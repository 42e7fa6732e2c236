"""Tests of `SearchSpace`: what each trial draws, and the checks of its arguments."""

import keras_tuner
import pytest

from edgekeras.tuning import SearchSpace


def test_search_space_declares_each_kind_of_hyperparameter():
    space = SearchSpace(
        learning_rate=(1e-4, 1e-2), final_sparsity={"min": 0.5, "max": 0.9, "step": 0.1}, pruning_begin=0.1,
        pruning_end={"values": [0.6, 0.9]}, qat_epochs=[0, 2], target_latency={"values": [0.5, 1.0]},
    )
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    kinds = {h.name: type(h).__name__ for h in hp.space}
    assert kinds == {"learning_rate": "Float", "final_sparsity": "Float", "pruning_begin": "Fixed",
                     "pruning_end": "Choice", "qat_epochs": "Int", "target_latency": "Choice"}
    assert hp.space[0].sampling == "log"
    assert SearchSpace.from_config(space.get_config()).get_config() == space.get_config()
    assert set(space.values(hp)) == set(kinds)


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"learning_rate": (0.0, 1e-2)}, r"`learning_rate` must be > 0"),
        ({"final_sparsity": (0.5, 1.0)}, r"`final_sparsity` must be in \[0, 1\)"),
        ({"pruning_end": 1.5}, r"`pruning_end` must be in \(0, 1\]"),
        ({"pruning_begin": 0.7, "pruning_end": (0.6, 1.0)}, r"overlap"),
        ({"qat_epochs": {"values": [0, 1.5]}}, r"`qat_epochs` must hold integers"),
        ({"qat_epochs": {"min": 0, "max": 1.5}}, r"`qat_epochs` must have integer bounds"),
        ({"learning_rate": (1e-2, 1e-4)}, r"min < max"),
        ({"learning_rate": "fast"}, r"Received: learning_rate='fast'"),
        ({"target_latency": 0.0}, r"`target_latency` must be in \(0, 1\]. Received: target_latency=0.0"),
        ({"target_latency": (0.5, 1.2)}, r"`target_latency` must be in \(0, 1\]. Received: target_latency=\(0.5, 1.2\)"),
        ({"target_latency": {"values": [0.6, 1.5]}}, r"`target_latency` must be in \(0, 1\]"),
        ({"target_latency": "fast"}, r"Received: target_latency='fast'"),
    ],
)
def test_search_space_rejects_bad_values(arguments, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(**arguments)


def test_search_space_from_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Unknown search-space key `sparsity`"):
        SearchSpace.from_config({"sparsity": 0.5})


def test_search_space_does_not_prune_channels_by_default():
    hp = keras_tuner.HyperParameters()
    SearchSpace().declare(hp)
    # Not declared: a seeded search draws the same values as before the hyperparameter existed.
    assert "target_latency" not in hp.values and SearchSpace().values(hp)["target_latency"] == 1.0
    assert "target_latency=1.0" in repr(SearchSpace())
    SearchSpace(target_latency=0.7).declare(hp)
    assert hp.get("target_latency") == 0.7 and SearchSpace(target_latency=0.7).values(hp)["target_latency"] == 0.7
