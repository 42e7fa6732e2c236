"""Contract and behaviour tests of the pruning callbacks and schedules."""

import copy
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

from edgekeras import keras, models, schedules, sparsity
from edgekeras.callbacks import MagnitudePruning, PreserveSparsity

BATCH = 8
SAMPLES = 64
STEPS_PER_EPOCH = SAMPLES // BATCH

SCHEDULES = {
    "constant": lambda: schedules.ConstantSparsity(0.6, begin_step=0, frequency=4),
    "polynomial": lambda: schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=2),
    "m_by_n": lambda: schedules.MbyNSparsity((2, 4), begin_step=0, frequency=4),
    "tfmot_constant": lambda: tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=4),
    "tfmot_polynomial": lambda: tfmot.sparsity.keras.PolynomialDecay(0.1, 0.5, begin_step=2, end_step=10, frequency=2),
}
TARGETS = {"constant": 0.6, "polynomial": 0.75, "tfmot_constant": 0.5, "tfmot_polynomial": 0.5}


def conv_net(name="tiny"):
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((SAMPLES, 8, 8, 4), dtype=np.float32), rng.integers(0, 3, SAMPLES)


def compile_model(model, optimizer=None):
    model.compile(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit(model, callbacks, epochs=2, **kwargs):
    x, y = data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs)


def assert_sparsity(values, target):
    """Per-layer sparsity on target: +-0.5 pp, or one weight in layers under 100 weights."""
    values = np.asarray(values)
    assert abs(sparsity.weight_sparsity(values) - target) <= max(0.005, 0.5 / values.size + 1e-9)


def kernel(model, name):
    return dict((layer.name, weight) for layer, weight in sparsity.prunable_weights(model))[name].numpy()


# --- contract tests over every schedule ------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_config_round_trip(name):
    schedule = SCHEDULES[name]()
    config = schedules.serialize(schedule)
    rebuilt = schedules.deserialize(config)
    assert rebuilt.get_config() == config
    for step in (0, 3, 8, 20):
        expected = schedule(tf.constant(step, tf.int64))
        got = rebuilt(tf.constant(step, tf.int64))
        assert bool(got[0]) == bool(expected[0])
        assert float(got[1]) == pytest.approx(float(expected[1]))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_callback_config_round_trip(name):
    callback = MagnitudePruning(SCHEDULES[name](), policy="skip_first_last", include_frozen=True)
    rebuilt = MagnitudePruning.from_config(callback.get_config())
    assert rebuilt.get_config() == callback.get_config()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_callback_survives_deepcopy_before_and_after_fit(name):
    callback = MagnitudePruning(SCHEDULES[name]())
    clone = copy.deepcopy(callback)
    assert clone.get_config() == callback.get_config()
    model = compile_model(conv_net())
    fit(model, [callback], epochs=1)
    clone_after = copy.deepcopy(callback)
    assert clone_after.model is None
    assert clone_after.get_config() == callback.get_config()
    # The copy is usable on its own model.
    fit(compile_model(conv_net("other")), [clone_after], epochs=1)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_pruning_reaches_schedule_sparsity_per_layer(name):
    model = compile_model(conv_net())
    history = fit(model, [MagnitudePruning(SCHEDULES[name]())])
    if name == "m_by_n":
        for layer, weight in sparsity.prunable_weights(model):
            values = weight.numpy()
            if values.shape[-2 if values.ndim == 4 else 0] % 4 == 0:
                # Blocks run along input channels of the TFLite layout.
                assert pruning_utils.is_pruned_m_by_n(tf.constant(values), (2, 4)), layer.name
                assert sparsity.weight_sparsity(values) == pytest.approx(0.5, abs=0.005)
    else:
        for _, weight in sparsity.prunable_weights(model):
            assert_sparsity(weight.numpy(), TARGETS[name])
    assert history.history["target_sparsity"][-1] == pytest.approx(
        0.5 if name == "m_by_n" else TARGETS[name]
    )


def test_preserve_sparsity_survives_deepcopy_and_config():
    callback = PreserveSparsity(policy="pointwise")
    assert copy.deepcopy(callback).get_config() == {"policy": "pointwise", "include_frozen": False}
    assert PreserveSparsity.from_config(callback.get_config()).get_config() == callback.get_config()
    fit(compile_model(conv_net()), [callback], epochs=1)
    clone = copy.deepcopy(callback)
    assert clone.model is None and clone.get_config() == callback.get_config()


# --- argument validation: one error branch per case ------------------------

