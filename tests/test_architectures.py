"""Contract: the architectures people deploy go through every phase and every export.

Each model (a `keras.applications` family nested the usual way, or a small user
model of one shape) runs float -> prune -> QAT (default scheme, from the float
snapshot) and PQAT (prune-preserving scheme, after pruning) with `EdgeTrainer`,
is exported to every conversion with `export_tflite` and evaluated in LiteRT.
The int8 files of the quantization-aware models compute in int8 everywhere
except inside layers of kind `FLOAT_INSIDE` (and skipped ones), and the pruned
files keep their zeros. The user models learn an easy task (the class is the
brightest colour channel), so their predictions mean something: int8 files and
Keras agree on >= 95 % of top-1 predictions. The random-weight applications
models only prove that everything runs and converts.
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edgekeras import keras, sparsity
from edgekeras.litert import evaluate_accuracy, export_tflite, tflite_sparsity
from edgekeras.models import build_transfer_model, flatten
from edgekeras.quantization import UnquantizableLayersError, calibrate_activation_ranges, quantize_model
from edgekeras.quantize_configs import FLOAT_INSIDE, quantize_kind
from edgekeras.schedules import ConstantSparsity
from edgekeras.trainers import EdgeTrainer

L = keras.layers
SIDE = 32
CLASSES = 3
BATCH = 16
TARGET_SPARSITY = 0.5
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FLOAT_CONVERSIONS = ("float32", "float16", "dynamic_int8", "int8")


def images_and_labels(count, seed, side=SIDE):
    """0-255 images whose class is the brightest colour channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    images = rng.uniform(0, 100, (count, side, side, 3))
    images[np.arange(count), :, :, labels] += 120
    return images.astype(np.float32), labels


def batches(count, seed, side=SIDE):
    return tf.data.Dataset.from_tensor_slices(images_and_labels(count, seed, side)).batch(BATCH)


def float_ops(path):
    """`[(op, output tensor name)]` of the ops a .tflite file computes in float."""
    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        outputs = [tensors[i] for i in op["outputs"] if i >= 0]
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and any(t["dtype"] == np.float32 for t in outputs):
            found.append((op["op_name"], outputs[0]["name"]))
    return found


def float_layer_names(model, quantize_skip):
    """The layers whose ops an int8 file of `model`'s QAT copy may run in float."""
    folding = (L.Conv2D, L.DepthwiseConv2D, L.Dense)

    def folded(layer):
        # TFMOT folds a BatchNormalization into the convolution before it:
        # an int8 op, whose name then carries the BatchNormalization's.
        inbound = [producer for node in layer._inbound_nodes for producer in tf.nest.flatten(node.inbound_layers)]
        return isinstance(layer, L.BatchNormalization) and all(isinstance(producer, folding) for producer in inbound)

    return {layer.name for layer in model.layers if quantize_kind(layer) == FLOAT_INSIDE and not folded(layer)} | set(quantize_skip)


def check_int8_is_int8(path, allowed):
    stray = [
        (op, name) for op, name in float_ops(path)
        if not any(f"/{layer}/" in name or f"/quant_{layer}/" in name for layer in allowed)
    ]
    assert not stray, f"{path.name}: float ops outside {sorted(allowed)}: {stray[:5]}"


