"""Importance scores comparable across groups ("gamma", "taylor") and the allocation that follows them."""

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

from edgekeras import keras
from edgekeras.channels import analyse, channel_importance, find_groups
from edgekeras.channels.allocation import allocate
from edgekeras.channels.latency import LatencyTable, LayerCost


def two_branch_model(library=keras):
    """Branches "a" and "b" (16 channels each, BatchNorm "a_bn"/"b_bn") read the input; their 1x1 outputs are added."""
    L = library.layers
    inputs = library.Input((6, 6, 3))
    branches = []
    for name in ("a", "b"):
        h = L.BatchNormalization(name=f"{name}_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name=name)(inputs))
        branches.append(L.Conv2D(4, 1, name=f"{name}_out")(L.ReLU()(h)))
    outputs = L.Dense(3, activation="softmax", name="logits")(L.GlobalAveragePooling2D()(L.Add()(branches)))
    model = library.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        model.get_layer(f"{name}_bn").beta.assign(rng.uniform(0.1, 0.5, 16).astype("float32"))
    return model


def batches(count=3, size=8):
    rng = np.random.default_rng(2)
    return [(rng.uniform(-1, 1, (size, 6, 6, 3)).astype("float32"), rng.integers(0, 3, size)) for _ in range(count)]


def deaf_branch_model():
    """Branch "a" has 5x the gammas of branch "b", but nothing reads it: "a_out"'s kernel is zero."""
    model = two_branch_model()
    model.get_layer("a_bn").gamma.assign(np.full(16, 5.0, "float32"))
    kernel = model.get_layer("a_out").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    return model


def equal_cost_table():
    """"a" and "b" cost 1 ms per output channel each, measured every 4 channels; "a_out"/"b_out" 1 ms flat."""
    by_out = [(width, float(width)) for width in range(4, 17, 4)]
    layers = {name: LayerCost("conv2d", (3, 16), [(3, 16.0)], by_out) for name in ("a", "b")}
    layers.update({f"{name}_out": LayerCost("conv2d", (16, 4), [(16, 1.0)], [(4, 1.0)]) for name in ("a", "b")})
    return LatencyTable(layers)


def test_gamma_is_the_raw_sum_over_the_group_batchnorms():
    model = two_branch_model()
    gamma = np.linspace(0.5, 4.0, 16).astype("float32")
    model.get_layer("a_bn").gamma.assign(-gamma)
    importance = channel_importance(model, "gamma")
    np.testing.assert_allclose(importance["a"], gamma, rtol=1e-6)
    np.testing.assert_allclose(importance["b"], np.ones(16))
    # "bn" normalizes each layer to mean 1: both branches look alike on average.
    assert channel_importance(model, "bn")["a"].mean() == pytest.approx(channel_importance(model, "bn")["b"].mean())


@pytest.mark.parametrize("library", [keras, keras3], ids=["tf_keras", "keras3"])
def test_taylor_is_the_squared_gate_gradient_product_averaged_over_batches(library):
    model = two_branch_model(library)
    data = batches()
    loss = library.losses.SparseCategoricalCrossentropy()
    importance = channel_importance(model, "taylor", data=data, loss=loss)
    norm = model.get_layer("b_bn")
    expected = np.zeros(16)
    for images, labels in data:
        with tf.GradientTape() as tape:
            value = loss(labels, model(images, training=False))
        d_gamma, d_beta = tape.gradient(value, [norm.gamma, norm.beta])
        gamma, beta = np.asarray(norm.gamma), np.asarray(norm.beta)
        expected += (gamma * np.asarray(d_gamma) + beta * np.asarray(d_beta)) ** 2
    np.testing.assert_allclose(importance["b"], expected / len(data), rtol=1e-4, atol=1e-12)
    assert set(importance) == {group.name for group in find_groups(model) if group.prunable}
    assert np.all(importance["b"] > 0)


def test_taylor_sees_a_branch_nothing_reads_where_gamma_does_not():
    model = deaf_branch_model()
    taylor = channel_importance(model, "taylor", data=batches(), loss="sparse_categorical_crossentropy")
    gamma = channel_importance(model, "gamma")
    assert np.all(taylor["a"] == 0) and np.all(taylor["b"] > 0)
    assert gamma["a"].min() > gamma["b"].max()


@pytest.mark.parametrize("score, narrowed, whole", [("taylor", "a", "b"), ("gamma", "b", "a")])
def test_the_allocation_follows_the_importance_across_groups(score, narrowed, whole):
    model = deaf_branch_model()
    groups = find_groups(model)
    importance = channel_importance(model, score, data=batches(), loss="sparse_categorical_crossentropy")
    widths = allocate(groups, importance, equal_cost_table(), 0.75, round_to=4, min_fraction=0.0)
    assert widths[whole] == 16 and widths[narrowed] < 16


def test_taylor_uses_the_compiled_loss():
    model = two_branch_model()
    model.compile(loss="sparse_categorical_crossentropy")
    compiled = channel_importance(model, "taylor", data=batches())
    given = channel_importance(model, "taylor", data=batches(), loss="sparse_categorical_crossentropy")
    for name in given:
        np.testing.assert_allclose(compiled[name], given[name], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, r"Argument `data` is needed for score='taylor': \(images, labels\) batches\. Received: data=None"),
        ({"data": [], "loss": "mse"}, r"Argument `data` must yield at least one \(images, labels\) batch"),
        ({"data": batches(1)}, r"Argument `loss` is needed for score='taylor' when the model is not compiled"),
        ({"data": batches(1), "loss": 3}, r"Argument `loss` must be a loss name or a callable .* Received: loss=3"),
    ],
)
def test_taylor_refuses_missing_data_or_loss(kwargs, match):
    with pytest.raises(ValueError, match=match):
        channel_importance(two_branch_model(), "taylor", **kwargs)


def test_the_groups_the_scores_cover():
    # "a_out" and "b_out" are one group (the Add couples them): it is scored too.
    assert len(analyse(two_branch_model()).groups) == len(find_groups(two_branch_model()))
    assert set(channel_importance(two_branch_model(), "gamma")) == {"a", "b", "a_out"}