BAD_ARGUMENTS = [
    (lambda: schedules.ConstantSparsity(1.2), r"Argument `target_sparsity` must be in \[0, 1\)\. Received: target_sparsity=1\.2"),
    (lambda: schedules.ConstantSparsity(0.5, frequency=0),
     r"Argument `frequency` must be a positive integer\. Received: frequency=0"),
    (lambda: schedules.ConstantSparsity(0.5, begin_step=-1),
     r"Argument `begin_step` must be an integer >= 0\. Received: begin_step=-1"),
    (lambda: schedules.ConstantSparsity(0.5, begin_step=10, end_step=5),
     r"Argument `end_step` must be -1 \(never stop\) or an integer >= begin_step \(10\)\. Received: end_step=5"),
    (lambda: schedules.PolynomialDecay(-0.1, 0.5, 0, 10),
     r"Argument `initial_sparsity` must be in \[0, 1\)\. Received: initial_sparsity=-0\.1"),
    (lambda: schedules.PolynomialDecay(0.0, 1.0, 0, 10),
     r"Argument `final_sparsity` must be in \[0, 1\)\. Received: final_sparsity=1\.0"),
    (lambda: schedules.PolynomialDecay(0.0, 0.5, 0, -1),
     r"Argument `end_step` must be an integer >= begin_step \(0\)\. Received: end_step=-1"),
    (lambda: schedules.PolynomialDecay(0.0, 0.5, 5, 5), r"Argument `end_step` must be greater than begin_step \(5\)"),
    (lambda: schedules.PolynomialDecay(0.0, 0.5, 0, 10, power=0),
     r"Argument `power` must be a positive number\. Received: power=0"),
    (lambda: schedules.PolynomialDecay(0.0, 0.5, 0, 10, frequency=2.5),
     r"Argument `frequency` must be a positive integer\. Received: frequency=2\.5"),
    (lambda: schedules.MbyNSparsity((4, 2)),
     r"Argument `m_by_n` must be a pair of integers \(m, n\) with 0 < m < n.*Received: m_by_n=\(4, 2\)"),
    (lambda: schedules.MbyNSparsity((2, 4), frequency=-3),
     r"Argument `frequency` must be a positive integer\. Received: frequency=-3"),
    (lambda: schedules.deserialize({"class_name": "Nope", "config": {}}), r"Unknown pruning schedule 'Nope'"),
    (lambda: schedules.deserialize("ConstantSparsity"), r"Argument `config` must be a dictionary"),
    (lambda: MagnitudePruning(schedules.ConstantSparsity(0.5), policy="bogus"),
     r"Argument `policy` must be one of 'all', 'skip_first_last', 'pointwise' or a callable.*Received: policy='bogus'"),
    (lambda: MagnitudePruning(schedules.ConstantSparsity(0.5), include_frozen="yes"),
     r"Argument `include_frozen` must be True or False\. Received: include_frozen='yes'"),
    (lambda: PreserveSparsity(policy=3), r"Argument `policy` must be one of .*Received: policy=3"),
]


@pytest.mark.parametrize("make, message", BAD_ARGUMENTS)
def test_bad_argument_raises_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedule_must_be_a_schedule():
    with pytest.raises(TypeError, match=r"Argument `schedule` must be a pruning schedule.*Received: schedule=0\.5"):
        MagnitudePruning(0.5)


def test_policy_selecting_nothing_is_reported_at_fit():
    model = compile_model(conv_net())
    callback = MagnitudePruning(schedules.ConstantSparsity(0.5), policy=lambda layer: False)
    with pytest.raises(ValueError, match=r"Argument `policy` selects no prunable layer"):
        fit(model, [callback], epochs=1)


def test_frozen_only_model_names_include_frozen_in_error():
    model = conv_net()
    model.trainable = False
    compile_model(model)
    with pytest.raises(ValueError, match=r"include_frozen=True"):
        fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5))], epochs=1)


# --- models the TFMOT wrappers refuse ---------------------------------------


def test_nested_model_prunes():
    base = keras.Sequential(
        [keras.layers.Conv2D(8, 3, activation="relu", input_shape=(8, 8, 4), name="inner_conv"),
         keras.layers.Conv2D(8, 1, name="inner_pointwise")],
        name="base",
    )
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    model = compile_model(keras.Model(inputs, keras.layers.Dense(3, name="head")(x)))
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))])
    pairs = sparsity.prunable_weights(model)
    assert [layer.name for layer, _ in pairs] == ["inner_conv", "inner_pointwise", "head"]
    for _, weight in pairs:
        assert_sparsity(weight.numpy(), 0.5)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(8, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3)

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


def test_subclassed_model_prunes():
    model = compile_model(Subclassed())
    model.build((None, 8, 8, 4))
    fit(model, [MagnitudePruning(schedules.PolynomialDecay(0.0, 0.8, 0, 8, frequency=2))])
    pairs = sparsity.prunable_weights(model)
    assert len(pairs) == 2
    for _, weight in pairs:
        assert_sparsity(weight.numpy(), 0.8)


# --- policies and frozen layers ----------------------------------------------


