"""Where a group's channels live, importance scores, masks and zero_channels."""

import numpy as np
import pytest

from edgekeras import keras
from edgekeras.channels import analyse, channel_masks, channel_scores, group_weights, zero_channels

L = keras.layers


def model_with_and_without_batchnorm():
    inputs = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 1, name="normed")(inputs))
    y = L.Conv2D(4, 1, name="plain")(inputs)
    x = L.Conv2D(5, 1, name="after")(L.Concatenate(name="concat")([x, y]))
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))


def index_of(channel_graph, name):
    return [group.name for group in channel_graph.groups].index(name)


def test_group_weights_name_every_variable_of_a_channel():
    channel_graph = analyse(model_with_and_without_batchnorm())
    places = group_weights(channel_graph)
    normed = [(layer.name, role, axis, start) for layer, role, _, axis, start in places[index_of(channel_graph, "normed")]]
    assert normed == [("normed", "kernel", -1, 0), ("normed", "bias", -1, 0), ("bn", "gamma", -1, 0), ("bn", "beta", -1, 0)]
    plain = [(layer.name, role, start) for layer, role, _, _, start in places[index_of(channel_graph, "plain")]]
    assert plain == [("plain", "kernel", 0), ("plain", "bias", 0)]


def test_scores_rank_by_gamma_or_by_kernel_norm():
    model = model_with_and_without_batchnorm()
    model.get_layer("bn").gamma.assign([0.1, 2.0, 1.0, 0.5])
    kernel = model.get_layer("plain").kernel
    kernel.assign(np.ones(kernel.shape, "float32") * np.array([3.0, 1.0, 2.0, 0.5], "float32"))
    channel_graph = analyse(model)
    assert np.argsort(channel_scores(channel_graph, index_of(channel_graph, "normed"), "bn")).tolist() == [0, 3, 2, 1]
    # No BatchNorm in the group: "bn" falls back to the kernel norms.
    plain = index_of(channel_graph, "plain")
    assert np.argsort(channel_scores(channel_graph, plain, "bn")).tolist() == [3, 1, 2, 0]
    np.testing.assert_allclose(channel_scores(channel_graph, plain, "l2"), channel_scores(channel_graph, plain, "bn"))


def test_an_unknown_score_is_refused():
    channel_graph = analyse(model_with_and_without_batchnorm())
    with pytest.raises(ValueError, match=r"Argument `score` must be one of 'l2', 'bn', 'gamma'\. Received: score='taylor'"):
        channel_scores(channel_graph, 1, "taylor")


def test_masks_of_a_concatenated_group_sit_at_its_offset():
    channel_graph = analyse(model_with_and_without_batchnorm())
    gone = np.array([False, True, False, True])
    masks = {variable.name: mask for variable, mask in channel_masks(channel_graph, {index_of(channel_graph, "plain"): gone})}
    (kernel_mask,) = [mask for name, mask in masks.items() if "plain" in name and "kernel" in name]
    assert kernel_mask.shape == (1, 1, 3, 4) and kernel_mask[0, 0, 0].tolist() == [1, 0, 1, 0]


def test_zero_channels_by_name_or_index():
    model = model_with_and_without_batchnorm()
    channel_graph = analyse(model)
    zero_channels(channel_graph, {"normed": [1], index_of(channel_graph, "plain"): np.array([True, False, False, False])})
    assert np.all(model.get_layer("normed").kernel.numpy()[..., 1] == 0)
    assert model.get_layer("bn").gamma.numpy()[1] == 0 and model.get_layer("bn").beta.numpy()[1] == 0
    assert np.all(model.get_layer("plain").kernel.numpy()[..., 0] == 0)
    assert np.count_nonzero(model.get_layer("plain").kernel.numpy()) == 9
    with pytest.raises(KeyError, match="no_such_group"):
        zero_channels(channel_graph, {"no_such_group": [0]})
