"""TFLite export: every conversion converts, verifies and writes atomically."""

import copy
import os

import numpy as np
import pytest

from edgekeras.backend import by_name
from edgekeras.callbacks import TFLiteExport
from edgekeras.choices import KERASES
from edgekeras.compat import keras
from edgekeras.litert import (
    CONVERSIONS,
    ExportError,
    TFLiteModel,
    applicable_options,
    convert,
    export_tflite,
    prepare_for_export,
    tflite_sparsity,
    verify,
)
from edgekeras.models import is_pruning_wrapped, is_quantization_aware

SIDE = 12


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def prune_in_place(model, sparsity=0.75):
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)):
            kernel = weights[0]
            threshold = np.quantile(np.abs(kernel), sparsity)
            weights[0] = np.where(np.abs(kernel) < threshold, 0.0, kernel).astype(kernel.dtype)
            layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, (32, SIDE, SIDE, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "conversion, io_dtype",
    [(c, "float32") for c in CONVERSIONS] + [("int8", "int8"), ("int8", "uint8")],
)
def test_each_conversion_converts_and_verifies(model, images, tmp_path, conversion, io_dtype):
    path = tmp_path / f"{conversion}_{io_dtype}.tflite"
    exported = export_tflite(
        model, path, conversion, representative_data=images, io_dtype=io_dtype, verify_data=images
    )
    assert path.is_file() and os.path.getsize(path) == exported.size_bytes
    assert 0 < exported.gzip_bytes < exported.size_bytes
    assert exported.verification.examples == 32
    assert exported.name == f"{conversion}_{io_dtype}"
    if conversion in ("float32", "sparse_float32", "dynamic_int8"):
        # dynamic_int8 leaves tensors under 1024 weights in float: exact here.
        assert exported.verification.max_abs_diff < 1e-5
        assert exported.verification.top1_agreement == 1.0
    else:
        assert exported.verification.max_abs_diff < 0.05
        assert exported.verification.top1_agreement >= 0.9
    assert TFLiteModel(path).input_dtype.name == io_dtype
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no temporary files left"


def stored_weight_types(data):
    """The stored type of each constant that a convolution or fully-connected op reads, through a DEQUANTIZE."""
    from ai_edge_litert import schema_py_generated as schema

    operators = {code: name for name, code in vars(schema.BuiltinOperator).items() if name.isupper()}
    types = {code: name for name, code in vars(schema.TensorType).items() if name.isupper()}
    root = schema.Model.GetRootAsModel(data, 0)
    graph = root.Subgraphs(0)
    ops, producers = [], {}
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = root.OperatorCodes(op.OpcodeIndex())
        ops.append((operators[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], op))
        producers.update({int(output): ops[-1] for output in op.OutputsAsNumpy()})
    stored = []
    for name, op in ops:
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        for index in (int(i) for i in op.InputsAsNumpy()[1:] if i >= 0):
            producer = producers.get(index)
            if producer is not None and producer[0] == "DEQUANTIZE":
                index = producer[1].Inputs(0)
            tensor = graph.Tensors(index)
            if root.Buffers(tensor.Buffer()).DataLength():
                stored.append(types[tensor.Type()])
    return stored


def test_float16_stores_half_precision_weights():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    # 2,304 weights: over dynamic-range quantization's 1,024, so an int8 file would be smaller too.
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    float32, float16 = convert(model, "float32"), convert(model, "float16")
    assert len(float16) < len(float32)
    weights = stored_weight_types(float32)
    assert len(weights) == 7 and set(weights) == {"FLOAT32"}, weights  # 4 kernels, the 3 convolutions' biases
    assert stored_weight_types(float16) == ["FLOAT16"] * len(weights)


def test_pruned_model_keeps_its_zeros_in_every_file(images, tmp_path):
    pruned = prune_in_place(tiny_model(2))
    dense = export_tflite(tiny_model(2), tmp_path / "dense.tflite", "float32", verify_data=images)
    for conversion in ("float32", "sparse_float32", "int8", "float16"):
        exported = export_tflite(
            pruned, tmp_path / f"pruned_{conversion}.tflite", conversion, representative_data=images, verify_data=images
        )
        assert tflite_sparsity(exported.path) == pytest.approx(0.75, abs=0.02), conversion
    assert export_tflite(pruned, tmp_path / "p.tflite", "float32").gzip_bytes < dense.gzip_bytes * 0.6
    assert tflite_sparsity(dense.path) < 0.01


