"""`quantize_model` and the quantize configs: what each layer kind becomes in an int8 file, and the errors."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edgekeras import keras, models
from edgekeras.litert import convert
from edgekeras.quantization import (
    UnquantizableLayersError,
    activation_ranges,
    calibrate_activation_ranges,
    is_quantization_aware,
    quantize_model,
    unquantizable_layers,
)
from edgekeras.quantize_configs import (
    FLOAT_INSIDE,
    OUTPUT,
    PASS_THROUGH,
    EdgePrunePreserveQuantizeRegistry,
    EdgeQuantizeRegistry,
    output_config,
    pass_through_config,
    quantize_kind,
    quantize_scheme,
)

L = keras.layers


def lambda_net():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="tiny")


def float_ops(flatbuffer):
    """`[(op, output tensor name)]` of the ops an int8 file computes in float."""
    interpreter = Interpreter(
        model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        outputs = [tensors[i] for i in op["outputs"] if i >= 0]
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and any(t["dtype"] == np.float32 for t in outputs):
            found.append((op["op_name"], outputs[0]["name"]))
    return found


def run_tflite(flatbuffer, images):
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.resize_tensor_input(0, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_unquantizable_layer_names_the_layer_and_the_fix():
    with pytest.raises(
        UnquantizableLayersError,
        match=r"Argument `model` has layers that TFMOT's 8-bit quantization-aware training cannot quantize\. "
        r"Received: 'doubler' \(Lambda\)\. "
        r"Fix: keep them in float with `quantize_skip=\['doubler'\]` \(config: `qat\.skip_layers`.*"
        r"quantize_configs=\{name: config\}` \(e\.g\. `edgekeras\.quantize_configs\.output_config\(\)`",
    ) as info:
        quantize_model(lambda_net())
    assert info.value.layers == [("doubler", "Lambda")]


def test_quantize_skip_fixes_it():
    quantized, scheme = quantize_model(lambda_net(), quantize_skip=["doubler"])
    assert is_quantization_aware(quantized) and scheme == "default"
    # The skipped layer's output is quantized, so what follows it stays int8.
    assert "doubler_output_quant" in {layer.name for layer in quantized.layers}


def test_a_run_of_skipped_layers_is_quantized_only_where_int8_follows():
    # A depthwise conv whose channels differ 100-fold in scale, then its BatchNorm and ReLU6, all kept in
    # float: an 8-bit range on the conv's output (before the BatchNorm rescales it) would zero the small
    # channels, so only the ReLU6's output, which a quantized layer takes, gets one.
    inputs = keras.Input((8, 8, 4))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    outputs = L.Dense(3, activation="softmax", name="head")(L.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model(inputs, outputs)
    kernel = np.ones((3, 3, 4, 1), np.float32) * np.array([1.0, 1.0, 0.01, 0.01], np.float32)[None, None, :, None]
    model.get_layer("dw").set_weights([kernel, np.zeros(4, np.float32)])
    quantized, _ = quantize_model(model, quantize_skip=["dw", "dw_bn", "dw_relu"])
    names = {layer.name for layer in quantized.layers}
    assert "dw_relu_output_quant" in names
    assert not {"dw_output_quant", "dw_bn_output_quant"} & names
    # The skipped layers alone at the end of a model keep their output quantizer (nothing follows them).
    quantized, _ = quantize_model(model, quantize_skip=["head"])
    assert "head_output_quant" in {layer.name for layer in quantized.layers}


def test_output_config_fixes_it_and_the_lambda_becomes_an_int8_mul():
    quantized, _ = quantize_model(lambda_net(), quantize_configs={"doubler": output_config()})
    assert float_ops(convert(quantized, "int8")) == []


def test_every_unquantizable_layer_is_reported_in_one_message():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, activation="selu", name="selu_conv")(inputs)
    x = L.Activation("softplus", name="softplus")(x)
    x = tf.math.erf(x)
    x = L.Lambda(lambda t: t * 2.0, name="doubler")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(x)))
    erf = next(layer.name for layer in model.layers if getattr(layer, "symbol", None) == "math.erf")
    with pytest.raises(UnquantizableLayersError) as info:
        quantize_model(model)
    assert info.value.layers == [
        ("selu_conv", "Conv2D with activation 'selu'"),
        ("softplus", "Activation 'softplus'"),
        (erf, "TFOpLambda tf.math.erf"),
        ("doubler", "Lambda"),
    ]
    assert unquantizable_layers(model, quantize_skip=[name for name, _ in info.value.layers]) == []


KINDS = [
    (L.Multiply(), OUTPUT),
    (L.Subtract(), OUTPUT),
    (L.Rescaling(1 / 255), OUTPUT),
    (L.Rescaling(1 / 127.5, offset=-1), FLOAT_INSIDE),
    (L.Normalization(mean=0.5, variance=0.25), FLOAT_INSIDE),
    (L.Average(), FLOAT_INSIDE),
    (L.BatchNormalization(), FLOAT_INSIDE),
    (L.Activation("hard_sigmoid"), FLOAT_INSIDE),
    (L.SpatialDropout2D(0.1), PASS_THROUGH),
    (L.AveragePooling2D(), PASS_THROUGH),  # TFMOT's own would quantize the output
    (L.Activation("relu"), None),  # TFMOT's own
    (L.Conv2D(1, 1), None),
    (L.Lambda(lambda t: t), None),
]


@pytest.mark.parametrize("layer, kind", KINDS, ids=lambda value: getattr(value, "name", value))
def test_quantize_kind_of_layers(layer, kind):
    assert quantize_kind(layer) == kind
    registry, prune_preserve = EdgeQuantizeRegistry(), EdgePrunePreserveQuantizeRegistry()
    assert registry.supports(layer) == prune_preserve.supports(layer) == (not isinstance(layer, L.Lambda))


def every_kind_net():
    """One model with a layer of every kind the configs cover; FLOAT_INSIDE layers are named `float_*`."""
    inputs = keras.Input((8, 8, 4))
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="float_rescaling")(inputs)
    x = L.Normalization(mean=0.1, variance=2.0, name="float_normalization")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv")(x)
    gate = L.Conv2D(8, 1, activation="swish", name="gate")(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.Multiply(name="multiply")([x, L.Activation("hard_sigmoid", name="float_hard_sigmoid")(gate)])
    x = L.Subtract(name="subtract")([x, L.ReLU()(x)])
    x = L.Average(name="float_average")([x, L.Conv2D(8, 1, name="side")(x)])
    x = L.BatchNormalization(name="float_batchnorm")(L.Add()([x, x]))
    x = L.AveragePooling2D(2, strides=1, padding="same")(L.Rescaling(0.5, name="halve")(x))
    hard_sigmoid = L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    x = L.Multiply(name="hard_swish")([x, hard_sigmoid])
    x = tf.clip_by_value(tf.maximum(tf.minimum(x - 1.0, 5.0), -5.0) / 2.0, -4.0, 4.0)
    x = tf.nn.relu6(x + 3.0) - tf.nn.relu(x)
    x = tf.nn.silu(x) + tf.sigmoid(x) * tf.tanh(x)
    x = tf.transpose(tf.squeeze(tf.expand_dims(x, 1), 1), (0, 2, 1, 3))[:, 1:, 1:]
    x = tf.reshape(L.SpatialDropout2D(0.1)(x), (-1, 7, 7, 8))
    x = L.Conv2D(8, 1, name="mix")(tf.reduce_mean(x, axis=3, keepdims=True) * x)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="every_kind")


@pytest.mark.parametrize("scheme", ["default", "prune_preserve"])
def test_every_kind_converts_to_int8_with_float_only_inside_float_inside_layers(scheme):
    model = every_kind_net()
    assert unquantizable_layers(model) == []
    quantized, used = quantize_model(model, scheme)
    assert used == scheme
    images = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 4)).astype(np.float32)
    calibrate_activation_ranges(quantized, [images[:16], images[16:]], steps=2)
    flatbuffer = convert(quantized, "int8")
    floating = float_ops(flatbuffer)
    assert floating, "the float-inside layers should leave float ops"
    assert all("/quant_float_" in name or "/float_" in name for _, name in floating), floating
    expected = quantized(images).numpy()
    assert np.ptp(expected) > 0
    error = np.abs(run_tflite(flatbuffer, images) - expected).max() / np.abs(expected).max()
    assert error < 0.1


def test_swish_is_split_off_a_convolution_so_that_it_is_int8():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 1, activation="swish", name="expand")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    quantized, _ = quantize_model(model)
    names = {layer.name for layer in quantized.layers}
    assert {"quant_expand", "quant_expand_swish"} <= names
    kernel = next(w for w in quantized.get_layer("quant_expand").weights if w.name.endswith("kernel:0"))
    np.testing.assert_array_equal(kernel.numpy(), model.get_layer("expand").kernel.numpy())
    assert float_ops(convert(quantized, "int8")) == []


def test_user_config_on_an_op_layer_is_honoured():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 1, name="conv")(inputs)
    x = tf.reshape(x + 1.0, (-1, 64, 8))
    model = keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(x)))
    add, reshape = [layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    quantized, _ = quantize_model(model, quantize_configs={add: pass_through_config(), reshape: output_config()})
    # Op layers are never wrapped; the config's output quantizer follows them.
    names = {layer.name for layer in quantized.layers}
    assert f"{reshape}_output_quant" in names and f"{add}_output_quant" not in names
    assert float_ops(convert(quantized, "int8")) == []


def test_prune_preserve_scheme_accepts_skipped_and_unknown_weightless_layers():
    # TFMOT's own prune-preserve registry raised `get_quantize_config() called
    # on an unsupported layer ...Normalization` here.
    inputs = keras.Input((8, 8, 3))
    x = L.Normalization(mean=0.5, variance=0.25, name="norm")(inputs)
    x = L.Conv2D(8, 3, name="conv")(x)
    x = L.Multiply(name="gate")([x, L.Activation("sigmoid")(x)])
    model = keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    kernel = model.get_layer("conv").kernel
    kernel.assign(tf.where(tf.abs(kernel) < 0.1, 0.0, kernel))
    for skip in ([], ["norm"]):
        quantized, scheme = quantize_model(model, "prune_preserve", quantize_skip=skip)
        assert scheme == "prune_preserve"
        wrapper = quantized.get_layer("quant_conv")
        assert type(wrapper.quantize_config.weight_quantizer).__name__.startswith("PrunePreserve")


def test_quantize_scheme_names():
    assert type(quantize_scheme("default").get_quantize_registry()) is EdgeQuantizeRegistry
    assert type(quantize_scheme("prune_preserve").get_quantize_registry()) is EdgePrunePreserveQuantizeRegistry
    with pytest.raises(ValueError, match=r"Argument `name` must be 'default' or 'prune_preserve'\. Received: name='int4'"):
        quantize_scheme("int4")


def test_qat_model_with_op_layers_and_split_activations_saves_and_loads(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = L.Conv2D(8, 3, activation="swish", name="conv")(x)
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    model = keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    quantized, _ = quantize_model(model)
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "qat.h5"
    models.save_model(quantized, path)
    loaded = models.load_model(path)
    np.testing.assert_allclose(loaded(images).numpy(), quantized(images).numpy(), atol=1e-5)


def separable_images(count, seed=0):
    """Three classes told apart by which channel is bright: a toy task a tiny net learns in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = rng.uniform(0.0, 1.0, (count, 8, 8, 4)).astype(np.float32)
    images[np.arange(count), :, :, labels] += rng.uniform(0.5, 2.0, (count, 8, 8)).astype(np.float32)
    return images, labels


