"""The seam: one interface, the model's own Keras picks the implementation (tf_keras and Keras 3 in one process)."""

import math

import keras as keras3
import numpy as np
import pytest
import tf_keras

from edgekeras import backend, sparsity
from edgekeras.compat import is_keras3_object

KERASES = {"tf_keras": tf_keras, "keras3": keras3}


class UserModel(keras3.Model):
    """A Keras 3 model subclassed outside Keras: its own module is this test's."""

    def __init__(self):
        super().__init__()
        self.dense = keras3.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def nested_net(keras):
    inner_in = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inner_in)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.Conv2D(6, 1, name="pointwise")(x)
    inner = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="inner")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dense(5, name="hidden")(inner(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x), name="outer")


OBJECTS = {
    "keras3_model": (lambda: keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)]), "keras3"),
    "keras3_layer": (lambda: keras3.layers.Dense(2), "keras3"),
    "keras3_optimizer": (lambda: keras3.optimizers.Adam(), "keras3"),
    "keras3_variable": (lambda: keras3.Variable(np.zeros(2, np.float32)), "keras3"),
    "keras3_user_subclass": (UserModel, "keras3"),
    "tf_keras_model": (lambda: tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]), "tf_keras"),
    "tf_keras_layer": (lambda: tf_keras.layers.Dense(2), "tf_keras"),
    "tf_keras_optimizer": (lambda: tf_keras.optimizers.Adam(), "tf_keras"),
    "not_keras": (lambda: "x", "tf_keras"),
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_for_model_picks_the_objects_own_keras(name):
    make, expected = OBJECTS[name]
    obj = make()
    chosen = backend.for_model(obj)
    assert chosen.name == expected
    assert backend.is_keras3(obj) == (expected == "keras3") == is_keras3_object(obj)
    assert chosen.keras is KERASES[expected]


@pytest.mark.parametrize("name", ["keras3_model", "keras3_user_subclass", "tf_keras_model"])
def test_check_model_accepts_both_kerases(name):
    model = OBJECTS[name][0]()
    assert backend.check_model(model) is model


@pytest.mark.parametrize("name", ["keras3_layer", "tf_keras_layer", "not_keras"])
def test_check_model_refuses_what_is_not_a_model(name):
    with pytest.raises(TypeError, match=r"Argument `net` must be a Keras model \(tf_keras or Keras 3 .*Received: net="):
        backend.check_model(OBJECTS[name][0](), argument="net")


@pytest.mark.parametrize("which", sorted(KERASES))
def test_layers_follow_the_model_through_nested_models(which):
    model = nested_net(KERASES[which])
    names = [layer.name for layer in backend.for_model(model).layers(model)]
    expected = ["stem", "depthwise", "pointwise", "pool", "hidden", "logits"]
    assert [n for n in names if n in expected] == expected
    assert "inner" in names and names.index("inner") < names.index("stem")
    assert len(names) == len(set(names))


@pytest.mark.parametrize("which", sorted(KERASES))
@pytest.mark.parametrize(
    "policy, expected",
    [
        ("all", ["stem", "depthwise", "pointwise", "hidden", "logits"]),
        ("skip_first_last", ["depthwise", "pointwise", "hidden"]),
        ("pointwise", ["pointwise"]),
    ],
)
def test_policies_select_the_same_layers_on_both_kerases(which, policy, expected):
    model = nested_net(KERASES[which])
    pairs = sparsity.select_weights(model, policy)
    assert [layer.name for layer, _ in pairs] == expected
    for layer, weight in pairs:
        assert sparsity.prunable_weight(layer) is weight
        assert tuple(weight.shape) == tuple(layer.get_weights()[0].shape)


def test_keras3_leaves_out_transposed_convolutions_and_unbuilt_layers():
    assert backend.keras3.prunable_weight(keras3.layers.Dense(2)) is None
    layer = keras3.layers.Conv2DTranspose(2, 3)
    layer.build((None, 4, 4, 3))
    assert backend.keras3.prunable_weight(layer) is None


# Slots per weight; tf_keras' SGD keeps a momentum slot even at momentum=0.
OPTIMIZERS = {
    "sgd": (lambda k: k.optimizers.SGD(0.1), {"tf_keras": 1, "keras3": 0}),
    "sgd_momentum": (lambda k: k.optimizers.SGD(0.1, momentum=0.9), {"tf_keras": 1, "keras3": 1}),
    "adam": (lambda k: k.optimizers.Adam(0.01), {"tf_keras": 2, "keras3": 2}),
}