def _pruned_names(model, policy, include_frozen=False):
    compile_model(model)
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4), policy, include_frozen)], epochs=1)
    return {name for name, value in sparsity.layer_sparsities(model).items() if value > 0.4}


def test_policy_skip_first_last():
    assert _pruned_names(conv_net(), "skip_first_last") == {"depthwise", "pointwise", "hidden"}


def test_policy_pointwise_only_1x1_convolutions():
    assert _pruned_names(conv_net(), "pointwise") == {"pointwise"}


def test_policy_callable_predicate():
    names = _pruned_names(conv_net(), lambda layer: isinstance(layer, keras.layers.Dense))
    assert names == {"hidden", "logits"}


def test_frozen_layers_are_left_unchanged_unless_included():
    model = conv_net()
    model.get_layer("stem").trainable = False
    before = model.get_layer("stem").kernel.numpy().copy()
    assert "stem" not in _pruned_names(model, "all")
    np.testing.assert_array_equal(model.get_layer("stem").kernel.numpy(), before)
    assert "stem" in _pruned_names(model, "all", include_frozen=True)


# --- optimizer state, resume, logs, saving -----------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.SGD(0.05, momentum=0.9), lambda: keras.optimizers.Adam(0.01),
     lambda: keras.optimizers.legacy.Adam(0.01)],
    ids=["sgd_momentum", "adam", "legacy_adam"],
)
def test_momentum_cannot_revive_pruned_weights(make_optimizer):
    model = compile_model(conv_net(), make_optimizer())
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))])
    pruned = {name: kernel(model, name) == 0 for name in ("stem", "pointwise", "logits")}
    # One more optimizer step with zero gradients moves weights only through
    # the optimizer's state (momentum, Adam's m): pruned ones must stay zero.
    variables = model.trainable_variables
    model.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for name, mask in pruned.items():
        assert np.all(kernel(model, name)[mask] == 0), name


def test_second_fit_resumes_schedule_from_optimizer_iterations():
    model = compile_model(conv_net())
    schedule = schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4 * STEPS_PER_EPOCH, frequency=2)
    first = fit(model, [MagnitudePruning(schedule)], epochs=2)
    second = fit(model, [MagnitudePruning(schedule)], epochs=2)
    assert first.history["target_sparsity"][-1] < 0.8
    assert second.history["target_sparsity"][-1] == pytest.approx(0.8)
    assert sparsity.overall_sparsity(model) == pytest.approx(0.8, abs=0.005)


def test_resumed_fit_applies_current_masks_at_once():
    model = compile_model(conv_net())
    fit(model, [], epochs=1)  # optimizer.iterations > end_step below
    callback = MagnitudePruning(schedules.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=4, frequency=2))
    fit(model, [callback], epochs=1, steps_per_epoch=1)
    assert sparsity.overall_sparsity(model) == pytest.approx(0.7, abs=0.005)


def test_metrics_reach_history_and_tensorboard(tmp_path):
    model = compile_model(conv_net())
    callbacks = [
        MagnitudePruning(schedules.PolynomialDecay(0.0, 0.5, 0, 8, frequency=2)),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
    ]
    history = fit(model, callbacks)
    logs = history.history
    for key in ("sparsity", "target_sparsity", "learning_rate", "sparsity/stem", "sparsity/logits"):
        assert len(logs[key]) == 2 and all(isinstance(v, float) and math.isfinite(v) for v in logs[key]), key
    assert logs["learning_rate"][-1] == pytest.approx(0.05)
    assert logs["sparsity"][-1] == pytest.approx(0.5, abs=0.005)
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("filename", ["pruned.keras", "pruned.h5", "pruned_savedmodel"])
def test_pruned_model_saves_and_loads_without_strip(tmp_path, filename):
    model = compile_model(conv_net())
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))], epochs=1)
    path = models.save_model(model, tmp_path / filename)
    loaded = keras.models.load_model(path)  # plain Keras: no custom objects needed
    assert {type(layer).__name__ for layer in loaded.layers} == {type(layer).__name__ for layer in model.layers}
    assert sparsity.layer_sparsities(loaded) == sparsity.layer_sparsities(model)
    x, _ = data()
    np.testing.assert_allclose(loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-5)


def test_preserve_sparsity_keeps_zeros_that_plain_fine_tuning_revives():
    # Seeded: an unlucky random init can leave every ReLU of this tiny net dead
    # after pruning, and then plain fine-tuning revives nothing.
    keras.utils.set_random_seed(0)
    model = compile_model(conv_net())
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))], epochs=1)
    revived = keras.models.clone_model(model)
    revived.set_weights(model.get_weights())
    compile_model(revived)
    fit(revived, [], epochs=1)
    assert sparsity.overall_sparsity(revived) < 0.25  # most zeros come back
    history = fit(model, [PreserveSparsity()], epochs=1)
    assert sparsity.overall_sparsity(model) == pytest.approx(0.5, abs=0.005)
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.005)
