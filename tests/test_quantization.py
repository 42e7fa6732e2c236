"""`quantize_model`: layers TFMOT cannot quantize are reported with the fix."""

import pytest

from edgekeras import keras
from edgekeras.quantization import UnquantizableLayersError, is_quantization_aware, quantize_model


def lambda_net():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="tiny")


def test_unquantizable_layer_names_the_layer_and_the_fix():
    with pytest.raises(
        UnquantizableLayersError,
        match=r"Argument `model` has layers that TFMOT's 8-bit quantization-aware training cannot quantize\. "
        r"Received: 'doubler' \(Lambda\)\. "
        r"Fix: keep them in float with `quantize_skip=\['doubler'\]` \(config: `qat\.skip_layers`",
    ) as info:
        quantize_model(lambda_net())
    assert info.value.layers == [("doubler", "Lambda")]


def test_quantize_skip_fixes_it():
    quantized, scheme = quantize_model(lambda_net(), quantize_skip=["doubler"])
    assert is_quantization_aware(quantized) and scheme == "default"
