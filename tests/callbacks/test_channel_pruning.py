"""ChannelPruning: arguments, schedule, held zeros, logs, resume, deepcopy, and shrink after fit."""

import copy
import math

import keras as keras3
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from edgekeras import keras, schedules
from edgekeras.callbacks import ChannelPruning
from edgekeras.channels import analyse, group_weights, shrink

BATCH, SAMPLES = 8, 64
STEPS_PER_EPOCH = SAMPLES // BATCH


def conv_net(library=keras, name="tiny"):
    layers = library.layers
    inputs = library.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization(name="stem_bn")(x))
    h = layers.Conv2D(32, 1, name="expand")(x)
    h = layers.ReLU(6.0)(layers.BatchNormalization(name="expand_bn")(h))
    h = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = layers.BatchNormalization(name="project_bn")(layers.Conv2D(16, 1, name="project")(h))
    x = layers.Add()([x, h])
    outputs = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    return library.Model(inputs, outputs, name=name)


def compile_model(model, library=keras):
    model.compile(library.optimizers.SGD(0.05, momentum=0.9), library.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((SAMPLES, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, SAMPLES)


def fit(model, callbacks, epochs=2):
    return model.fit(*data(), batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0)


def ramp(final=0.5, end_step=8):
    return schedules.PolynomialDecay(0.0, final, begin_step=0, end_step=end_step, frequency=2)


def zero_channels_of(model):
    """{group name: number of channels zero in every weight of the group}."""
    channel_graph = analyse(model)
    places = group_weights(channel_graph)
    found = {}
    for index, group in enumerate(channel_graph.groups):
        if not group.prunable:
            continue
        zero = np.ones(group.size, bool)
        for layer, _, variable, axis, start in places[index]:
            values = np.moveaxis(np.asarray(variable), axis, -1)[..., start : start + group.size]
            zero &= np.all(values.reshape(-1, group.size) == 0, axis=0)
        found[group.name] = int(zero.sum())
    return found


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"schedule": 0.5}, TypeError, r"Argument `schedule` must be a pruning schedule"),
        ({"schedule": schedules.MbyNSparsity((2, 4))}, ValueError, r"Argument `schedule` must give a fraction of channels"),
        (
            {"schedule": ramp(), "score": "taylor"}, ValueError,
            r"Argument `score` must be one of 'l2', 'bn', 'activation'\. Received: score='taylor'",
        ),
        ({"schedule": ramp(), "round_to": 0}, ValueError, r"Argument `round_to` must be a positive integer\. Received: round_to=0"),
        ({"schedule": ramp(), "include_frozen": 1}, ValueError, r"Argument `include_frozen` must be True or False"),
        ({"schedule": ramp(), "widths": {}}, ValueError, r"Argument `widths` must be None or a non-empty dict"),
        ({"schedule": ramp(), "score": "activation"}, ValueError, r"Argument `calibration` must hold model inputs"),
        ({"schedule": ramp(), "calibration": [1.0]}, ValueError, r"Argument `calibration` must be None or a numpy array"),
        ({"schedule": ramp(), "compensate": 1}, ValueError, r"Argument `compensate` must be True or False"),
        ({"schedule": ramp(), "widths": {"expand": 0}}, ValueError, r"Received: widths\['expand'\]=0"),
        ({"schedule": ramp(0.0), "widths": {"expand": 8}}, ValueError, r"must end above sparsity 0 when `widths`"),
    ],
)
def test_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        ChannelPruning(**kwargs)


@pytest.mark.parametrize("score", ["l2", "bn"])
def test_ramps_groups_to_the_schedule_holds_the_zeros_and_shrinks_exactly(score):
    model = compile_model(conv_net())
    pruning = ChannelPruning(ramp(0.5), score=score, round_to=4)
    history = fit(model, [pruning], epochs=2)
    # 50 % of 16 and of 32 channels, on every layer of each group.
    assert zero_channels_of(model) == {"stem": 8, "expand": 16}
    logs = history.history
    assert logs["kept_channels/stem"][-1] == logs["kept_channels/project"][-1] == 8
    assert logs["kept_channels/expand"][-1] == 16
    assert logs["kept_channels"][-1] == pytest.approx(0.5)
    assert logs["target_channel_sparsity"][-1] == pytest.approx(0.5)
    assert "learning_rate" in logs
    slim = shrink(model, round_to=4)
    assert [slim.get_layer(n).output.shape[-1] for n in ("stem", "expand", "project")] == [8, 16, 8]
    x = data(1)[0][:4]
    np.testing.assert_allclose(np.asarray(slim(x)), np.asarray(model(x)), atol=1e-5)


def test_the_ramp_removes_more_channels_as_it_goes_and_rounds_the_kept_counts():
    model = compile_model(conv_net())
    pruning = ChannelPruning(ramp(0.75, end_step=3 * STEPS_PER_EPOCH), round_to=4)
    history = fit(model, [pruning], epochs=3)
    kept = history.history["kept_channels/expand"]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1] == 8
    assert all(count % 4 == 0 for count in kept)


