"""Prunes a tiny Keras 3 model under the JAX backend; run by tests/callbacks/test_keras3_pruning.py.

`python tests/backend/jax_pruning_script.py quick|full` with KERAS_BACKEND=jax:
exits non-zero on the first failed check, prints "<mode> ok" at the end.
"""

import copy
import sys

import keras
import numpy as np

from edgekeras import backend, schedules, sparsity
from edgekeras.callbacks import MagnitudePruning, PreserveSparsity

BATCH, SAMPLES = 8, 64


def net():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def compiled(optimizer=None):
    model = net()
    model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def fit(model, callbacks, epochs=1):
    rng = np.random.default_rng(0)
    x, y = rng.random((SAMPLES, 6, 6, 3), dtype=np.float32), rng.integers(0, 3, SAMPLES)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=callbacks, verbose=0)


def kernels(model):
    return {layer.name: np.asarray(weight) for layer, weight in sparsity.prunable_weights(model)}


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


class Probe(backend.Callback):
    """The lowest kernel sparsity seen after each batch.

    edgekeras' callback base, so that reading `self.model` syncs the JAX
    state as a Keras 3 callback's does: without it the probe, first in the
    list, would find the variables emptied for the epoch.
    """

    def __init__(self):
        super().__init__()
        self.lowest = []

    def on_train_batch_end(self, batch, logs=None):
        self.lowest.append(min(sparsity.weight_sparsity(v) for v in kernels(self.model).values()))


def exact(values, target):
    return abs(sparsity.weight_sparsity(values) - target) <= max(0.005, 0.5 / values.size + 1e-9)


def masks_reach_the_next_step():
    # With a zero learning rate a step changes no weight, so what the probe
    # (before the pruning callback) sees after step k is what the callback
    # wrote after step k - 1: the rising sparsity only if the trainer took it.
    model = compiled(keras.optimizers.SGD(0.0))
    probe = Probe()
    fit(model, [probe, MagnitudePruning(schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=2))])
    check(probe.lowest[0] == 0.0 and probe.lowest[-1] > 0.6, f"sparsity seen by the next step {probe.lowest}")


def quick():
    masks_reach_the_next_step()
    model = compiled()
    callback = MagnitudePruning(schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=2))
    probe = Probe()
    first = fit(model, [copy.deepcopy(callback), probe])  # steps 1..8 of 12
    check(first.history["target_sparsity"][-1] < 0.75, f"first fit target {first.history}")
    check(all(b >= a - 1e-9 for a, b in zip(probe.lowest, probe.lowest[1:])), f"masks reached each step {probe.lowest}")
    check(probe.lowest[-1] > 0.3, f"masks applied during the epoch {probe.lowest}")
    second = fit(model, [callback])  # resumes at step 8
    check(second.history["target_sparsity"][-1] == 0.75, f"resumed target {second.history}")
    for name, values in kernels(model).items():
        check(exact(values, 0.75), f"{name} sparsity {sparsity.weight_sparsity(values)}")
    for layer, weight in sparsity.prunable_weights(model):
        slots = backend.keras3.slot_variables(model.optimizer, weight)
        check(len(slots) == 1, f"{layer.name} slots {slots}")
        check(np.all(np.asarray(slots[0])[np.asarray(weight) == 0] == 0), f"{layer.name} momentum at pruned weights")
    zeros = {name: values == 0 for name, values in kernels(model).items()}
    held = fit(model, [copy.deepcopy(PreserveSparsity())])
    for name, values in kernels(model).items():
        check(np.all(values[zeros[name]] == 0), f"{name} zeros kept")
    check(abs(held.history["sparsity"][-1] - 0.75) < 0.01, f"logs {held.history}")


def full():
    for make, target in (
        (lambda: MagnitudePruning(schedules.ConstantSparsity(0.6, frequency=4)), 0.6),
        (lambda: MagnitudePruning(schedules.MbyNSparsity((2, 4), frequency=4)), None),
        (lambda: MagnitudePruning(schedules.ConstantSparsity(0.7, frequency=4), allocation="global"), 0.7),
    ):
        model = compiled(keras.optimizers.Adam(0.01))
        fit(model, [make()], epochs=2)
        found = kernels(model)
        if target is None:
            for name, values in found.items():
                check(np.array_equal(values != 0, sparsity.m_by_n_mask_array(values) != 0), f"{name} m-by-n")
        else:
            check(abs(sparsity.overall_sparsity(model) - target) < 0.01, f"overall {sparsity.overall_sparsity(model)}")


if __name__ == "__main__":
    check(keras.backend.backend() == "jax", f"backend {keras.backend.backend()}")
    print("backend=jax")
    quick()
    if sys.argv[1:] == ["full"]:
        full()
    print(f"{sys.argv[1]} ok")