def mobile_block_net():
    inputs = keras.Input((8, 8, 4))
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    x = L.ReLU(6.0, name="dw_relu")(L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.BatchNormalization(name="project_bn")(L.Conv2D(16, 1, name="project")(x))
    outputs = L.Dense(3, activation="softmax", name="head")(L.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(inputs, outputs, name="mobile_block")


def test_calibration_sets_every_activation_range_to_the_observed_one_before_the_first_step():
    model = mobile_block_net()
    quantized, _ = quantize_model(model)
    images, _ = separable_images(32)
    ranges = activation_ranges(quantized)
    assert ranges and all(lo.numpy() == -6.0 and hi.numpy() == 6.0 for lo, hi in ranges)  # TFMOT's start
    assert calibrate_activation_ranges(quantized, [images] * 3, steps=3) == len(ranges)
    calibrated = [(float(lo.numpy()), float(hi.numpy())) for lo, hi in ranges]
    assert all(bounds != (-6.0, 6.0) for bounds in calibrated)
    # The model input's range (TFMOT's all-values quantizer, which starts at [0, 0] and only grows) is the
    # batch's, 0 kept inside as TFLite requires.
    # Keras numbers the layer's name per process (quantize_layer_40 after other tests): find it by type.
    (input_quantizer,) = [layer for layer in quantized.layers if type(layer).__name__ == "QuantizeLayer"]
    quantizer_vars = input_quantizer.quantizer_vars
    observed = (float(quantizer_vars["min_var"].numpy()), float(quantizer_vars["max_var"].numpy()))
    assert observed == pytest.approx((min(0.0, images.min()), images.max()), rel=1e-6)
    # At the observed ranges, one more training step on the same batch moves none of them.
    quantized(images, training=True)
    after = [(float(lo.numpy()), float(hi.numpy())) for lo, hi in ranges]
    np.testing.assert_allclose(after, calibrated, rtol=1e-4, atol=1e-5)


def test_qat_model_and_its_int8_file_agree_on_at_least_99_percent_of_predictions():
    keras.utils.set_random_seed(0)
    model = mobile_block_net()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    images, labels = separable_images(512)
    model.fit(images, labels, batch_size=32, epochs=4, verbose=0)
    quantized, _ = quantize_model(model)
    calibrate_activation_ranges(quantized, [images[i:i + 32] for i in range(0, 512, 32)], steps=16)
    quantized.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", ["accuracy"])
    quantized.fit(images, labels, batch_size=32, epochs=1, verbose=0)
    test_images, test_labels = separable_images(1000, seed=1)
    expected = quantized.predict(test_images, verbose=0).argmax(1)
    assert np.mean(expected == test_labels) > 0.9  # a model worth comparing: not near-ties everywhere
    lite = run_tflite(convert(quantized, "int8"), test_images).argmax(1)
    assert np.mean(lite == expected) >= 0.99


@pytest.mark.parametrize("skip, expected", [
    # Skipped in the middle: ranges at its input and output, so the converter
    # quantizes the depthwise layer anyway (what configs used to ship).
    (["dw", "dw_bn", "dw_relu"], []),
    # Skipped from the stem on: no range inside the run, so both stay float.
    (["stem", "stem_bn", "stem_relu", "dw", "dw_bn", "dw_relu"], ["CONV_2D", "DEPTHWISE_CONV_2D"]),
])
def test_a_skipped_run_stays_float_in_the_file_only_from_the_models_input(skip, expected):
    quantized, _ = quantize_model(mobile_block_net(), quantize_skip=skip)
    images = separable_images(32)[0]
    calibrate_activation_ranges(quantized, [images[:16], images[16:]], steps=2)
    assert [op for op, _ in float_ops(convert(quantized, "int8"))] == expected
