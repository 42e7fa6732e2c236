"""build_transfer_model(keras="keras3"): the same flat transfer models, built with Keras 3."""

import keras
import numpy as np
import pytest

from edgekeras.compat import keras as tf_keras
from edgekeras.models import build_transfer_model, is_nested


# Keras 3 spells MobileNetV3's "expanded_conv_8/expand" "expanded_conv_8_expand": either name is taken.
@pytest.mark.parametrize("architecture, cut, layer", [
    ("mobilenet_v2", "block_16_expand", "block_16_expand"),
    ("mobilenet_v3_small", "expanded_conv_8/expand", "expanded_conv_8_expand"),
])
def test_a_keras3_transfer_model_is_flat_with_the_base_frozen_before_the_cut(architecture, cut, layer):
    model = build_transfer_model(5, 32, architecture=architecture, weights=None, trainable_from=cut, dropout=0.2, keras="keras3")
    assert isinstance(model, keras.Model) and not isinstance(model, tf_keras.Model) and not is_nested(model)
    names = [layer.name for layer in model.layers]
    assert names[-3:] == ["global_average_pooling", "dropout", "classifier"] and model.output.shape == (None, 5)
    first = names.index(layer)
    assert not any(layer.trainable for layer in model.layers[1:first] if layer.weights)
    trained = [layer for layer in model.layers[first:] if layer.weights]
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in trained)


def test_an_unknown_keras_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Argument `keras` must be one of 'tf_keras', 'keras3'\. Received: keras='keras2'"):
        build_transfer_model(10, 32, weights=None, keras="keras2")


@pytest.mark.real_data
def test_shared_imagenet_weights_load_into_a_keras3_model(shared_data):
    import h5py

    model = build_transfer_model(10, 96, weights=shared_data["weights"], trainable_from="block_16_expand", keras="keras3")
    with h5py.File(shared_data["weights"], "r") as stored:
        for layer, index, weight in [("Conv1", 0, "kernel:0"), ("Conv_1", 0, "kernel:0"), ("bn_Conv1", 3, "moving_variance:0")]:
            np.testing.assert_array_equal(model.get_layer(layer).get_weights()[index], stored[layer][layer][weight][()], err_msg=layer)
