"""edgekeras' Keras 3 QAT engine: folding, the int8 file's ops, training, sparsity, frozen layers, errors, saving."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgekeras.qat.keras3 import BackendError, Keras3QAT, Keras3UnquantizableLayersError  # noqa: E402
from edgekeras.qat.keras3_layers import ActivationQuantizer, ConstantOp, QuantizedWeighted  # noqa: E402
from edgekeras.runtime import TFLiteModel  # noqa: E402

L = keras.layers
SIDE = 8


def _randomize_batch_norms(model, seed=0):
    """Statistics far from a fresh layer's, so that folding them is actually tested."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0.1, 0.3, beta.shape),
                rng.normal(0.0, 0.1, mean.shape), rng.uniform(0.5, 2.0, variance.shape),
            ])
    return model


def conv_bn_relu6():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3)(x), name="conv_bn_relu6")


def residual_add():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.BatchNormalization()(L.Add()([x, y])))  # no convolution to fold into: MUL, ADD with the ReLU
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x), name="residual_add")


def concatenate():
    inputs = keras.Input((SIDE, SIDE, 3))
    left = L.Conv2D(4, 1)(inputs * 0.5 + 0.25)  # folded into the kernel and bias, as the converter folds them
    right = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inputs))
    x = L.Concatenate()([left, L.ReLU(6.0)(right)])
    x = L.Maximum()([x, L.Conv2D(8, 1)(x)])  # same-scale like the concatenation
    x = L.MaxPooling2D(2)(L.Conv2D(4, 1, activation="relu")(x))
    return keras.Model(inputs, L.Dense(3)(L.Dropout(0.2)(L.Flatten()(x))), name="concatenate")


def squeeze_excite():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Activation("hard_swish")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inputs)))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(8, 1)(s)
    s = L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard-sigmoid
    x = L.Multiply()([x, s])
    x = L.Conv2D(8, 1, activation="sigmoid")(L.Activation("hard_sigmoid")(x))
    return keras.Model(inputs, L.GlobalAveragePooling2D()(x), name="squeeze_excite")


def rescaling_normalization():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0])(x)
    x = L.Conv2D(4, 3, activation="relu6")(x)
    x = L.Activation("swish")(L.AveragePooling2D(2, padding="same")(x))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(x)), name="rescaling_normalization")


def nested():
    inner = keras.Sequential([keras.Input((SIDE, SIDE, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU()], name="inner")
    head_inputs = keras.Input((4,))
    head = keras.Model(head_inputs, L.Dense(3)(head_inputs), name="head")
    inputs = keras.Input((SIDE, SIDE, 3))
    return keras.Model(inputs, head(L.GlobalAveragePooling2D()(inner(inputs))), name="nested")


BUILDERS = [conv_bn_relu6, residual_add, concatenate, squeeze_excite, rescaling_normalization, nested]


def _images(count=16, seed=0, side=SIDE, high=1.0):
    return np.random.default_rng(seed).uniform(0.0, high, (count, side, side, 3)).astype("float32")


def _high(builder):
    return 255.0 if builder is rescaling_normalization else 1.0


def _convert(model, directory, representative=None):
    model.export(str(directory), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(directory))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        converter.representative_dataset = lambda: ([row[None]] for row in representative)
    return converter.convert()


def _ops(content):
    return [op["op_name"] for op in Interpreter(model_content=content)._get_ops_details()]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_folded_model_without_fake_quant_computes_the_float_model(builder):
    model = _randomize_batch_norms(builder())
    images = _images(high=_high(builder))
    folded, _ = Keras3QAT(fake_quant=False).quantize(model)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded(images), model(images), atol=1e-5, rtol=0)


def _same_ops_as_post_training(model, tmp_path, images):
    post_training = _ops(_convert(model, tmp_path / "float", representative=images))
    engine = Keras3QAT()
    qat_model, scheme = engine.quantize(model)
    assert scheme == "default"
    engine.calibrate(qat_model, [images[:8], images[8:]], steps=2)
    content = _convert(qat_model, tmp_path / "qat")
    assert _ops(content) == post_training
    assert post_training[0] == "QUANTIZE" and post_training.count("DEQUANTIZE") == 1
    return qat_model, content


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_qat_file_has_the_post_training_int8_ops(builder, tmp_path):
    model = _randomize_batch_norms(builder())
    images = _images(high=_high(builder))
    qat_model, content = _same_ops_as_post_training(model, tmp_path, images)
    # The file computes what the QAT model computes, up to int8 rounding of the output.
    expected = keras.ops.convert_to_numpy(qat_model(images))
    assert np.abs(TFLiteModel(content).predict(images) - expected).max() < 0.05 * max(np.ptp(expected), 1e-3) + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("minimalistic", [False, True])
def test_mobilenet_v3_small_qat_file_has_the_post_training_int8_ops(minimalistic, tmp_path):
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4, minimalistic=minimalistic)
    _randomize_batch_norms(model)
    images = _images(count=8, side=32, high=255.0)
    folded, _ = Keras3QAT(fake_quant=False).quantize(model)
    np.testing.assert_allclose(folded(images), model(images), atol=1e-5, rtol=0)
    _same_ops_as_post_training(model, tmp_path, np.concatenate([images, images]))


