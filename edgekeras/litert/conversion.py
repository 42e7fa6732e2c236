"""TFLite conversion: one Keras model (tf_keras or Keras 3) to one .tflite flatbuffer, in memory.

A *conversion* turns one trained Keras model into one .tflite flatbuffer:

| conversion       | what the converter does                                        |
| ---------------- | -------------------------------------------------------------- |
| `float32`        | no optimization                                                |
| `float16`        | weights stored as float16 (dequantized at load)                |
| `dynamic_int8`   | weights int8, activations float (dynamic-range quantization)   |
| `int8`           | full-integer: weights and activations int8, calibrated on a    |
|                  | representative dataset; input/output float32, int8 or uint8    |
| `sparse_float32` | float32 with sparse weight encoding (`EXPERIMENTAL_SPARSITY`)  |
|                  | so XNNPACK's sparse kernels can be used                        |

Any model that trains converts: functional and Sequential models by their
inputs, subclassed ones from the inputs of their first call, their data or an
explicit `input_signature`; several inputs and dict inputs (a dataset yielding
`({"image": x}, y)`) become the file's inputs in `tf.nest` order
(`edgekeras.litert.signature`). A failed conversion raises a short
`ConversionError` naming the layer and the fix; the converter's dump goes to a
log file, not the terminal (`edgekeras.litert.diagnosis`).

A quantization-aware model (from either QAT engine, `edgekeras.qat`) carries
its own quantization ranges, so for it `int8` needs no representative
dataset, and float conversions are refused (they would keep fake-quant ops).
A model still wrapped for pruning (TFMOT `PruneLowMagnitude`) is stripped
first, so what comes out of `fit` can be converted as is.

`convert` takes its arguments literally: an argument that does not apply to
the conversion asked for is an error. `edgekeras.litert.export_tflite`, which
writes and verifies the file, is the one place that applies export settings
per conversion.

Example:

```python
from edgekeras.litert import convert

flatbuffer = convert(model, "int8", representative_data=data.train)
```
"""

import re
import warnings

import tensorflow as tf

from edgekeras.arguments import check_positive_int
from edgekeras.choices import CONVERSIONS, IO_DTYPES
from edgekeras.backend import check_model, for_model
from edgekeras.errors import EdgekerasError
from edgekeras.litert.diagnosis import ConversionError, ExportError, captured_output, conversion_error
from edgekeras.litert.signature import input_batches, model_inputs
from edgekeras.qat import engine_for

__all__ = [
    "CONVERSIONS",
    "IO_DTYPES",
    "ConversionError",
    "ExportError",
    "applicable_options",
    "check_conversion",
    "check_float_layers",
    "check_representative_data",
    "convert",
    "is_quantization_aware",
    "prepare_for_export",
]

# Conversions that calibrate activation ranges on a representative dataset
# (unless the model is quantization-aware) and may have integer I/O.
_FULL_INTEGER = ("int8",)
# The only conversions of a QAT model: the others would keep fake-quant ops.
_QAT_CONVERSIONS = ("int8",)
_DEFAULT_OPTIMIZATION = ("float16", "dynamic_int8", "int8")


def prepare_for_export(model):
    """Returns `model` ready for the converter (training-only wrappers stripped).

    Args:
        model: a tf_keras or Keras 3 model.

    Returns:
        `model` itself, or a copy without pruning wrappers that holds the
        same (sparse) weights.

    Raises:
        TypeError: `model` is not a Keras model.
        BackendError: a Keras 3 model on another backend than TensorFlow.

    Example:

    ```python
    stripped = prepare_for_export(tfmot.sparsity.keras.prune_low_magnitude(model))
    ```
    """
    check_model(model)
    for_model(model).check_tensorflow()
    return engine_for(model).strip(model)


def is_quantization_aware(model):
    """Returns True if `model` is a quantization-aware model of either Keras (QAT).

    Example:

    ```python
    conversion = "int8" if is_quantization_aware(model) else "float32"
    ```
    """
    return engine_for(model).is_quantization_aware(model)


