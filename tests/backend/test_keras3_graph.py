"""Tests for edgekeras.backend.keras3_graph: Keras 3 sub-models inlined, copies with weights."""

import keras
import numpy as np
import pytest

from edgekeras.backend import keras3_graph
from edgekeras.models import clone_with_weights, flatten, is_nested


def base_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="relu")(x), name="base")


def nested_model():
    keras.utils.set_random_seed(0)
    base = base_model()
    head = keras.Sequential(
        [keras.Input((8, 8, 4)), keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(3, name="dense")],
        name="head",
    )
    inputs = keras.Input((8, 8, 3), name="image")
    return keras.Model(inputs, head(base(inputs, training=False)), name="nested")


def images():
    return np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)


def test_flatten_inlines_functional_and_sequential_sub_models_sharing_weights():
    model = nested_model()
    assert keras3_graph.is_nested(model)
    flat = keras3_graph.flatten(model)
    assert [layer.name for layer in flat.layers] == ["image", "conv", "bn", "relu", "pool", "dense"]
    assert not keras3_graph.is_nested(flat) and flat.name == "nested"
    np.testing.assert_array_equal(flat(images()), model(images()))
    assert flat.get_layer("conv") is model.get_layer("base").get_layer("conv")


def test_flatten_of_a_sequential_model_holding_a_functional_one():
    model = keras.Sequential([keras.Input((8, 8, 3)), base_model(), keras.layers.Flatten(), keras.layers.Dense(2)])
    flat = keras3_graph.flatten(model)
    assert [type(layer).__name__ for layer in flat.layers][1:] == ["Conv2D", "BatchNormalization", "ReLU", "Flatten", "Dense"]
    np.testing.assert_allclose(flat(images()), model(images()), atol=1e-6)


def test_a_flat_model_is_returned_as_it_is():
    model = base_model()
    assert keras3_graph.flatten(model) is model


def test_a_subclassed_model_cannot_be_flattened():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"Argument `model` must be a functional or Sequential model .* "
                                         r"Received: model='net' of subclassed type Net"):
        keras3_graph.flatten(Net(name="net"))


def test_flattening_keeps_what_training_means_for_a_sub_model():
    base = base_model()
    base.get_layer("bn").moving_mean.assign(np.full(4, 0.5, np.float32))  # inference and training differ
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Identity()(model(inputs)))  # nested twice
    flat = keras3_graph.flatten(model)
    for training in (False, True):
        np.testing.assert_allclose(flat(images(), training=training), model(images(), training=training), atol=1e-6)
    assert not np.allclose(flat(images(), training=True), flat(images(), training=False), atol=1e-3)


def test_the_models_functions_take_keras3_models():
    model = nested_model()
    assert is_nested(model) and not is_nested(flatten(model))
    assert [layer.name for layer in flatten(model).layers] == [layer.name for layer in keras3_graph.flatten(model).layers]


def test_clone_with_weights_copies_weights_and_trainable_flags_sharing_nothing():
    model = keras3_graph.flatten(nested_model())
    model.get_layer("conv").trainable = False
    copy = clone_with_weights(model)
    np.testing.assert_array_equal(copy(images()), model(images()))
    assert not copy.get_layer("conv").trainable and copy.get_layer("dense").trainable
    copy.get_layer("dense").kernel.assign(np.zeros((4, 3), np.float32))
    assert np.abs(model.get_layer("dense").kernel.numpy()).sum() > 0