def test_pruning_wrapped_model_is_stripped_before_conversion(images, tmp_path):
    import tensorflow_model_optimization as tfmot

    wrapped = tfmot.sparsity.keras.prune_low_magnitude(tiny_model(3))
    assert is_pruning_wrapped(wrapped)
    stripped = prepare_for_export(wrapped)
    assert not is_pruning_wrapped(stripped)
    exported = export_tflite(wrapped, tmp_path / "wrapped.tflite", "float32", verify_data=images)
    assert exported.verification.top1_agreement == 1.0


@pytest.mark.parametrize("io_dtype", ["float32", "int8", "uint8"])
def test_quantization_aware_model_exports_int8_without_calibration(images, tmp_path, io_dtype):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(tiny_model(4))
    assert is_quantization_aware(qat)
    exported = export_tflite(qat, tmp_path / "qat.tflite", "int8", io_dtype=io_dtype, verify_data=images)
    assert exported.verification.top1_agreement >= 0.9
    assert TFLiteModel(exported.path).input_dtype.name == io_dtype


def test_verify_reports_disagreement(model, images, tmp_path):
    other = export_tflite(tiny_model(7), tmp_path / "other.tflite", "float32")
    result = verify(other.path, model, images)
    assert result.max_abs_diff > 1e-3


def test_verify_runs_both_models_a_batch_at_a_time(model, tmp_path, monkeypatch):
    # Verifying on all images at once allocated activations for all of them (GBs at 512 x 128 px).
    from edgekeras.litert import export as export_module

    images = np.random.default_rng(2).uniform(-1, 1, (70, SIDE, SIDE, 3)).astype(np.float32)
    exported = export_tflite(model, tmp_path / "float32.tflite", "float32")
    monkeypatch.setattr(export_module, "VERIFY_BATCH", 16)
    allocated, called = [], []
    allocate = TFLiteModel.allocate
    monkeypatch.setattr(TFLiteModel, "allocate", lambda self, size: allocated.append(size) or allocate(self, size))
    counting = keras.Model(model.inputs, model.outputs)
    call = counting.call
    monkeypatch.setattr(counting, "call", lambda x, **kwargs: called.append(len(x)) or call(x, **kwargs))
    result = verify(exported.path, counting, images)
    assert set(allocated) == {16} and called == [16, 16, 16, 16, 6]
    assert result.examples == 70 and result.top1_agreement == 1.0 and result.max_abs_diff < 1e-4


def test_float_export_checks_its_tolerance_without_calling_the_model_on_every_image_at_once(model, tmp_path, monkeypatch):
    # The tolerance's scale once came from one call on all verification images:
    # every layer's activations for 256 images (1.2-1.5 GiB at 96 px, the demo's peak).
    from edgekeras.litert import export as export_module

    images = np.random.default_rng(3).uniform(-1, 1, (40, SIDE, SIDE, 3)).astype(np.float32)
    monkeypatch.setattr(export_module, "VERIFY_BATCH", 16)
    counting = keras.Model(model.inputs, model.outputs)
    batches = []
    call = counting.call
    monkeypatch.setattr(counting, "call", lambda x, **kwargs: batches.append(x.shape[0]) or call(x, **kwargs))
    exported = export_tflite(counting, tmp_path / "float32.tflite", "float32", verify_data=images, verify_examples=40)
    assert max(size for size in batches if size is not None) == 16
    expected = np.max(np.abs(model.predict(images, verbose=0)))
    assert exported.verification.max_abs_output == pytest.approx(expected, rel=1e-5)


def test_failed_conversion_leaves_previous_file_and_no_partial_file(model, images, tmp_path):
    path = tmp_path / "int8.tflite"
    path.write_bytes(b"previous")

    def broken_calibration():
        yield [images[:1]]
        raise RuntimeError("calibration data went away")

    with pytest.raises(ExportError, match="conversion 'int8' of model 'tiny' failed"):
        export_tflite(model, path, "int8", representative_data=broken_calibration)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["int8.tflite"]