def check_conversion(conversion, io_dtype="float32"):
    """Raises a clear ValueError unless `conversion` and `io_dtype` are known names.

    Args:
        conversion: a conversion name, one of `CONVERSIONS`.
        io_dtype: an input/output dtype name, one of `IO_DTYPES`.

    Raises:
        ValueError: either name is unknown.

    Example:

    ```python
    check_conversion("int8", "uint8")
    ```
    """
    if conversion not in CONVERSIONS:
        raise ValueError(
            f"Argument `conversion` must be one of {', '.join(CONVERSIONS)}. "
            f"Received: conversion={conversion!r}"
        )
    if io_dtype not in IO_DTYPES:
        raise ValueError(
            f"Argument `io_dtype` must be one of {', '.join(IO_DTYPES)}. Received: io_dtype={io_dtype!r}"
        )


def check_float_layers(float_layers):
    """Returns `float_layers` as a tuple of layer names, or raises a clear ValueError.

    Args:
        float_layers: a list of non-empty layer names.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: `float_layers` is a string, or holds something other than
            non-empty strings.

    Example:

    ```python
    check_float_layers(["expanded_conv_depthwise"])  # ("expanded_conv_depthwise",)
    ```
    """
    if isinstance(float_layers, str) or not all(isinstance(name, str) and name for name in float_layers):
        raise ValueError(
            "Argument `float_layers` must be a list of layer names, e.g. ['expanded_conv_depthwise']. "
            f"Received: float_layers={float_layers!r}"
        )
    return tuple(float_layers)


def check_representative_data(model, conversion, representative_data):
    """Raises a clear ValueError when `conversion` of `model` needs calibration data and has none.

    Post-training `int8` calibrates its activation ranges on representative
    images; a quantization-aware model carries its ranges and needs none.

    Args:
        model: a tf_keras or Keras 3 model.
        conversion: one of `CONVERSIONS`.
        representative_data: the calibration data, or None.

    Raises:
        ValueError: calibration data is needed and `representative_data` is None.

    Example:

    ```python
    check_representative_data(model, "int8", data.train)
    ```
    """
    if representative_data is None and conversion in _FULL_INTEGER and not is_quantization_aware(model):
        raise ValueError(
            f"Argument `representative_data` is required for conversion={conversion!r} "
            "of a model without quantization-aware training: pass calibration images "
            "from the training split, e.g. `representative_data=data.train`. "
            "Received: representative_data=None"
        )


def applicable_options(model, conversion, io_dtype="float32", float_layers=()):
    """The `io_dtype` and `float_layers` that `conversion` of `model` uses, from settings for every conversion.

    Export settings are given once for all the files of a run, but each
    applies to some conversions only:

    - `io_dtype` is the input/output dtype of full-integer `int8` files (post-training or
      quantization-aware); every other conversion has float32 input and output.
    - `float_layers` applies to post-training `int8` only: other conversions keep every
      layer in float anyway, and a quantization-aware model carries its own ranges.

    Args:
        model: a tf_keras or Keras 3 model (pruning-wrapped and QAT models accepted).
        conversion: one of `CONVERSIONS`.
        io_dtype: one of `IO_DTYPES`.
        float_layers: a list of layer names.

    Returns:
        `(io_dtype, float_layers)` to pass to `convert`.

    Raises:
        ValueError: an unknown conversion or io_dtype, or a malformed
            `float_layers`, whatever the conversion.

    Example:

    ```python
    applicable_options(model, "float16", "uint8", ["expanded_conv_depthwise"])  # ("float32", ())
    ```
    """
    check_conversion(conversion, io_dtype)
    float_layers = check_float_layers(float_layers)
    if conversion not in _FULL_INTEGER:
        return "float32", ()
    if is_quantization_aware(model):
        return io_dtype, ()
    return io_dtype, float_layers


def _check_combination(model, conversion, io_dtype, float_layers):
    """Refuses arguments that do not apply to `conversion` of `model`; returns the float layers."""
    if io_dtype != "float32" and conversion not in _FULL_INTEGER:
        raise ValueError(
            f"Argument `io_dtype` can only be int8 or uint8 for full-integer "
            f"conversions ({', '.join(_FULL_INTEGER)}). Received: "
            f"io_dtype={io_dtype!r} with conversion={conversion!r}"
        )
    quantization_aware = is_quantization_aware(model)
    float_layers = _check_applied_float_layers(model, float_layers, conversion, io_dtype, quantization_aware)
    if quantization_aware and conversion not in _QAT_CONVERSIONS:
        raise ValueError(
            f"Argument `conversion` must be one of {', '.join(_QAT_CONVERSIONS)} for a "
            f"quantization-aware (QAT) model. Received: conversion={conversion!r}. "
            "Export the float model before `quantize_apply` for float variants."
        )
    return float_layers