def run_contract(model, tmp_path, *, float_epochs=4, learning_rate=5e-3, quantize_skip=(), float_layers=(), meaningful=True):
    """float -> prune -> PQAT, float -> QAT, every export, LiteRT evaluation; returns the exports.

    `float_layers` are kept in float by the post-training int8 conversions
    (ignored for the others and for quantization-aware models).
    """
    train, test = batches(96, seed=1), batches(48, seed=2)
    optimizer = lambda phase: keras.optimizers.Adam(learning_rate)  # noqa: E731 - one fresh optimizer per phase
    trainer = EdgeTrainer(model, optimizer, LOSS, ["accuracy"], quantize_skip=quantize_skip)
    trainer.fit(train, float_epochs=float_epochs, prune=TARGET_SPARSITY, prune_epochs=1, qat_epochs=1, verbose=0)
    assert trainer.quantize_scheme == "prune_preserve"
    qat_trainer = EdgeTrainer(trainer.float_model, optimizer, LOSS, ["accuracy"], quantize_skip=quantize_skip)
    # The first trainer already tried converting a quantization-aware copy before training.
    qat_trainer.fit(train, qat_epochs=1, conversions=(), verbose=0)
    assert qat_trainer.quantize_scheme == "default"

    exports = {}

    def export(name, source, conversion):
        exports[name] = export_tflite(
            source, tmp_path / f"{name}.tflite", conversion, representative_data=train, verify_data=test,
            verify_examples=48, float_layers=float_layers,
        )

    for conversion in FLOAT_CONVERSIONS:
        export(conversion, trainer.float_model, conversion)
    export("pruned_int8", trainer.pruned_model, "int8")
    export("qat_int8", qat_trainer.qat_model, "int8")
    export("pqat_int8", trainer.qat_model, "int8")

    for name, exported in exports.items():
        accuracy = evaluate_accuracy(exported.path, test, progress=False)
        assert accuracy.examples == 48 and 0.0 <= accuracy.accuracy <= 1.0, name
        if meaningful:
            assert exported.verification.top1_agreement >= 0.95, (name, exported.verification)
    if meaningful:
        assert evaluate_accuracy(exports["float32"].path, test, progress=False).accuracy >= 0.9

    allowed = float_layer_names(trainer.model, quantize_skip)
    check_int8_is_int8(tmp_path / "qat_int8.tflite", allowed)
    check_int8_is_int8(tmp_path / "pqat_int8.tflite", allowed)
    model_sparsity = trainer.summary()["model_sparsity"]
    assert model_sparsity["prune"] >= 0.8 * TARGET_SPARSITY
    assert tflite_sparsity(exports["pruned_int8"].path) >= 0.9 * model_sparsity["prune"]
    assert tflite_sparsity(exports["pqat_int8"].path) >= 0.9 * model_sparsity["prune"]
    return exports


def application(name):
    """`inputs -> base(inputs) -> GAP -> Dense`, the base a random-weight `keras.applications` model."""
    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, name)(input_shape=(SIDE, SIDE, 3), include_top=False, weights=None)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.GlobalAveragePooling2D()(base(inputs))
    return keras.Model(inputs, L.Dense(CLASSES, name="logits")(x), name=name)


APPLICATIONS = ["MobileNetV3Small", "MobileNetV3Large", "MobileNetV2", "EfficientNetB0", "EfficientNetV2B0", "ResNet50"]


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_goes_through_every_phase_and_export(name, tmp_path):
    # Each takes minutes on 2 cores: QAT alone clones and traces a few
    # hundred layers three times (the trainer's trial, QAT, PQAT).
    run_contract(application(name), tmp_path, float_epochs=1, learning_rate=1e-3, meaningful=False)


def test_mobilenet_v3_small_pqat_converts_to_int8_with_its_zeros(tmp_path):
    """The default suite's real architecture: hard-swish ops, Rescaling, squeeze-excite, prune-preserving QAT."""
    model = flatten(application("MobileNetV3Small"))
    pairs = sparsity.prunable_weights(model)
    for (_, weight), mask in zip(pairs, sparsity.magnitude_masks([w for _, w in pairs], TARGET_SPARSITY)):
        weight.assign(weight * mask)
    quantized, scheme = quantize_model(model)
    assert scheme == "prune_preserve"
    images = images_and_labels(32, seed=2)[0]
    calibrate_activation_ranges(quantized, [images[:16], images[16:]], steps=2)
    exported = export_tflite(quantized, tmp_path / "pqat_int8.tflite", "int8", verify_data=images, verify_examples=32)
    assert evaluate_accuracy(exported.path, batches(32, seed=2), progress=False).examples == 32
    check_int8_is_int8(tmp_path / "pqat_int8.tflite", float_layer_names(model, ()))
    assert tflite_sparsity(exported.path) >= 0.9 * sparsity.overall_sparsity(model) >= 0.9 * TARGET_SPARSITY


def head(x):
    return L.Dense(CLASSES, name="logits")(L.GlobalAveragePooling2D()(x))


