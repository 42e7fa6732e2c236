"""The pruning callbacks in a Keras 3 `model.fit`: TensorFlow backend in-process, JAX in a subprocess."""

import copy
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from edgekeras import backend, schedules, sparsity
from edgekeras.callbacks import MagnitudePruning, PreserveSparsity

BATCH = 8
SAMPLES = 64
STEPS_PER_EPOCH = SAMPLES // BATCH
ROOT = pathlib.Path(__file__).resolve().parents[2]
JAX_SCRIPT = ROOT / "tests" / "backend" / "jax_pruning_script.py"

SCHEDULES = {
    "constant": lambda: schedules.ConstantSparsity(0.6, begin_step=0, frequency=4),
    "polynomial": lambda: schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=2),
    "m_by_n": lambda: schedules.MbyNSparsity((2, 4), begin_step=0, frequency=4),
}
TARGETS = {"constant": 0.6, "polynomial": 0.75, "m_by_n": 0.5}
LAYERS = ("stem", "depthwise", "pointwise", "hidden", "logits")


def conv_net(name="tiny"):
    keras.utils.set_random_seed(0)  # the same weights every run: a test's figures do not move with the draw
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)


def compiled(model=None, optimizer=None):
    model = model or conv_net()
    model.compile(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit(model, callbacks, epochs=2, **kwargs):
    rng = np.random.default_rng(0)
    x, y = rng.random((SAMPLES, 8, 8, 4), dtype=np.float32), rng.integers(0, 3, SAMPLES)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs)


def kernels(model):
    return {layer.name: np.asarray(weight) for layer, weight in sparsity.prunable_weights(model)}


def assert_sparsity(values, target):
    """On target: +-0.5 pp, or one weight in layers under 100 weights."""
    assert abs(sparsity.weight_sparsity(values) - target) <= max(0.005, 0.5 / values.size + 1e-9)


class SparsityProbe(keras.callbacks.Callback):
    """Records every kernel's sparsity after every batch (placed after the pruning callback)."""

    def __init__(self):
        super().__init__()
        self.after_batch = []

    def on_train_batch_end(self, batch, logs=None):
        self.after_batch.append({name: sparsity.weight_sparsity(v) for name, v in kernels(self.model).items()})


def test_the_model_runs_on_keras3_with_tensorflow():
    assert keras.backend.backend() == "tensorflow"
    assert backend.for_model(conv_net()) is backend.keras3


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_pruning_reaches_schedule_sparsity_per_layer(name):
    model = compiled()
    history = fit(model, [MagnitudePruning(SCHEDULES[name]())])
    found = kernels(model)
    assert sorted(found) == sorted(LAYERS)
    for layer, values in found.items():
        if name == "m_by_n":
            np.testing.assert_array_equal(values != 0, sparsity.m_by_n_mask_array(values) != 0, err_msg=layer)
        else:
            assert_sparsity(values, TARGETS[name])
    for key in ("sparsity", "learning_rate", "target_sparsity", *(f"sparsity/{layer}" for layer in LAYERS)):
        assert len(history.history[key]) == 2, key
    assert history.history["learning_rate"][-1] == pytest.approx(0.05)
    assert history.history["sparsity"][-1] == pytest.approx(TARGETS[name], abs=0.01)


def test_masks_hold_after_every_batch():
    probe = SparsityProbe()
    model = compiled()
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, begin_step=0, frequency=1000)), probe])
    assert len(probe.after_batch) == 2 * STEPS_PER_EPOCH
    for step in probe.after_batch:
        for layer, value in step.items():
            assert value >= 0.5 - 0.5 / 72, (layer, value)