def _toy_task(count, seed):
    """Images whose class is the dominant colour channel, by a small margin: predictions near the boundary."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.uniform(0.0, 0.5, (count, SIDE, SIDE, 3)).astype("float32")
    images[np.arange(count), :, :, labels] += rng.uniform(0.0, 0.12, (count, 1, 1)).astype("float32")
    return images, labels


def _toy_model():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x))


def _fit(model, images, labels, epochs):
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model.fit(images, labels, batch_size=16, epochs=epochs, verbose=0)


def test_trained_qat_model_and_its_int8_file_agree(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = _toy_task(192, seed=1)
    test_images, test_labels = _toy_task(120, seed=2)
    model = _toy_model()
    _fit(model, images, labels, epochs=15)
    engine = Keras3QAT()
    qat_model, _ = engine.quantize(model)
    engine.calibrate(qat_model, tf.data.Dataset.from_tensor_slices((images, labels)).batch(32), steps=4)
    before = [float(high) for _, high in engine.activation_ranges(qat_model)]
    _fit(qat_model, images, labels, epochs=2)
    after = [float(high) for _, high in engine.activation_ranges(qat_model)]
    assert before != after  # the moving average follows training
    keras_predictions = keras.ops.convert_to_numpy(qat_model.predict(test_images, verbose=0)).argmax(-1)
    file_predictions = TFLiteModel(_convert(engine.strip(qat_model), tmp_path / "qat")).predict(test_images).argmax(-1)
    assert np.mean(keras_predictions == test_labels) >= 0.8
    assert np.mean(file_predictions == keras_predictions) >= 0.95


def _prune(model, fraction=0.5):
    for layer in model.layers:
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense)):
            kernel, *rest = layer.get_weights()
            kernel[np.abs(kernel) <= np.quantile(np.abs(kernel), fraction)] = 0.0
            layer.set_weights([kernel, *rest])
    return model


def _file_conv_kernels(content):
    """`(int8 kernel, its scales)` of each convolution of the file, in file order."""
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return [
        (interpreter.get_tensor(d["index"]), d["quantization_parameters"]["scales"])
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["name"].endswith("PerChannel")
    ]


def test_prune_preserve_keeps_the_zeros_through_training_and_in_the_file(tmp_path):
    keras.utils.set_random_seed(0)
    model = _prune(_randomize_batch_norms(conv_bn_relu6()))
    images, labels = _toy_task(32, seed=1)
    engine = Keras3QAT()
    qat_model, scheme = engine.quantize(model)
    assert scheme == "prune_preserve"
    wrapper = next(layer for layer in qat_model.layers if isinstance(layer, QuantizedWeighted))
    before = keras.ops.convert_to_numpy(wrapper.layer.kernel).copy()
    _fit(qat_model, images, labels, epochs=1)
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
    assert np.array_equal(kernel == 0, before == 0) and not np.array_equal(kernel, before)  # the rest trained
    folded, _ = wrapper.folded_kernel()
    assert np.array_equal(keras.ops.convert_to_numpy(folded) == 0, before == 0)
    kernels = _file_conv_kernels(_convert(qat_model, tmp_path / "qat"))
    assert len(kernels) == 2  # the conv and the depthwise, one int8 scale per output channel
    assert all(np.mean(kernel == 0) >= 0.5 and len(scales) == 4 for kernel, scales in kernels)


def test_default_scheme_trains_the_zeros():
    model = _prune(conv_bn_relu6())
    qat_model, scheme = Keras3QAT().quantize(model, scheme="default")
    assert scheme == "default"
    assert not any(layer.preserve_sparsity for layer in qat_model.layers if isinstance(layer, QuantizedWeighted))
    assert Keras3QAT().quantize(conv_bn_relu6())[1] == "default"


def test_frozen_layers_stay_frozen():
    model = _randomize_batch_norms(conv_bn_relu6())
    frozen = [layer for layer in model.layers if isinstance(layer, (L.Conv2D, L.BatchNormalization))][:2]
    for layer in frozen:
        layer.trainable = False
    qat_model, _ = Keras3QAT().quantize(model)
    wrapper = next(layer for layer in qat_model.layers if isinstance(layer, QuantizedWeighted))
    assert not wrapper.layer.trainable and not wrapper.batch_norm.trainable
    trainable = {id(v) for v in qat_model.trainable_weights}
    assert all(id(v) not in trainable for v in wrapper.weights)
    before = [w.copy() for w in wrapper.get_weights()]
    images, labels = _toy_task(16, seed=3)
    _fit(qat_model, images, labels, epochs=1)
    for old, new in zip(before, wrapper.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_weights_are_copied_and_the_float_model_is_untouched():
    model = _randomize_batch_norms(conv_bn_relu6())
    before = [w.copy() for w in model.get_weights()]
    qat_model, _ = Keras3QAT().quantize(model)
    wrapper = next(la for la in qat_model.layers if isinstance(la, QuantizedWeighted))
    np.testing.assert_array_equal(wrapper.layer.get_weights()[0], model.layers[1].get_weights()[0])
    images, labels = _toy_task(16, seed=3)
    _fit(qat_model, images, labels, epochs=1)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_calibration_sets_each_range_from_the_data():
    model = conv_bn_relu6()
    engine = Keras3QAT()
    qat_model, _ = engine.quantize(model)
    images = _images(count=8)
    assert engine.calibrate(qat_model, [images[:4], (images[4:], None)], steps=2) == len(engine.activation_ranges(qat_model))
    low, high = engine.activation_ranges(qat_model)[0]  # the input's
    expected_high = np.mean([images[:4].max(), images[4:].max()])
    assert float(low) == 0.0 and float(high) == pytest.approx(expected_high, rel=1e-6)
    assert engine.calibrate(model, [images], steps=1) == 0


def test_activation_ranges_move_by_the_moving_average_in_training_only():
    quantizer = ActivationQuantizer(ema_decay=0.9)
    values = np.array([[-1.0, 3.0]], "float32")
    quantizer(values)
    assert (float(quantizer.min_var.numpy()), float(quantizer.max_var.numpy())) == (-6.0, 6.0)
    quantizer(values, training=True)
    assert float(quantizer.min_var.numpy()) == pytest.approx(0.9 * -6.0 + 0.1 * -1.0)
    assert float(quantizer.max_var.numpy()) == pytest.approx(0.9 * 6.0 + 0.1 * 3.0)
    quantizer(np.array([[5.0, 9.0]], "float32"), training=True, observe=False)
    assert float(quantizer.max_var.numpy()) == pytest.approx(0.9 * 6.0 + 0.1 * 3.0)
    # Ranges hold zero; values outside clip to the range's ends.
    quantizer(np.array([[2.0, 3.0]], "float32"), training=True)
    assert float(quantizer.min_var.numpy()) < 0.0
    clipped = keras.ops.convert_to_numpy(quantizer(np.array([[-100.0, 100.0]], "float32")))
    assert clipped[0, 0] == pytest.approx(float(quantizer.min_var.numpy()), abs=0.05)
    assert clipped[0, 1] == pytest.approx(float(quantizer.max_var.numpy()), abs=0.05)


@pytest.mark.parametrize("builder", [squeeze_excite, concatenate], ids=lambda b: b.__name__)
def test_save_and_load_round_trip(builder, tmp_path):
    model = _prune(_randomize_batch_norms(builder()))
    engine = Keras3QAT()
    qat_model, scheme = engine.quantize(model)
    assert scheme == "prune_preserve"
    images = _images()
    engine.calibrate(qat_model, [images], steps=1)
    path = tmp_path / "qat.keras"
    qat_model.save(path)
    loaded = keras.saving.load_model(path)
    assert engine.is_quantization_aware(loaded) and not engine.is_quantization_aware(model)
    np.testing.assert_allclose(loaded(images), qat_model(images), atol=1e-6)
    for (low, high), (loaded_low, loaded_high) in zip(engine.activation_ranges(qat_model), engine.activation_ranges(loaded)):
        assert (float(low), float(high)) == (float(loaded_low), float(loaded_high))
    kinds = {type(layer) for layer in loaded.layers}
    assert {QuantizedWeighted, ActivationQuantizer} <= kinds and (ConstantOp in kinds) == (builder is squeeze_excite)


def test_skipped_and_placed_layers(tmp_path):
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(4, 3, activation="relu")(inputs)
    x = L.Lambda(lambda t: t * 2.0, name="doubler")(x)
    x = L.Activation("selu", name="selu")(x)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(x)))
    with pytest.raises(Keras3UnquantizableLayersError, match=r"'doubler' \(Lambda\), 'selu' \(Activation 'selu'\)") as raised:
        Keras3QAT().check(model)
    assert [name for name, _ in raised.value.layers] == ["doubler", "selu"]
    engine = Keras3QAT()
    engine.check(model, quantize_skip=["selu"], quantize_configs={"doubler": "output"})
    qat_model, _ = engine.quantize(model, quantize_skip=["selu"], quantize_configs={"doubler": "output"})
    names = [layer.name for layer in qat_model.layers]
    assert "doubler_quant" in names and "selu_quant" in names
    assert engine.strip(qat_model) is qat_model


class _Subclassed(keras.Model):
    def call(self, inputs):
        return inputs * 2.0


def test_errors(monkeypatch):
    engine = Keras3QAT()
    model = conv_bn_relu6()
    with pytest.raises(TypeError, match="must be a Keras 3"):
        engine.check(object())
    with pytest.raises(ValueError, match="subclassed model"):
        engine.check(_Subclassed())
    with pytest.raises(ValueError, match="not built"):
        engine.check(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match="already quantization-aware"):
        engine.check(engine.quantize(model)[0])
    with pytest.raises(ValueError, match="Argument `scheme` must be one of"):
        engine.quantize(model, scheme="sparse")
    with pytest.raises(ValueError, match="must name layers of the model. Received unknown names: \\['nope'\\]"):
        engine.check(model, quantize_skip=["nope"])
    with pytest.raises(ValueError, match="Argument `quantize_skip` must be a list of layer names"):
        engine.check(model, quantize_skip="dense")
    with pytest.raises(ValueError, match="Argument `quantize_configs` must map layer names to 'output' or 'pass_through'"):
        engine.check(model, quantize_configs={"dense": object()})
    with pytest.raises(ValueError, match="Argument `steps` must be an integer >= 1"):
        engine.calibrate(model, [], steps=0)
    with pytest.raises(ValueError, match="Argument `data` must yield at least one batch"):
        engine.calibrate(engine.quantize(model)[0], [], steps=2)
    with pytest.raises(ValueError, match="Argument `fake_quant` must be a boolean"):
        Keras3QAT(fake_quant=1)
    with pytest.raises(ValueError, match="Argument `ema_decay` must be in"):
        Keras3QAT(ema_decay=1.0)
    with pytest.raises(ValueError, match="Argument `sparse_threshold` must be in"):
        Keras3QAT(sparse_threshold=0)
    with pytest.raises(ValueError, match="Argument `ema_decay` must be in"):
        ActivationQuantizer(ema_decay=-0.1)
    with pytest.raises(ValueError, match="Argument `op` must be one of"):
        ConstantOp("div", 2.0)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(BackendError, match="need the TensorFlow backend. Received: Keras 3 running on the 'jax' backend"):
        engine.check(model)
    with pytest.raises(BackendError, match="'jax' backend"):
        engine.calibrate(model, [], steps=1)


def test_a_skipped_run_from_the_input_stays_float_in_the_file(tmp_path):
    from edgekeras.litert import convert

    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 1)(x)))
    model = _randomize_batch_norms(keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x))))
    images = _images()
    skipped = ["stem", "stem_bn", "stem_relu"]
    engine = Keras3QAT()
    qat_model, _ = engine.quantize(model, quantize_skip=skipped)
    engine.calibrate(qat_model, [images[:8], images[8:]], steps=2)
    qat_file = convert(qat_model, "int8")
    # The run has no range before or inside it (a range on both sides would make the converter compute it in int8):
    # the file starts with the float stem, then quantizes, as the post-training file with the stem in float does.
    post_training = convert(model, "int8", representative_data=images, float_layers=["stem"])
    assert _ops(qat_file) == _ops(post_training)
    assert _ops(qat_file)[:2] == ["CONV_2D", "QUANTIZE"]
    expected = keras.ops.convert_to_numpy(qat_model(images))
    assert np.abs(TFLiteModel(qat_file).predict(images) - expected).max() < 0.05


def test_a_near_empty_channel_keeps_its_bias_in_the_file(tmp_path):
    from edgekeras.litert import convert

    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(8, 1, name="dead")(inputs)
    model = keras.Model(inputs, L.Conv2D(4, 1, name="after")(L.ReLU()(x)))
    kernel, bias = model.get_layer("dead").get_weights()
    # As ImageNet MobileNetV2's dead channels: weights ~1e-8, an offset of ~2 (BatchNorm folded into the bias).
    kernel[..., 0], bias[0] = 1e-8, 2.28
    model.get_layer("dead").set_weights([kernel, bias])
    images = _images()
    engine = Keras3QAT()
    qat_model, _ = engine.quantize(model)
    engine.calibrate(qat_model, [images[:8], images[8:]], steps=2)
    expected = keras.ops.convert_to_numpy(qat_model(images))
    # At the channel's own weight scale the file's int32 bias would overflow and be clamped to about 0.
    difference = np.abs(TFLiteModel(convert(qat_model, "int8")).predict(images) - expected).max()
    assert difference < 0.05 * np.ptp(expected)