def nested():
    inner_inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inner_inputs)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    inner = keras.Model(inner_inputs, L.Conv2D(16, 1)(x), name="inner")
    inputs = keras.Input((SIDE, SIDE, 3))
    return keras.Model(inputs, head(inner(L.Rescaling(1 / 255)(inputs))), name="nested")


def residual():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(L.Rescaling(1 / 255)(inputs))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(x)))
    y = L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(y))
    x = L.ReLU()(L.Add()([x, y]))
    x = L.BatchNormalization(name="bn_after_add")(L.Add()([x, L.Conv2D(16, 1)(x)]))
    return keras.Model(inputs, head(x), name="residual")


def concatenate():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Rescaling(1 / 255)(inputs)
    a = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    b = L.AveragePooling2D()(L.Conv2D(8, 1, activation="relu")(x))
    x = L.Concatenate()([a, b, L.MaxPooling2D()(x)])
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="concatenate")


def squeeze_excite():
    """EfficientNet's block: swish convolutions, a squeeze-excite `Multiply`, and a hard-sigmoid gate."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(L.Rescaling(1 / 255)(inputs))
    x = L.Activation("swish")(L.BatchNormalization()(x))
    squeezed = L.GlobalAveragePooling2D(keepdims=True)(x)
    squeezed = L.Conv2D(4, 1, activation="swish", name="se_reduce")(squeezed)
    x = L.Multiply(name="se_excite")([x, L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(squeezed)])
    gate = L.Activation("hard_sigmoid", name="hard_gate")(L.Conv2D(16, 1)(x))
    return keras.Model(inputs, head(L.Multiply()([x, gate])), name="squeeze_excite")


def preprocessing():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inputs)
    normalization = L.Normalization(name="normalization")
    normalization.adapt(images_and_labels(48, seed=3)[0] / 127.5 - 1.0)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(normalization(x))
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="preprocessing")


def hard_swish():
    """MobileNetV3's hard-swish from Python arithmetic (TFOpLambda), and a user's own spelling of it."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same")(L.Rescaling(1 / 255)(inputs)))
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = L.Conv2D(16, 1)(x)
    x = x * tf.nn.relu6(x + 3.0) / 6.0
    return keras.Model(inputs, head(x), name="hard_swish")


# Each build takes ~20 s on 2 cores (QAT traces the model three times); the default suite keeps the
# residual one (adds and a shared input), `make test-slow` runs the rest, and the default suite runs
# each of them small (test_small_user_model_goes_through_prune_pqat_and_int8 below).
@pytest.mark.parametrize("build", [
    residual, *(pytest.param(build, marks=pytest.mark.slow)
                for build in (nested, concatenate, squeeze_excite, preprocessing, hard_swish)),
])
def test_user_model_goes_through_every_phase_and_export(build, tmp_path):
    keras.utils.set_random_seed(0)
    run_contract(build(), tmp_path)


def unquantizable():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="selu", name="selu_conv")(L.Rescaling(1 / 255)(inputs))
    x = L.Activation("softplus", name="softplus")(x)
    x = tf.math.exp(-x)
    x = L.Lambda(lambda t: t * 2.0, name="doubler")(x)
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="unquantizable")


def test_the_fix_in_the_unquantizable_message_works_through_every_phase_and_export(tmp_path):
    keras.utils.set_random_seed(0)
    model = unquantizable()
    before = [weight.copy() for weight in model.get_weights()]
    trainer = EdgeTrainer(model, "adam", LOSS)
    with pytest.raises(UnquantizableLayersError, match=r"Fix: keep them in float with `quantize_skip=\[") as info:
        trainer.fit(batches(96, seed=1), float_epochs=1, prune=TARGET_SPARSITY, prune_epochs=1, qat_epochs=1, verbose=0)
    # One message, before any training, naming every layer.
    exp = next(layer.name for layer in model.layers if getattr(layer, "symbol", None) == "math.exp")
    assert [name for name, _ in info.value.layers] == ["selu_conv", "softplus", exp, "doubler"]
    assert trainer.histories == {}
    for saved, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(saved, now)
    # Post-training int8 needs the layers without int8 kernels in float too;
    # the doubler's MUL is folded into the convolution after it.
    skipped = [name for name, _ in info.value.layers]
    run_contract(model, tmp_path, quantize_skip=skipped, float_layers=skipped[:3])


