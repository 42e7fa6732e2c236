"""Trial conversion and failed conversions: the layer and the fix in a short message, the dump in a log file."""

import numpy as np
import pytest
import tensorflow as tf

from edgekeras.compat import keras
from edgekeras.litert import ConversionError, ExportError, convert, export_tflite, trial_conversion
from edgekeras.litert.diagnosis import conversion_error, layer_names
from edgekeras.litert.trial import check_conversions, structure_key
from edgekeras.models import clone_with_weights

SIDE = 12


def atan_model(name="net"):
    """A model TFLite cannot hold: `tf.math.atan` has no built-in kernel (it needs TF Select ops)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.Lambda(tf.math.atan, name="my_atan")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x), name=name)


def good_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="stem")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x), name="good")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (16, SIDE, SIDE, 3)).astype(np.float32)


def test_trial_converts_every_conversion_and_writes_nothing(images, tmp_path):
    log = tmp_path / "conversion.log"
    sizes = trial_conversion(good_model(), ["float32", "float16", "dynamic_int8", "int8"], log_path=log)
    assert sorted(sizes) == ["dynamic_int8", "float16", "float32", "int8"] and all(v > 0 for v in sizes.values())
    # Calibrated on data or, without it, on random inputs.
    assert trial_conversion(good_model(), "int8", representative_data=images, io_dtype="uint8")["int8"] > 0
    assert not log.exists()


def test_refused_layer_is_named_with_the_fix_and_the_dump_goes_to_the_log(tmp_path, capfd):
    log = tmp_path / "conversion.log"
    with pytest.raises(ConversionError, match=(
        r"^Checked before training, on the untrained model: TFLite conversion 'float32' of model 'net' failed at "
        r"layer 'my_atan' \(op tf.Atan\): TFLite has no built-in kernel.*Fix: build layer 'my_atan' from Keras layers"
    )) as caught:
        trial_conversion(atan_model(), ["float32", "int8"], log_path=log)
    error = caught.value
    assert (error.layers, error.ops, error.log_path, error.conversion) == (("my_atan",), ("tf.Atan",), str(log), "float32")
    assert str(error).endswith(f"The converter's full output is in {log}") and len(str(error)) < 600
    assert error.__cause__ is None and error.__suppress_context__
    dump = log.read_text()
    assert "net/my_atan/Atan" in dump and "ERROR_NEEDS_FLEX_OPS" in dump and len(dump) > 3000
    terminal = capfd.readouterr()
    assert "my_atan/Atan" not in terminal.out + terminal.err, "the converter's dump reached the terminal"


def test_layer_inside_a_nested_model_is_named(tmp_path):
    inner = atan_model("backbone")
    inputs = keras.Input((SIDE, SIDE, 3))
    outer = keras.Model(inputs, inner(inputs), name="outer")
    with pytest.raises(ConversionError, match=r"failed at layer 'my_atan' \(op tf.Atan\)"):
        convert(outer, "dynamic_int8", log_path=tmp_path / "x.log")


def test_export_failure_is_short_and_logged(images, tmp_path):
    path = tmp_path / "int8.tflite"
    with pytest.raises(ConversionError, match=r"conversion 'int8' of model 'net' failed at layer 'my_atan'") as caught:
        export_tflite(atan_model(), path, "int8", representative_data=images, log_path=tmp_path / "export.log")
    assert caught.value.log_path == str(tmp_path / "export.log") and not path.exists()


def test_qat_model_asked_for_a_float_conversion_fails_in_the_trial():
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(good_model())
    assert trial_conversion(qat, ["int8"])["int8"] > 0
    with pytest.raises(ValueError, match=r"Argument `conversion` must be one of int8 for a quantization-aware"):
        trial_conversion(qat, ["int8", "float32"])


def test_file_that_does_not_load_in_litert_fails_the_trial():
    inputs = keras.Input((4,))
    two_outputs = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)], name="two_heads")
    with pytest.raises(ExportError, match=r"Checked before training: the float32 file of the untrained model converts but "
                                          r"does not load in LiteRT: edgekeras evaluates single-output"):
        trial_conversion(two_outputs, ["float32"])


@pytest.mark.parametrize(
    "conversions, match",
    [
        (["float32", "bfloat16"], r"Argument `conversions` must hold names from .*Received: conversions=\('float32', 'bfloat16'\)"),
        (3, r"Argument `conversions` must hold names from .*Received: conversions=None"),
        (["int8", "int8"], r"Argument `conversions` has duplicates"),
    ],
)
def test_bad_conversions(conversions, match):
    with pytest.raises(ValueError, match=match):
        check_conversions(conversions)


def test_structure_key_is_shared_by_copies_and_qat_copies():
    import tensorflow_model_optimization as tfmot

    model = good_model()
    assert structure_key(model) == structure_key(clone_with_weights(model))
    first = tfmot.quantization.keras.quantize_model(model)
    second = tfmot.quantization.keras.quantize_model(model)
    assert structure_key(first) == structure_key(second) != structure_key(model)
    assert layer_names(first)["quant_stem"] == "stem"


class _Refused(Exception):
    """A converter failure as TensorFlow reports those found after calibration (text only, no structured errors)."""


@pytest.mark.parametrize(
    "text, match",
    [
        (
            'loc("good/head/MatMul"): error: \'tfl.max_pool_2d\' op quantization parameters violate the same scale '
            "constraint: !quant.uniform<i8:f32, 0.1> vs. !quant.uniform<i8:f32, 0.2>",
            r"failed at layer 'head' \(op tfl.max_pool_2d\): the op's int8 kernel needs the same quantization scale.*"
            r"Fix: keep layer 'head' in float \(`quantize_skip` for QAT, `float_layers`",
        ),
        (
            "Quantization not yet supported for op: 'good/stem/Cumsum'",
            r"failed at layer 'stem': the op has no int8 kernel. Fix: keep layer 'stem' in float",
        ),
        (
            "error: 'tfl.gather' op operand #0 must be tensor of values, but got 'good/head/BiasAdd'",
            r"failed at layer 'head' \(op tfl.gather\): 'tfl.gather' op operand #0.*Fix: change layer 'head' to ops TFLite",
        ),
        ("calibration data went away", r"failed: calibration data went away. Fix: see the converter's output"),
    ],
)
def test_each_kind_of_converter_failure_gets_its_fix(tmp_path, text, match):
    error = conversion_error(good_model(), "int8", _Refused(text), log_path=tmp_path / "x.log")
    assert isinstance(error, ConversionError)
    with pytest.raises(ConversionError, match=match):
        raise error
    assert text in (tmp_path / "x.log").read_text()


def test_fused_float_layer_names_the_fix(images):
    # BatchNormalization folds into the convolution before it: no op of its own is left.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.BatchNormalization(name="norm")(keras.layers.Conv2D(4, 3, name="stem")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ConversionError, match=r"No op of layer 'norm' is left .*Fix: name the layer whose op"):
        convert(model, "int8", representative_data=images, float_layers=["norm"])