def test_failed_verification_writes_nothing(model, images, tmp_path):
    path = tmp_path / "float32.tflite"
    with pytest.raises(ExportError, match="not written"):
        export_tflite(model, path, "float32", verify_data=images, min_agreement=1.0, float_tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_min_agreement_rejects_a_file(images, tmp_path):
    path = tmp_path / "int8.tflite"
    # A calibration set of zeros gives useless int8 ranges for random inputs.
    zeros = np.zeros((4, SIDE, SIDE, 3), np.float32)
    with pytest.raises(ExportError, match="below min_agreement=1.0"):
        export_tflite(tiny_model(5), path, "int8", representative_data=zeros, verify_data=images, min_agreement=1.0)
    assert not path.exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conversion": "int4"}, "Argument `conversion` must be one of"),
        ({"conversion": "int8", "io_dtype": "int16"}, "Argument `io_dtype` must be one of"),
        ({"conversion": "float16", "io_dtype": "int16"}, "Argument `io_dtype` must be one of"),
        ({"conversion": "float16", "float_layers": "depthwise"}, "Argument `float_layers` must be a list of layer names"),
        ({"conversion": "int8"}, "Argument `representative_data` is required"),
        ({"conversion": "float32", "path_name": "model.bin"}, "Argument `path` must end with .tflite"),
        ({"conversion": "float32", "min_agreement": 1.5}, r"Argument `min_agreement` must be in \[0, 1\]"),
        ({"conversion": "float32", "verify_examples": 0}, "Argument `verify_examples` must be a positive integer"),
    ],
)
def test_bad_arguments_name_the_argument(model, tmp_path, kwargs, match):
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("path_name", "out.tflite")
    with pytest.raises(ValueError, match=match):
        export_tflite(model, path, **kwargs)
    assert not path.exists()


def test_float_conversion_of_qat_model_is_refused(tmp_path):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(tiny_model(6))
    with pytest.raises(ValueError, match="for a quantization-aware"):
        export_tflite(qat, tmp_path / "x.tflite", "float16")


def test_a_foreign_model_is_rejected(tmp_path):
    with pytest.raises(TypeError, match=r"Argument `model` must be a Keras model \(tf_keras or Keras 3 `keras.Model`\)"):
        export_tflite(object(), tmp_path / "x.tflite")
    assert list(tmp_path.iterdir()) == []


def _fit_once(model, images, callback):
    model.compile("adam", "sparse_categorical_crossentropy")
    labels = np.arange(len(images)) % 3
    model.fit(images, labels, epochs=1, batch_size=16, verbose=0, callbacks=[callback])


def test_callback_exports_at_end_of_fit(images, tmp_path):
    callback = TFLiteExport(
        tmp_path, ("float32", "int8"), prefix="final_", representative_data=images, io_dtype="uint8",
        verify_data=images, verbose=0,
    )
    _fit_once(tiny_model(8), images, callback)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_float32.tflite", "final_int8.tflite"]
    assert [e.conversion for e in callback.exported] == ["float32", "int8"]
    assert callback.exported[1].io_dtype == "uint8"
    assert callback.exported[0].verification.top1_agreement == 1.0


def test_callback_survives_deepcopy_and_shares_data(images, tmp_path):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images)))).batch(8)
    callback = TFLiteExport(tmp_path, ("int8",), representative_data=dataset, verify_data=dataset, verbose=0)
    clone = copy.deepcopy(callback)
    assert clone is not callback
    assert clone.representative_data is dataset and clone.conversions == ("int8",)
    _fit_once(tiny_model(9), images, clone)
    assert (tmp_path / "int8.tflite").is_file() and callback.exported == []


def test_callback_checks_calibration_data_before_training(images, tmp_path):
    callback = TFLiteExport(tmp_path, ("int8",), verbose=0)
    model = tiny_model(10)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="Argument `representative_data` is required"):
        _fit_once(model, images, callback)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conversions": ("float32", "bfloat16")}, "Argument `conversions` must hold names from"),
        ({"conversions": ()}, "Argument `conversions` must name at least one"),
        ({"conversions": ("float32", "float32")}, "Argument `conversions` has duplicates"),
        ({"io_dtype": "int4"}, "Argument `io_dtype` must be one of"),
        ({"min_agreement": -0.1}, r"Argument `min_agreement` must be in \[0, 1\]"),
        ({"prefix": 3}, "Argument `prefix` must be a string"),
        ({"float_layers": "depthwise"}, "Argument `float_layers` must be a list of layer names"),
    ],
)
def test_callback_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TFLiteExport(tmp_path, **kwargs)


def test_callback_directory_error():
    with pytest.raises(ValueError, match="Argument `directory` must be a non-empty path"):
        TFLiteExport("")


def _named_model(keras=keras):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="logits")(x), name="named")


