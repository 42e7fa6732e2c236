"""Contract on Keras 3: the user-model shapes and MobileNetV3-Small go float -> prune -> PQAT -> int8.

The Keras 3 side of `tests/test_architectures.py`: each small model, built with
`import keras`, learns the easy task of that file (the class is the brightest
colour channel) in `EdgeTrainer` (float, pruning to 50 %, prune-preserving QAT
on edgekeras' own Keras 3 engine), then every conversion of the float model,
the pruned model and the PQAT model is exported and evaluated in LiteRT. The
PQAT int8 file has the operators of the post-training int8 file of the pruned
model, computes in int8 everywhere, keeps the zeros and agrees with Keras on
>= 95 % of top-1 predictions.
"""

import keras
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgekeras.litert import evaluate_accuracy, export_tflite, tflite_sparsity
from edgekeras.trainers import EdgeTrainer

from tests import test_architectures as architectures

L = keras.layers
SIDE = 16
CLASSES, TARGET_SPARSITY, FLOAT_CONVERSIONS = architectures.CLASSES, architectures.TARGET_SPARSITY, architectures.FLOAT_CONVERSIONS


def images_and_labels(count, seed):
    return architectures.images_and_labels(count, seed, side=SIDE)


def batches(count, seed):
    return architectures.batches(count, seed, side=SIDE)


def head(x):
    return L.Dense(CLASSES, activation="softmax", name="probabilities")(L.GlobalAveragePooling2D()(x))


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
    return keras.Model(inputs, head(L.ReLU()(L.Add()([x, y]))), name="residual")


def concatenate():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Rescaling(1 / 255)(inputs)
    a = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    b = L.AveragePooling2D(2)(L.Conv2D(8, 1, activation="relu")(x))
    x = L.Concatenate()([a, b, L.MaxPooling2D(2)(x)])
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="concatenate")


def squeeze_excite():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(L.Rescaling(1 / 255)(inputs))
    x = L.Activation("swish")(L.BatchNormalization()(x))
    squeezed = L.Conv2D(4, 1, activation="relu", name="se_reduce")(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.Multiply(name="se_excite")([x, L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(squeezed)])
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="squeeze_excite")


def preprocessing():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inputs)
    normalization = L.Normalization(name="normalization")
    normalization.adapt(images_and_labels(48, seed=3)[0] / 127.5 - 1.0)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(normalization(x))
    return keras.Model(inputs, head(L.Conv2D(16, 1, activation="relu")(x)), name="preprocessing")


def hard_swish():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same")(L.Rescaling(1 / 255)(inputs)))
    x = L.Activation("hard_swish")(x)
    return keras.Model(inputs, head(L.Activation("hard_swish")(L.Conv2D(16, 1)(x))), name="hard_swish")


def mobilenet_v3_small():
    base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None,
                                               include_preprocessing=True)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = L.UpSampling2D(2)(inputs)  # the smallest input MobileNetV3 builds at
    return keras.Model(inputs, head(base(x)), name="mobilenet_v3_small")


def op_names(path):
    return [op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()]


def float_ops(path):
    return [op for op, _ in architectures.float_ops(path)]


def run_contract(model, tmp_path, *, float_epochs, meaningful=True):
    train, test = batches(96, seed=1), batches(48, seed=2)
    trainer = EdgeTrainer(model, lambda phase: keras.optimizers.Adam(5e-3), "sparse_categorical_crossentropy", ["accuracy"],
                          calibration_steps=2)
    trainer.fit(train, float_epochs=float_epochs, prune=TARGET_SPARSITY, prune_epochs=1, qat_epochs=1, verbose=0)
    assert trainer.quantize_scheme == "prune_preserve"
    exports = {}
    for name, source, conversion in [
        *((conversion, trainer.float_model, conversion) for conversion in FLOAT_CONVERSIONS),
        ("pruned_int8", trainer.pruned_model, "int8"), ("pqat_int8", trainer.qat_model, "int8"),
    ]:
        exports[name] = export_tflite(source, tmp_path / f"{name}.tflite", conversion, representative_data=train,
                                      verify_data=test, verify_examples=48)
        assert evaluate_accuracy(exports[name].path, test, progress=False).examples == 48
    assert op_names(exports["pqat_int8"].path) == op_names(exports["pruned_int8"].path)
    assert float_ops(exports["pqat_int8"].path) == []
    assert tflite_sparsity(exports["pqat_int8"].path) >= 0.9 * trainer.summary()["model_sparsity"]["prune"] >= 0.8 * TARGET_SPARSITY
    if meaningful:
        assert evaluate_accuracy(exports["float32"].path, test, progress=False).accuracy >= 0.9
        assert exports["pqat_int8"].verification.top1_agreement >= 0.95, exports["pqat_int8"].verification
    return exports


@pytest.mark.parametrize("build", [nested, residual, concatenate, squeeze_excite, preprocessing, hard_swish])
def test_user_model_goes_through_every_phase_and_export_on_keras3(build, tmp_path):
    keras.utils.set_random_seed(0)
    run_contract(build(), tmp_path, float_epochs=6)


@pytest.mark.slow
def test_mobilenet_v3_small_goes_through_every_phase_and_export_on_keras3(tmp_path):
    keras.utils.set_random_seed(0)
    run_contract(mobilenet_v3_small(), tmp_path, float_epochs=1, meaningful=False)