def test_masks_reach_the_next_training_step():
    # With a zero learning rate a step changes no weight: the probe, before
    # the pruning callback, sees after step k what the callback wrote after
    # step k - 1.
    probe = SparsityProbe()
    model = compiled(optimizer=keras.optimizers.SGD(0.0))
    fit(model, [probe, MagnitudePruning(schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=2))])
    lowest = [min(step.values()) for step in probe.after_batch]
    assert lowest[0] == 0.0 and lowest[-1] > 0.6, lowest


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: keras.optimizers.SGD(0.05, momentum=0.9), lambda: keras.optimizers.Adam(0.01)],
    ids=["sgd_momentum", "adam"],
)
def test_slots_are_zeroed_and_cannot_revive_pruned_weights(make_optimizer):
    model = compiled(optimizer=make_optimizer())
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))])
    optimizer = model.optimizer
    for layer, weight in sparsity.prunable_weights(model):
        slots = backend.keras3.slot_variables(optimizer, weight)
        assert len(slots) == (1 if isinstance(optimizer, keras.optimizers.SGD) else 2), layer.name
        pruned = np.asarray(weight) == 0
        for slot in slots:
            assert np.all(np.asarray(slot)[pruned] == 0), (layer.name, slot.name)
    before = {name: values == 0 for name, values in kernels(model).items()}
    # A step with zero gradients moves weights only through the optimizer's state.
    optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    for name, values in kernels(model).items():
        assert np.all(values[before[name]] == 0), name


def test_preserve_sparsity_keeps_the_zeros_through_further_training():
    model = compiled()
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.6, frequency=4))], epochs=1)
    zeros = {name: values == 0 for name, values in kernels(model).items()}
    history = fit(model, [PreserveSparsity()], epochs=2)
    for name, values in kernels(model).items():
        assert np.all(values[zeros[name]] == 0), name
    assert history.history["sparsity"][-1] == pytest.approx(0.6, abs=0.01)
    # Without the callback, training revives them: the check above can fail.
    fit(model, [], epochs=2)
    assert sparsity.overall_sparsity(model) < 0.3


def test_callbacks_survive_deepcopy_before_and_after_fit():
    callback = MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4), policy="skip_first_last")
    fit(compiled(), [copy.deepcopy(callback)])
    fit(compiled(), [callback])
    clone = copy.deepcopy(callback)
    assert clone.model is None and clone.get_config() == callback.get_config()
    model = compiled()
    fit(model, [clone])
    found = kernels(model)
    assert sparsity.weight_sparsity(found["stem"]) == 0 and sparsity.weight_sparsity(found["logits"]) == 0
    assert_sparsity(found["pointwise"], 0.5)
    held = copy.deepcopy(PreserveSparsity())
    fit(model, [held], epochs=1)
    assert_sparsity(kernels(model)["pointwise"], 0.5)


def test_second_fit_resumes_the_schedule_from_optimizer_iterations():
    model = compiled()
    schedule = schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4 * STEPS_PER_EPOCH, frequency=2)
    first = fit(model, [MagnitudePruning(schedule)], epochs=2)
    second = fit(model, [MagnitudePruning(schedule)], epochs=2)
    assert first.history["target_sparsity"][-1] < 0.8
    assert second.history["target_sparsity"][-1] == pytest.approx(0.8)
    assert sparsity.overall_sparsity(model) == pytest.approx(0.8, abs=0.005)


def test_global_allocation_reaches_the_overall_sparsity():
    model = compiled()
    fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.7, frequency=4), allocation="global", max_layer_sparsity=0.9)])
    found = kernels(model)
    total = sum(v.size for v in found.values())
    zeros = sum(int(np.sum(v == 0)) for v in found.values())
    assert zeros == round(0.7 * total)
    assert max(sparsity.weight_sparsity(v) for v in found.values()) <= 0.9


def test_nested_and_subclassed_models_prune():
    inner = conv_net("backbone")
    inputs = keras.Input((8, 8, 4))
    nested = keras.Model(inputs, keras.layers.Dense(3, name="head")(inner(inputs)))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(6, name="first")
            self.second = keras.layers.Dense(3, name="second")

        def call(self, x):
            return self.second(self.first(keras.ops.reshape(x, (-1, 256))))

    subclassed = Subclassed()
    subclassed(np.zeros((1, 8, 8, 4), np.float32))
    for model, names in ((nested, [*LAYERS, "head"]), (subclassed, ["first", "second"])):
        compiled(model)
        fit(model, [MagnitudePruning(schedules.ConstantSparsity(0.5, frequency=4))], epochs=1)
        found = kernels(model)
        assert list(found) == names
        for values in found.values():
            assert_sparsity(values, 0.5)


def _run_jax(mode):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, str(JAX_SCRIPT), mode], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_pruning_under_jax_quick():
    out = _run_jax("quick")
    assert "backend=jax" in out and "quick ok" in out


@pytest.mark.slow
def test_pruning_under_jax_full():
    out = _run_jax("full")
    assert "backend=jax" in out and "full ok" in out
