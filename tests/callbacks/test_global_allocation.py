import copy

import numpy as np
import pytest

from edgekeras import sparsity
from edgekeras.callbacks import MagnitudePruning
from edgekeras.compat import keras
from edgekeras.schedules import ConstantSparsity, MbyNSparsity, PolynomialDecay


def _arrays():
    rng = np.random.default_rng(0)
    # A big layer of small weights and a small layer of large ones.
    return [rng.normal(0, 0.01, 4000), rng.normal(0, 1.0, 400), rng.normal(0, 0.1, 1000)]


@pytest.mark.parametrize("target", [0.0, 0.3, 0.75, 0.9])
def test_global_counts_reach_the_target_exactly(target):
    arrays = _arrays()
    counts = sparsity.global_prune_counts(arrays, target)
    assert counts.sum() == round(5400 * target)
    assert all(0 <= c < a.size for c, a in zip(counts, arrays))


def test_global_counts_prune_small_weights_first():
    counts = sparsity.global_prune_counts(_arrays(), 0.5)
    fractions = counts / np.array([4000, 400, 1000])
    assert fractions[0] > 0.6 and fractions[1] < 0.01


def test_a_layer_bound_moves_the_budget_to_other_layers():
    arrays = _arrays()
    counts = sparsity.global_prune_counts(arrays, 0.75, max_layer_sparsity=0.8)
    assert counts.sum() == round(5400 * 0.75)
    assert counts[0] == 3200 and counts[2] <= 800


def test_every_layer_keeps_a_weight():
    assert sparsity.global_prune_counts([np.ones(10), np.full(10, 0.1)], 0.5).tolist() == [1, 9]


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="stem"),
            keras.layers.Conv2D(64, 1, name="expand"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, name="classifier"),
        ]
    )
    # Make the layers' magnitudes differ as in real networks.
    model.get_layer("expand").kernel.assign(model.get_layer("expand").kernel * 0.05)
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def _fit(model, pruning):
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 5
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[pruning], verbose=0)


def test_global_pruning_in_fit_reaches_the_overall_target_with_unequal_layers():
    model = _model()
    pruning = MagnitudePruning(ConstantSparsity(0.6, frequency=1), allocation="global")
    _fit(model, pruning)
    pairs = sparsity.select_weights(model)
    total = sum(int(np.size(w)) for _, w in pairs)
    zeros = sum(int(np.sum(np.asarray(w) == 0)) for _, w in pairs)
    assert zeros == round(total * 0.6)
    per_layer = sparsity.layer_sparsities(model)
    assert per_layer["expand"] > 0.7 > per_layer["stem"]


def test_global_pruning_honours_the_layer_bound_in_fit():
    model = _model()
    _fit(model, MagnitudePruning(PolynomialDecay(0.0, 0.6, 0, 4, frequency=1), allocation="global", max_layer_sparsity=0.65))
    assert max(sparsity.layer_sparsities(model).values()) <= 0.65 + 1e-9
    assert sparsity.overall_sparsity(model) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"allocation": "greedy"}, r"Argument `allocation` must be one of 'uniform', 'global'. Received: allocation='greedy'"),
        ({"max_layer_sparsity": 0.9}, r"global allocation only. Received: max_layer_sparsity=0.9 with allocation='uniform'"),
        ({"allocation": "global", "max_layer_sparsity": 1.0}, r"must be in \(0, 1\) or None. Received: max_layer_sparsity=1.0"),
        ({"allocation": "global", "max_layer_sparsity": 0.5}, r"must be >= the schedule's final sparsity 0.6"),
    ],
)
def test_allocation_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagnitudePruning(ConstantSparsity(0.6), **kwargs)


def test_m_by_n_is_uniform_only():
    with pytest.raises(ValueError, match=r"must be \"uniform\" with an m-by-n schedule"):
        MagnitudePruning(MbyNSparsity(), allocation="global")


def test_global_allocation_survives_deepcopy_and_config():
    pruning = MagnitudePruning(ConstantSparsity(0.6, frequency=1), allocation="global", max_layer_sparsity=0.8)
    clone = copy.deepcopy(pruning)
    assert (clone.allocation, clone.max_layer_sparsity) == ("global", 0.8)
    restored = MagnitudePruning.from_config(pruning.get_config())
    assert (restored.allocation, restored.max_layer_sparsity) == ("global", 0.8)
    model = _model()
    _fit(model, clone)
    assert sparsity.overall_sparsity(model) == pytest.approx(0.6, abs=1e-3)


def _frozen_stem_model():
    model = _model()
    # The two big layers frozen (576 weights), the 108-weight stem trainable.
    model.get_layer("expand").trainable = False
    model.get_layer("classifier").trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def test_pruning_leaving_most_weights_in_frozen_layers_warns():
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1))
    with pytest.warns(UserWarning, match=r"frozen layers hold .* more .* `\[prune\] trainable_from`"):
        _fit(_frozen_stem_model(), pruning)


def test_pruning_frozen_layers_on_purpose_warns_that_they_cannot_recover():
    pruning = MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1), include_frozen=True)
    model = _frozen_stem_model()
    with pytest.warns(UserWarning, match=r"prunes 2 frozen layer\(s\) \(expand, classifier\).*cannot recover"):
        _fit(model, pruning)
    assert sparsity.weight_sparsity(model.get_layer("expand").kernel) == pytest.approx(0.5, abs=0.01)


def test_pruning_trainable_layers_does_not_warn(recwarn):
    _fit(_model(), MagnitudePruning(ConstantSparsity(0.5, begin_step=0, frequency=1)))
    assert not [w for w in recwarn if "MagnitudePruning" in str(w.message)]
