"""apply_widths (zeroing each group down to chosen widths) and channel_importance."""

import numpy as np
import pytest

from edgekeras import keras
from edgekeras.channels import analyse, apply_widths, channel_importance, channel_scores, find_groups, kept_channels, shrink, uniform
from edgekeras.models import clone_with_weights

L = keras.layers


def block_model():
    """A stem, one inverted-residual block with a residual Add, a head and a classifier."""
    inputs = keras.Input((8, 8, 3))
    stem = L.ReLU(6.0)(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)))
    h = L.ReLU(6.0)(L.BatchNormalization(name="expand_bn")(L.Conv2D(16, 1, use_bias=False, name="expand")(stem)))
    h = L.ReLU(6.0)(L.BatchNormalization(name="depthwise_bn")(L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(h)))
    h = L.BatchNormalization(name="project_bn")(L.Conv2D(8, 1, use_bias=False, name="project")(h))
    x = L.Add(name="add")([stem, h])
    x = L.ReLU(6.0)(L.BatchNormalization(name="head_bn")(L.Conv2D(16, 1, use_bias=False, name="head")(x)))
    outputs = L.Dense(3, activation="softmax", name="logits")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            size = layer.gamma.shape[0]
            statistics = [rng.uniform(0.2, 2.0, size), rng.normal(0, 0.3, size), rng.normal(0, 0.3, size), rng.uniform(0.5, 2.0, size)]
            layer.set_weights(statistics)
    return model


def images(count=4):
    return np.random.default_rng(1).uniform(-1, 1, (count, 8, 8, 3)).astype("float32")


def test_channel_importance_scores_every_prunable_group():
    model = block_model()
    importance = channel_importance(model, "bn")
    channel_graph = analyse(model)
    prunable = {group.name: index for index, group in enumerate(channel_graph.groups) if group.prunable}
    assert set(importance) == set(prunable) == {"stem", "expand", "head"}
    for name, index in prunable.items():
        np.testing.assert_allclose(importance[name], channel_scores(channel_graph, index, "bn"))
    # Each BatchNormalization the channels run through adds its |gamma|, normalized to mean 1.
    np.testing.assert_allclose(importance["expand"].mean(), 2.0, rtol=1e-6)


def test_apply_widths_zeroes_the_lowest_gammas_and_shrink_removes_them():
    model = block_model()
    model.get_layer("depthwise_bn").gamma.assign(np.ones(16, "float32"))  # the ranking follows expand_bn alone
    gamma = model.get_layer("expand_bn").gamma.numpy()
    before = model.predict(images(), verbose=0)
    removed = apply_widths(model, {"expand": 8, "head": 16})
    assert list(removed) == ["expand"]  # the head keeps all its channels: nothing to zero
    np.testing.assert_array_equal(removed["expand"], np.sort(np.argsort(gamma, kind="stable")[:8]))
    kernel = model.get_layer("expand").kernel.numpy()
    assert np.all(kernel[..., removed["expand"]] == 0) and np.count_nonzero(kernel.reshape(-1, 16).any(axis=0)) == 8
    zeroed = model.predict(images(), verbose=0)
    assert not np.allclose(before, zeroed)
    slim = shrink(model, round_to=8)
    assert slim.get_layer("expand").filters == 8 and slim.get_layer("head").filters == 16
    np.testing.assert_allclose(slim.predict(images(), verbose=0), zeroed, atol=1e-5)


def test_given_scores_choose_the_channels():
    model = block_model()
    scores = {"head": np.arange(16, dtype="float64")[::-1]}  # the last channels are the least important
    removed = apply_widths(model, {"head": 4}, scores)
    np.testing.assert_array_equal(removed["head"], np.arange(4, 16))
    assert np.all(model.get_layer("head_bn").beta.numpy()[4:] == 0)


def test_an_allocation_applied_then_shrunk_has_its_widths():
    model = block_model()
    groups = find_groups(model)
    widths = uniform(groups, 0.5, round_to=4)
    source = clone_with_weights(model)
    apply_widths(source, widths, channel_importance(source, "l2"))
    assert kept_channels(source, round_to=4) == widths
    slim = shrink(source, round_to=4)
    assert [slim.get_layer(name).filters for name in ("stem", "expand", "head")] == [widths["stem"], widths["expand"], widths["head"]]
    np.testing.assert_allclose(slim.predict(images(), verbose=0), source.predict(images(), verbose=0), atol=1e-5)
    # The dense model the copy came from is untouched.
    assert np.count_nonzero(model.get_layer("expand").kernel.numpy().reshape(-1, 16).any(axis=0)) == 16


def test_full_widths_change_nothing():
    model = block_model()
    weights = model.get_weights()
    assert apply_widths(model, {group.name: group.size for group in find_groups(model)}) == {}
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "widths, scores, match",
    [
        ([("expand", 8)], "bn", r"Argument `widths` must be a dict of group name -> kept channels\. Received: list"),
        ({"nope": 8}, "bn", r"Argument `widths` names no channel group of the model: \['nope'\]"),
        ({"expand": 0}, "bn", r"must keep between 1 and 16 channels of group 'expand'\. Received: widths\['expand'\]=0"),
        ({"expand": 17}, "bn", r"must keep between 1 and 16 channels of group 'expand'\. Received: widths\['expand'\]=17"),
        ({"expand": True}, "bn", r"must keep between 1 and 16 channels of group 'expand'\. Received: widths\['expand'\]=True"),
        ({"expand": 8.0}, "bn", r"must keep between 1 and 16 channels of group 'expand'\. Received: widths\['expand'\]=8\.0"),
        ({"logits": 2}, "bn", r"narrows group 'logits', which is not prunable"),
        ({"expand": 8}, "taylor", r"Argument `scores` must be one of 'l2', 'bn', 'gamma' or a dict\. Received: scores='taylor'"),
        ({"expand": 8}, [1.0], r"Argument `scores` must be a score name or a dict of group name -> scores\. Received: list"),
        ({"expand": 8}, {"head": np.ones(16)}, r"Argument `scores` must score every group `widths` narrows\. Missing: 'expand'"),
        ({"expand": 8}, {"expand": np.ones(8)}, r"must hold 16 finite scores for group 'expand'\. Received: shape \(8,\)"),
        ({"expand": 8}, {"expand": np.full(16, np.nan)}, r"must hold 16 finite scores for group 'expand'"),
    ],
)
def test_bad_arguments_are_refused_before_any_weight_changes(widths, scores, match):
    model = block_model()
    weights = model.get_weights()
    with pytest.raises(ValueError, match=match):
        apply_widths(model, widths, scores)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_an_unknown_importance_score_is_refused():
    with pytest.raises(ValueError, match=r"Argument `score` must be one of 'l2', 'bn', 'gamma', 'taylor'\. Received: score='nope'"):
        channel_importance(block_model(), "nope")