def _check_applied_float_layers(model, float_layers, conversion, io_dtype, quantization_aware):
    float_layers = check_float_layers(float_layers)
    if not float_layers:
        return ()
    if conversion not in _FULL_INTEGER or quantization_aware or io_dtype != "float32":
        raise ValueError(
            "Argument `float_layers` applies to conversion='int8' of a model without quantization-aware "
            "training, with io_dtype='float32'. Received: "
            f"float_layers={list(float_layers)!r} with conversion={conversion!r}, io_dtype={io_dtype!r}"
            f"{', a QAT model' if quantization_aware else ''}"
        )
    names = {layer.name for layer in model.layers}
    missing = [name for name in float_layers if name not in names]
    if missing:
        raise ValueError(
            f"Argument `float_layers` names layers that model {model.name!r} does not have: {missing}. "
            f"Received: float_layers={list(float_layers)!r}"
        )
    return float_layers


def _representative(representative_data, inputs, num_examples):
    """The converter's generator function for any kind of calibration data, or None.

    It yields one example at a time as a list of arrays, one per input, in
    the file's input order (the model's flat order, see `ModelInputs`).
    """
    if representative_data is None:
        return None
    if callable(representative_data) and not isinstance(representative_data, tf.data.Dataset):
        return representative_data
    check_positive_int(num_examples, "representative_examples")

    def generate():
        produced = 0
        for arrays in input_batches(representative_data, inputs, "representative_data"):
            for index in range(arrays[0].shape[0]):
                if produced >= num_examples:
                    return
                yield [array[index:index + 1] for array in arrays]
                produced += 1

    return generate


def _converter(model, inputs):
    """A converter fed by one concrete inference function of `model`.

    `from_keras_model` first writes and re-reads a SavedModel: about 10 s for
    a MobileNetV2 on this CPU. Freezing one concrete function of
    `model(x, training=False)` gives the same graph in under a second. Its
    one argument is the model's input structure (a tensor, a list or a dict),
    so any model that can be called converts, subclassed ones included.
    """

    @tf.function
    def serve(x):
        return model(x, training=False)

    function = serve.get_concrete_function(inputs.structure)
    # The function as `trackable_obj` keeps this fast path: the model itself
    # would make the converter save and reload it as a SavedModel (~40 s).
    return tf.lite.TFLiteConverter.from_concrete_functions([function], serve)


def _configure(converter, conversion, calibration, io_dtype, float_layers):
    """Sets the converter's optimizations, types and ops for `conversion`."""
    optimizations = []
    if conversion in _DEFAULT_OPTIMIZATION:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if conversion.startswith("sparse_"):
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if conversion == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if calibration is not None:
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if float_layers:
            # The ops kept in float need the float kernels next to the int8 ones.
            converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if io_dtype != "float32":
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)