def test_resumed_fit_restores_the_schedule_at_the_current_step():
    model = compile_model(conv_net())
    fit(model, [ChannelPruning(schedules.ConstantSparsity(0.5, begin_step=0, frequency=100), round_to=1)], epochs=1)
    removed = zero_channels_of(model)
    # A new callback (as after a restart) on the trained model and its optimizer.
    pruning = ChannelPruning(schedules.ConstantSparsity(0.5, begin_step=0, frequency=100), round_to=1)
    fit(model, [pruning], epochs=1)
    assert zero_channels_of(model) == removed == {"stem": 8, "expand": 16}


def test_deepcopy_before_and_after_fit_and_config_round_trip():
    pruning = ChannelPruning(ramp(), score="l2", round_to=2)
    fresh = copy.deepcopy(pruning)
    fit(compile_model(conv_net()), [pruning], epochs=1)
    clone = copy.deepcopy(pruning)
    assert clone.model is None and clone._graph is None and clone._weights == []
    assert fresh.get_config() == clone.get_config() == pruning.get_config()
    again = ChannelPruning.from_config(pruning.get_config())
    assert again.get_config() == pruning.get_config() and again.score == "l2" and again.round_to == 2
    fit(compile_model(conv_net()), [clone], epochs=1)  # the copy trains another model from a clean state
    assert zero_channels_of(clone.model)["expand"] > 0


def test_tfmot_schedule_is_accepted():
    model = compile_model(conv_net())
    fit(model, [ChannelPruning(tfmot.sparsity.keras.ConstantSparsity(0.25, begin_step=0, frequency=4), round_to=1)], epochs=1)
    assert zero_channels_of(model) == {"stem": 4, "expand": 8}


def test_frozen_groups_are_left_alone_unless_asked():
    model = conv_net()
    model.get_layer("expand").trainable = False
    compile_model(model)
    fit(model, [ChannelPruning(schedules.ConstantSparsity(0.5, begin_step=0), round_to=1)], epochs=1)
    assert zero_channels_of(model) == {"stem": 8, "expand": 0}


def test_widths_prune_only_the_named_groups_each_to_its_width_through_its_share_of_the_ramp():
    model = compile_model(conv_net())
    # The ramp ends at 0.8 at step 16 (two epochs); halfway through the planned removals, rounded up to 4.
    pruning = ChannelPruning(ramp(0.8, end_step=2 * STEPS_PER_EPOCH), round_to=4, widths={"expand": 8, "stem": 12})
    history = fit(model, [pruning], epochs=3)
    assert zero_channels_of(model) == {"stem": 4, "expand": 24}
    assert history.history["kept_channels/expand"][-1] == 8 and history.history["kept_channels/stem"][-1] == 12
    assert 8 < history.history["kept_channels/expand"][0] < 32
    slim = shrink(model, round_to=4)
    assert [slim.get_layer(n).output.shape[-1] for n in ("stem", "expand")] == [12, 8]


def test_widths_naming_an_unknown_or_unprunable_group_are_refused_when_training_begins():
    with pytest.raises(ValueError, match=r"names no channel group of model 'tiny': \['nowhere'\]"):
        fit(compile_model(conv_net()), [ChannelPruning(ramp(), widths={"nowhere": 4})], epochs=1)
    with pytest.raises(ValueError, match=r"narrows groups that cannot be pruned .*\['logits'\]"):
        fit(compile_model(conv_net()), [ChannelPruning(ramp(), widths={"logits": 1})], epochs=1)


def test_a_frozen_batchnorm_does_not_freeze_its_channels():
    model = conv_net()
    for name in ("stem_bn", "expand_bn", "project_bn"):
        model.get_layer(name).trainable = False
    compile_model(model)
    fit(model, [ChannelPruning(schedules.ConstantSparsity(0.5, begin_step=0), round_to=1)], epochs=1)
    assert zero_channels_of(model) == {"stem": 8, "expand": 16}


def test_a_model_without_prunable_groups_is_refused():
    inputs = keras.Input((4,))
    model = compile_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
    with pytest.raises(ValueError, match="has no prunable channel group"):
        fit(model, [ChannelPruning(ramp())], epochs=1)


def test_an_uncompiled_model_is_refused():
    pruning = ChannelPruning(ramp())
    pruning.set_model(conv_net())
    with pytest.raises(RuntimeError, match="needs a compiled model"):
        pruning.on_train_begin()


def test_keras3_model():
    model = compile_model(conv_net(keras3), keras3)
    history = fit(model, [ChannelPruning(ramp(0.5), round_to=4)], epochs=2)
    assert zero_channels_of(model) == {"stem": 8, "expand": 16}
    assert history.history["kept_channels/expand"][-1] == 16
    x = data(1)[0][:4]
    np.testing.assert_allclose(np.asarray(shrink(model, round_to=4)(x)), np.asarray(model(x)), atol=1e-5)
    assert math.isfinite(history.history["learning_rate"][-1])
