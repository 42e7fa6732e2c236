"""Removed channels' means folded into their consumers, and the activation score measured on data."""

import numpy as np
import pytest

from edgekeras import keras, schedules
from edgekeras.callbacks import ChannelPruning
from edgekeras.channels import analyse, shrink, zero_channels
from edgekeras.channels.activations import activation_scores, channel_statistics
from edgekeras.channels.compensation import absorb_removed, expected_values


def net(consumer_bias=True):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU(6.0, name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(x))
    x = keras.layers.Conv2D(4, 1, use_bias=consumer_bias, name="consumer")(x)
    if not consumer_bias:
        x = keras.layers.BatchNormalization(name="consumer_bn")(x)
    outputs = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("stem_bn")
    gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
    gamma[[1, 5]], beta[[1, 5]] = 0.0, [2.0, 9.0]  # channel 1 constant 2, channel 5 constant 6 (ReLU6)
    bn.gamma.assign(gamma), bn.beta.assign(beta)
    return model


def images(n=16, seed=0):
    return np.random.default_rng(seed).random((n, 6, 6, 3), dtype=np.float32)


@pytest.mark.parametrize("consumer_bias", [True, False])
def test_constant_channels_removed_with_their_means_absorbed_change_nothing(consumer_bias):
    model = net(consumer_bias)
    x = images()
    before = np.asarray(model(x))
    graph = analyse(model)
    index = next(i for i, g in enumerate(graph.groups) if g.name == "stem")
    values = expected_values(graph, index, _consumer_key(graph))
    np.testing.assert_allclose(values[[1, 5]], [2.0, 6.0], atol=1e-4)
    gone = np.zeros(8, bool)
    gone[[1, 5]] = True
    assert absorb_removed(graph, {index: gone}) == 1
    zero_channels(graph, {index: [1, 5]})
    np.testing.assert_allclose(np.asarray(model(x)), before, atol=1e-4)
    np.testing.assert_allclose(np.asarray(shrink(model, round_to=1)(x)), before, atol=1e-4)


def _consumer_key(graph):
    return next(node.inputs[0] for node in graph.graph.nodes if node.layer.name == "consumer")


def test_without_compensation_the_removal_changes_the_outputs():
    model = net()
    x = images()
    before = np.asarray(model(x))
    graph = analyse(model)
    zero_channels(graph, {"stem": [1, 5]})
    assert np.abs(np.asarray(model(x)) - before).max() > 1e-2


def test_activation_score_ranks_by_variation_times_the_consumers_weights():
    model = net()
    consumer = model.get_layer("consumer")
    kernel = consumer.kernel.numpy()
    kernel[:, :, 3, :] = 0.0  # channel 3 varies but nothing reads it
    consumer.kernel.assign(kernel)
    graph = analyse(model)
    index = next(i for i, g in enumerate(graph.groups) if g.name == "stem")
    stats = channel_statistics(graph, images(32))
    mean, std = stats[_consumer_key(graph)]
    np.testing.assert_allclose(mean[[1, 5]], [2.0, 6.0], atol=1e-5)
    assert std[1] == pytest.approx(0.0, abs=1e-6) and std[0] > 0
    scores = activation_scores(graph, stats, index)
    assert set(np.argsort(scores)[:3]) == {1, 3, 5}


def test_channel_pruning_by_activation_keeps_the_outputs_of_constant_channels():
    model = net()
    model.get_layer("stem_bn").trainable = False  # fit would move its statistics otherwise
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = images(32)
    before = np.asarray(model(x))
    pruning = ChannelPruning(schedules.ConstantSparsity(0.25, begin_step=0, frequency=1), score="activation",
                             round_to=1, calibration=x, widths={"stem": 6})
    model.fit(x, np.zeros((32, 2)), batch_size=8, epochs=1, callbacks=[pruning], verbose=0)
    assert pruning.kept_channels()["stem"] == 6
    np.testing.assert_allclose(np.asarray(model(x)), before, atol=1e-4)  # channels 1 and 5 went, means kept