@pytest.mark.parametrize("which", sorted(KERASES))
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_slot_variables_after_building_the_optimizer(which, kind):
    keras = KERASES[which]
    make, counts = OPTIMIZERS[kind]
    count = counts[which]
    model = nested_net(keras)
    optimizer = make(keras)
    chosen = backend.for_model(model)
    assert chosen.build_optimizer(optimizer, model.trainable_variables)
    for layer, weight in chosen.prunable_weights(model):
        slots = chosen.slot_variables(optimizer, weight)
        assert len(slots) == count, layer.name
        assert all(tuple(slot.shape) == tuple(weight.shape) for slot in slots)
        assert all(slot is not weight for slot in slots)


def test_tf_keras_legacy_optimizer_slots():
    model = nested_net(tf_keras)
    optimizer = tf_keras.optimizers.legacy.Adam(0.01)
    assert backend.tf_keras.build_optimizer(optimizer, model.trainable_variables)
    weight = backend.tf_keras.prunable_weights(model)[0][1]
    assert len(backend.tf_keras.slot_variables(optimizer, weight)) == 2


# At step 2 of a 0.5 * 0.5**step decay: Keras 3 computes it; tf_keras reports
# the rate of the last step it applied (none yet).
@pytest.mark.parametrize("which, at_step_2", [("tf_keras", 0.5), ("keras3", 0.125)])
def test_learning_rate_reads_constants_and_schedules(which, at_step_2):
    keras = KERASES[which]
    chosen = backend.for_model(keras.optimizers.SGD(0.1))
    assert chosen.learning_rate(keras.optimizers.SGD(0.25)) == pytest.approx(0.25)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    optimizer = keras.optimizers.SGD(schedule)
    assert chosen.learning_rate(optimizer) == pytest.approx(0.5)
    optimizer.iterations.assign(2)
    assert chosen.learning_rate(optimizer) == pytest.approx(at_step_2)
    assert chosen.step(optimizer) == 2
    assert math.isnan(chosen.learning_rate(object()))


class Recorder(backend.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((epoch, self.model.name, sorted(logs)))


@pytest.mark.parametrize("which", sorted(KERASES))
def test_the_callback_base_is_accepted_by_both_fits(which):
    keras = KERASES[which]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="net")
    model.compile("sgd", "mse")
    recorder = Recorder()
    model.fit(np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32), epochs=2, verbose=0, callbacks=[recorder])
    assert recorder.seen == [(0, "net", ["loss"]), (1, "net", ["loss"])]
    assert recorder.model is model


@pytest.mark.parametrize("make, count", [(lambda: keras3.optimizers.Adam(), 2), (lambda: keras3.optimizers.Adam(use_ema=True), 3)])
def test_keras3_slots_of_weights_sharing_a_path_are_told_apart(make, count):
    def block(name):
        inputs = keras3.Input((4,))
        return keras3.Model(inputs, keras3.layers.Dense(3, name="stem")(inputs), name=name)

    inputs = keras3.Input((4,))
    model = keras3.Model(inputs, keras3.layers.Add()([block("a")(inputs), block("b")(inputs)]))
    optimizer = make()
    backend.keras3.build_optimizer(optimizer, model.trainable_variables)
    (_, first), (_, second) = backend.keras3.prunable_weights(model)
    assert first.path == second.path
    slots = [backend.keras3.slot_variables(optimizer, weight) for weight in (first, second)]
    assert [len(s) for s in slots] == [count, count]
    assert not {id(v) for v in slots[0]} & {id(v) for v in slots[1]}


def test_keras3_slots_sharing_a_path_without_an_optimizer_index_raise():
    layer = keras3.layers.Dense(3, name="stem")
    layer.build((None, 4))

    class Optimizer:
        variables = [keras3.Variable(np.zeros((4, 3), np.float32), name="stem_kernel_momentum") for _ in range(2)]

    with pytest.raises(ValueError, match=r"Cannot tell the optimizer slots of weight 'stem/kernel' apart .*unique names"):
        backend.keras3.slot_variables(Optimizer(), layer.kernel)