# The default suite's small versions of the contract above: one trainer (two steps of
# constant-sparsity pruning, two of PQAT), one int8 export, on tiny models.
def run_small_contract(model, tmp_path, quantize_skip=(), close=True, loss=LOSS):
    """Prune -> PQAT two steps each, then int8: the file is int8 outside float layers and keeps its zeros.

    With `close`, the file's outputs are within 5 % of the largest output of the
    QAT model, whose fake quantization simulates the int8 kernels (the user
    models and the ResNet50 cut are within 3 %). The random-weight EfficientNetB0
    cut gives logits of ~0.1 with 20 % differences: for it, as for the whole
    applications above, only running and converting are checked.
    """
    train, verify = batches(2 * BATCH, seed=1), batches(BATCH, seed=2)
    trainer = EdgeTrainer(model, lambda phase: keras.optimizers.Adam(1e-3), loss, quantize_skip=quantize_skip,
                          calibration_steps=2)
    trainer.fit(train, prune=ConstantSparsity(TARGET_SPARSITY, begin_step=0, frequency=1), prune_epochs=1,
                qat_epochs=1, conversions=(), verbose=0)
    assert trainer.quantize_scheme == "prune_preserve"
    path = tmp_path / "pqat_int8.tflite"
    exported = export_tflite(trainer.qat_model, path, "int8", representative_data=train, verify_data=verify,
                             verify_examples=BATCH)
    check = exported.verification
    assert check.examples == BATCH
    if close:
        assert check.max_abs_diff <= 0.05 * check.max_abs_output, check
    check_int8_is_int8(path, float_layer_names(trainer.model, quantize_skip))
    model_sparsity = trainer.summary()["model_sparsity"]
    assert model_sparsity["prune"] >= 0.9 * TARGET_SPARSITY
    assert tflite_sparsity(path) >= 0.9 * model_sparsity["prune"]
    return exported


def cut(base, layer, name):
    """`base` up to `layer`'s output, then the usual head: a flat model of an application's first blocks."""
    return keras.Model(base.input, head(base.get_layer(layer).output), name=name)


def efficientnet_b0_first_blocks():
    """EfficientNetB0's stem and blocks 1a-2b: Rescaling, Normalization, swish, squeeze-excite, a residual add."""
    keras.utils.set_random_seed(0)
    base = keras.applications.EfficientNetB0(input_shape=(SIDE, SIDE, 3), include_top=False, weights=None)
    return cut(base, "block2b_add", "efficientnetb0_first_blocks")


def resnet50_first_blocks():
    """ResNet50's stem and its first two bottleneck blocks (a projection shortcut, then an identity one)."""
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(input_shape=(SIDE, SIDE, 3), include_top=False, weights=None)
    return cut(base, "conv2_block2_out", "resnet50_first_blocks")


@pytest.mark.parametrize("build, close", [(efficientnet_b0_first_blocks, False), (resnet50_first_blocks, True)])
def test_first_blocks_of_an_application_go_through_prune_pqat_and_int8(build, close, tmp_path):
    run_small_contract(build(), tmp_path, close=close)


@pytest.mark.parametrize("build", [nested, concatenate, squeeze_excite, preprocessing, hard_swish])
def test_small_user_model_goes_through_prune_pqat_and_int8(build, tmp_path):
    keras.utils.set_random_seed(0)
    run_small_contract(build(), tmp_path)


# EfficientNetB0 is exported above; B1-B3 (deeper and wider, the same blocks) by nothing else.
# Each builds, trains and converts a few hundred layers: about a minute on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["efficientnet_b1", "efficientnet_b2", "efficientnet_b3"])
def test_larger_efficientnets_export_to_float32_and_after_pqat_to_int8(architecture, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_transfer_model(CLASSES, SIDE, architecture=architecture, weights=None, trainable_from="auto")
    float_file = export_tflite(model, tmp_path / "float32.tflite", "float32", verify_data=batches(BATCH, seed=2),
                               verify_examples=BATCH)
    assert float_file.verification.top1_agreement == 1.0 and float_file.verification.max_abs_diff < 1e-4
    run_small_contract(model, tmp_path, close=False, loss="sparse_categorical_crossentropy")