def convert(
    model,
    conversion="float32",
    *,
    representative_data=None,
    representative_examples=256,
    io_dtype="float32",
    float_layers=(),
    input_signature=None,
    log_path=None,
):
    """Converts a tf_keras or Keras 3 model to .tflite bytes.

    Args:
        model: a tf_keras or Keras 3 model (pruning-wrapped and QAT models accepted):
            functional, Sequential or subclassed, with one input, several or
            a dict of them.
        conversion: one of `CONVERSIONS`.
        representative_data: calibration data for `int8` on a model without
            QAT: a batched `tf.data.Dataset` (or iterable) of `(x, y)` or `x`
            batches, x being what the model is called with (e.g.
            `ImageData.train`, or `({"image": images}, labels)` batches), a
            float array, a dict of arrays, or a generator function as the
            converter wants it.
        representative_examples: examples to calibrate with, at most.
        io_dtype: input/output dtype for full-integer conversions:
            "float32" (quantize inside the model), "int8" or "uint8". Other
            conversions need "float32".
        float_layers: names of layers an `int8` conversion keeps in float
            (selective quantization, through TFLite's quantization
            debugger), for layers that lose too much in 8 bits. Needs
            `io_dtype="float32"` and a model without QAT.
        input_signature: the model's inputs as a `tf.TensorSpec` (a list or
            dict of them for several inputs), batch dimension free. Only
            needed for a subclassed model that has never been called, when
            `representative_data` is not a dataset to read them from.
        log_path: where the converter's full output goes if it fails
            (default: a new file in the temporary directory). Nothing is
            written when the conversion succeeds.

    Returns:
        The flatbuffer as bytes.

    Raises:
        ValueError: bad argument, an argument that does not apply to
            `conversion`, calibration data missing, or no input signature
            for a subclassed model.
        InputDataError: `representative_data` does not fit the model's
            inputs (other names, unbatched).
        ConversionError: the converter failed; the message names the layer
            and the fix, the log file holds the converter's output.

    Example:

    ```python
    flatbuffer = convert(model, "dynamic_int8")
    ```
    """
    check_conversion(conversion, io_dtype)
    model = prepare_for_export(model)
    float_layers = _check_combination(model, conversion, io_dtype, float_layers)
    check_representative_data(model, conversion, representative_data)
    inputs = model_inputs(model, input_signature, (representative_data,))
    if is_quantization_aware(model):
        with engine_for(model).conversion_scope(model):
            return _run_converter(model, inputs, conversion, None, io_dtype, float_layers, log_path)
    calibration = None
    if conversion in _FULL_INTEGER:
        calibration = _representative(representative_data, inputs, representative_examples)
    return _run_converter(model, inputs, conversion, calibration, io_dtype, float_layers, log_path)


def _run_converter(model, inputs, conversion, calibration, io_dtype, float_layers, log_path):
    """The flatbuffer; the converter's output captured, and a failure explained (`ConversionError`)."""
    captured = None
    try:
        with captured_output() as captured, warnings.catch_warnings():
            # A TF1-converter leftover, printed for every int8/uint8-io model
            # although TF2 takes the input ranges from calibration or QAT.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            converter = _converter(model, inputs)
            _configure(converter, conversion, calibration, io_dtype, float_layers)
            if float_layers:
                return _selectively_quantize(converter, calibration, float_layers, {layer.name for layer in model.layers})
            return converter.convert()
    except EdgekerasError:
        raise  # the data or the arguments, already explained
    except Exception as error:
        # The converter's exception holds kilobytes of MLIR: it goes to the
        # log file with its traceback, and the terminal gets the short error.
        raise conversion_error(model, conversion, error, captured.text if captured else "", log_path) from None


def _owns(segment, layer, layer_names):
    """Whether a name-scope segment of a converted op is `layer`'s.

    tf_keras scopes an op by the layer's name; Keras 3 adds a call count
    ("conv_1" for layer "conv"), unless that is another layer's name.
    """
    if segment == layer:
        return True
    return segment not in layer_names and re.fullmatch(re.escape(layer) + r"_\d+", segment) is not None


def _selectively_quantize(converter, calibration, float_layers, layer_names):
    """Full-integer conversion that leaves the ops of `float_layers` in float.

    TFLite's quantization debugger calibrates once, then quantizes the
    calibrated model with the layers' output tensors deny-listed.
    """
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        # The debugger is TensorFlow's own and runs tf.lite.Interpreter inside.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=calibration)
        tensors = [detail["name"] for detail in Interpreter(model_content=debugger.calibrated_model).get_tensor_details()]
        nodes = []
        for layer in float_layers:
            # A fused op's output is named after each Keras op folded into it
            # ("model/conv_relu/Relu6;model/conv_bn/...;model/conv/Conv2D").
            owned = [
                name for name in tensors
                if any(_owns(scope[-2], layer, layer_names) for scope in (part.split("/") for part in name.split(";"))
                       if len(scope) > 1)
            ]
            if not owned:
                raise ConversionError(
                    f"No op of layer {layer!r} is left in the converted model to keep in float: the converter fused "
                    "it into a neighbouring op. Fix: name the layer whose op it was fused into (the convolution "
                    f"before a BatchNormalization or activation) in `float_layers`. Received: float_layers={list(float_layers)!r}",
                    conversion="int8", layers=(layer,),
                )
            nodes += owned
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
        return debugger.get_nondebug_quantized_model()