def _op_input_types(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    return {
        op["op_name"]: [tensors[i]["dtype"].__name__ for i in op["inputs"] if i >= 0]
        for op in interpreter._get_ops_details()
    }


@pytest.mark.parametrize("keras_name", KERASES)
def test_float_layers_stay_float_in_an_int8_file(images, tmp_path, keras_name):
    # Keras 3 scopes the converted ops by "depthwise_1": the layer's name and a call count.
    model = _named_model(by_name(keras_name).keras)
    plain = convert(model, "int8", representative_data=images)
    selective = export_tflite(
        model, tmp_path / "selective.tflite", "int8", representative_data=images, verify_data=images,
        float_layers=["depthwise"],
    )
    assert _op_input_types(plain)["DEPTHWISE_CONV_2D"] == ["int8", "int8", "int32"]
    ops = _op_input_types(open(selective.path, "rb").read())
    assert ops["DEPTHWISE_CONV_2D"][:2] == ["float32", "float32"]  # float activations and weights
    assert ops["CONV_2D"][0] == "int8"  # the other layers are still int8
    assert selective.verification.top1_agreement >= 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"conversion": "float32"},
            r"Argument `float_layers` applies to conversion='int8'.*"
            r"Received: float_layers=\['depthwise'\] with conversion='float32'",
        ),
        ({"io_dtype": "uint8"}, r"Argument `float_layers` applies to .* io_dtype='float32'.*io_dtype='uint8'"),
        ({"float_layers": ["head"]}, r"Argument `float_layers` names layers that model 'named' does not have: \['head'\]"),
        (
            {"float_layers": "depthwise"},
            r"Argument `float_layers` must be a list of layer names.*Received: float_layers='depthwise'",
        ),
    ],
)
def test_float_layers_bad_arguments(images, kwargs, match):
    arguments = {"conversion": "int8", "representative_data": images, "float_layers": ["depthwise"], **kwargs}
    conversion = arguments.pop("conversion")
    with pytest.raises(ValueError, match=match):
        convert(_named_model(), conversion, **arguments)


def test_convert_refuses_io_dtype_of_a_float_conversion(model):
    # `convert` takes its arguments literally; `export_tflite` applies them per conversion.
    match = r"can only be int8 or uint8 for full-integer.*io_dtype='int8' with conversion='float16'"
    with pytest.raises(ValueError, match=match):
        convert(model, "float16", io_dtype="int8")


def test_applicable_options_per_conversion():
    import tensorflow_model_optimization as tfmot

    model = _named_model()
    qat = tfmot.quantization.keras.quantize_model(_named_model())
    for conversion in ("float32", "float16", "dynamic_int8", "sparse_float32"):
        assert applicable_options(model, conversion, "uint8", ["depthwise"]) == ("float32", ())
    assert applicable_options(model, "int8", "uint8", ["depthwise"]) == ("uint8", ("depthwise",))
    assert applicable_options(qat, "int8", "int8", ["depthwise"]) == ("int8", ())
    with pytest.raises(ValueError, match="Argument `io_dtype` must be one of"):
        applicable_options(model, "float16", "int4")
    with pytest.raises(ValueError, match="Argument `float_layers` must be a list of layer names"):
        applicable_options(model, "float32", "float32", "depthwise")


def test_export_applies_the_settings_of_a_run_per_conversion(images, tmp_path):
    import tensorflow_model_optimization as tfmot

    settings = {"representative_data": images, "verify_data": images, "io_dtype": "uint8", "float_layers": ["depthwise"]}
    float16 = export_tflite(_named_model(), tmp_path / "float16.tflite", "float16", **settings)
    assert float16.io_dtype == "float32" and TFLiteModel(float16.path).input_dtype.name == "float32"
    qat = tfmot.quantization.keras.quantize_model(_named_model())
    int8 = export_tflite(qat, tmp_path / "qat.tflite", "int8", **settings)
    assert int8.io_dtype == "uint8" and TFLiteModel(int8.path).input_dtype.name == "uint8"
    # A QAT model carries its ranges: float_layers do not apply, every layer is int8.
    assert _op_input_types(open(int8.path, "rb").read())["DEPTHWISE_CONV_2D"][:2] == ["int8", "int8"]
    # Post-training int8 is where float_layers apply, and they need float I/O.
    with pytest.raises(ValueError, match=r"Argument `float_layers` applies to .* io_dtype='float32'"):
        export_tflite(_named_model(), tmp_path / "int8.tflite", "int8", **settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float16.tflite", "qat.tflite"]


def test_callback_passes_float_layers_through(images, tmp_path):
    callback = TFLiteExport(
        tmp_path, ("float32", "int8"), representative_data=images, verify_data=images, float_layers=["depthwise"],
        verbose=0,
    )
    _fit_once(_named_model(), images, callback)
    ops = _op_input_types(open(callback.exported[1].path, "rb").read())
    assert ops["DEPTHWISE_CONV_2D"][:2] == ["float32", "float32"]
    assert ops["CONV_2D"][0] == "int8"
    assert [e.io_dtype for e in callback.exported] == ["float32", "float32"]
