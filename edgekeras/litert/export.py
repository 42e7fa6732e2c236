"""TFLite export: every deployable variant, written atomically and verified.

A *conversion* turns one trained tf_keras model into one .tflite flatbuffer:

| conversion       | what the converter does                                        |
| ---------------- | -------------------------------------------------------------- |
| `float32`        | no optimization                                                |
| `float16`        | weights stored as float16 (dequantized at load)                |
| `dynamic_int8`   | weights int8, activations float (dynamic-range quantization)   |
| `int8`           | full-integer: weights and activations int8, calibrated on a    |
|                  | representative dataset; input/output float32, int8 or uint8    |
| `sparse_float32` | float32 with sparse weight encoding (`EXPERIMENTAL_SPARSITY`)  |
|                  | so XNNPACK's sparse kernels can be used                        |

A quantization-aware (TFMOT `quantize_apply`-ed) model carries its own
quantization ranges, so for it `int8` needs no representative
dataset, and float conversions are refused (they would keep fake-quant ops).
A model still wrapped for pruning (TFMOT `PruneLowMagnitude`) is stripped
first, so what comes out of `fit` can be exported as is.

Every file is converted in memory, written to a temporary file beside its
destination, loaded from that file by the LiteRT interpreter, run on a batch
and compared with the Keras model (top-1 agreement, max abs difference of the
outputs). Only then is it renamed into place: a failed conversion or a
broken file never leaves anything at the destination.

Example:

```python
from edgekeras.litert import export_tflite

exported = export_tflite(model, "runs/demo/int8.tflite", "int8",
                         representative_data=data.train, verify_data=data.validation)
print(exported.verification.top1_agreement, exported.gzip_bytes)
```
"""

import dataclasses
import os
import time
import warnings

import numpy as np
import tensorflow as tf

from edgekeras.choices import CONVERSIONS, IO_DTYPES
from edgekeras.compat import check_model
from edgekeras.data import representative_dataset
from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_path
from edgekeras.litert.flatbuffer import gzip_size
from edgekeras.litert.runtime import TFLiteModel
from edgekeras.models import is_pruning_wrapped, is_quantization_aware

__all__ = [
    "CONVERSIONS",
    "IO_DTYPES",
    "ExportError",
    "Verification",
    "ExportedModel",
    "convert",
    "verify",
    "export_tflite",
    "prepare_for_export",
    "check_float_layers",
]

_FLOAT_EXACT = ("float32", "sparse_float32")
_NEEDS_CALIBRATION = ("int8",)
_QAT_CONVERSIONS = ("int8",)
class ExportError(EdgekerasError, RuntimeError):
    """A conversion failed, or its file did not load or run in LiteRT."""


@dataclasses.dataclass
class Verification:
    """How a .tflite file compares with the Keras model it came from.

    Attributes:
        examples: images compared.
        top1_agreement: fraction of images where both predict the same class.
        max_abs_diff: largest absolute difference of the (dequantized)
            outputs.
    """

    examples: int
    top1_agreement: float
    max_abs_diff: float


@dataclasses.dataclass
class ExportedModel:
    """One verified .tflite file.

    Attributes:
        name: variant name (the file's stem by default).
        conversion: one of `CONVERSIONS`.
        path: where the file was written.
        size_bytes: file size.
        gzip_bytes: file size after gzip -9.
        io_dtype: input/output dtype of the file.
        verification: the `Verification` done right after conversion.
        seconds: conversion + verification time.
    """

    name: str
    conversion: str
    path: str
    size_bytes: int
    gzip_bytes: int
    io_dtype: str
    verification: Verification
    seconds: float

    def to_dict(self):
        return dataclasses.asdict(self)


def prepare_for_export(model):
    """Returns `model` ready for the converter (pruning wrappers stripped).

    Args:
        model: a tf_keras model.

    Returns:
        `model` itself, or a copy without pruning wrappers that holds the
        same (sparse) weights.
    """
    check_model(model)
    if is_pruning_wrapped(model):
        import tensorflow_model_optimization as tfmot

        return tfmot.sparsity.keras.strip_pruning(model)
    return model


def _check_conversion(conversion, io_dtype):
    if conversion not in CONVERSIONS:
        raise ValueError(
            f"Argument `conversion` must be one of {', '.join(CONVERSIONS)}. "
            f"Received: conversion={conversion!r}"
        )
    if io_dtype not in IO_DTYPES:
        raise ValueError(
            f"Argument `io_dtype` must be one of {', '.join(IO_DTYPES)}. Received: io_dtype={io_dtype!r}"
        )
    if io_dtype != "float32" and conversion not in _NEEDS_CALIBRATION:
        raise ValueError(
            f"Argument `io_dtype` can only be int8 or uint8 for full-integer "
            f"conversions ({', '.join(_NEEDS_CALIBRATION)}). Received: "
            f"io_dtype={io_dtype!r} with conversion={conversion!r}"
        )


def _representative(representative_data, num_examples):
    if representative_data is None:
        return None
    if callable(representative_data) and not isinstance(representative_data, tf.data.Dataset):
        return representative_data
    if isinstance(representative_data, np.ndarray):
        images = np.asarray(representative_data, np.float32)[:num_examples]

        def generate():
            for image in images:
                yield [image[None, ...]]

        return generate
    return representative_dataset(representative_data, num_examples)


def _converter(model):
    """A converter fed by one concrete inference function of `model`.

    `from_keras_model` first writes and re-reads a SavedModel: about 10 s for
    a MobileNetV2 on this CPU. Freezing one concrete function of
    `model(x, training=False)` gives the same graph in under a second.
    """
    specs = [tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype, name=f"input_{i}") for i, tensor in enumerate(model.inputs)]

    @tf.function
    def serve(*inputs):
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    function = serve.get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([function])


def convert(
    model,
    conversion="float32",
    *,
    representative_data=None,
    representative_examples=256,
    io_dtype="float32",
    float_layers=(),
):
    """Converts a tf_keras model to .tflite bytes.

    Args:
        model: a tf_keras model (pruning-wrapped and QAT models accepted).
        conversion: one of `CONVERSIONS`.
        representative_data: calibration images for `int8` on
            a model without QAT: a batched `tf.data.Dataset` of `(images,
            labels)` or images (e.g. `ImageData.train`), a float array, or a
            generator function as the converter wants it.
        representative_examples: images to calibrate with, at most.
        io_dtype: input/output dtype for full-integer conversions:
            "float32" (quantize inside the model), "int8" or "uint8".
        float_layers: names of layers an `int8` conversion keeps in float
            (selective quantization, through TFLite's quantization
            debugger). For layers that lose too much in 8 bits: in ImageNet
            MobileNetV2, `expanded_conv_depthwise` has input channels that
            were dead on ImageNet (BatchNorm variance ~0, so its folded
            weights are ~25x larger) but fire on other data; quantizing it
            cost 4.9 pp of CIFAR-10 accuracy, keeping it float 1.0 pp.
            Needs `io_dtype="float32"` and a model without QAT.

    Returns:
        The flatbuffer as bytes.

    Raises:
        ValueError: bad argument, or calibration data missing.
        ExportError: the converter failed.

    Example:

    ```python
    flatbuffer = convert(model, "dynamic_int8")
    ```
    """
    _check_conversion(conversion, io_dtype)
    model = prepare_for_export(model)
    quantization_aware = is_quantization_aware(model)
    float_layers = _check_float_layers(model, float_layers, conversion, io_dtype, quantization_aware)
    if quantization_aware and conversion not in _QAT_CONVERSIONS:
        raise ValueError(
            f"Argument `conversion` must be one of {', '.join(_QAT_CONVERSIONS)} for a "
            f"quantization-aware (QAT) model. Received: conversion={conversion!r}. "
            "Export the float model before `quantize_apply` for float variants."
        )
    calibration = None
    if conversion in _NEEDS_CALIBRATION and not quantization_aware:
        calibration = _representative(representative_data, representative_examples)
        if calibration is None:
            raise ValueError(
                f"Argument `representative_data` is required for conversion={conversion!r} "
                "of a model without quantization-aware training: pass calibration images "
                "from the training split, e.g. `representative_data=data.train`. "
                "Received: representative_data=None"
            )

    converter = _converter(model)
    optimizations = []
    if conversion in ("float16", "dynamic_int8", "int8"):
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
            converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if io_dtype != "float32":
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)
    try:
        with warnings.catch_warnings():
            # A TF1-converter leftover, printed for every int8/uint8-io model
            # although TF2 takes the input ranges from calibration or QAT.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            if float_layers:
                return _selectively_quantize(converter, calibration, float_layers)
            return converter.convert()
    except Exception as error:
        raise ExportError(
            f"TFLite conversion {conversion!r} of model {model.name!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def check_float_layers(float_layers):
    """Returns `float_layers` as a tuple of layer names, or raises a clear ValueError."""
    if isinstance(float_layers, str) or not all(isinstance(name, str) and name for name in float_layers):
        raise ValueError(
            "Argument `float_layers` must be a list of layer names, e.g. ['expanded_conv_depthwise']. "
            f"Received: float_layers={float_layers!r}"
        )
    return tuple(float_layers)


def _check_float_layers(model, float_layers, conversion, io_dtype, quantization_aware):
    float_layers = check_float_layers(float_layers)
    if not float_layers:
        return ()
    if conversion != "int8" or quantization_aware or io_dtype != "float32":
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


def _selectively_quantize(converter, calibration, float_layers):
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
            owned = [name for name in tensors if any(part.split("/")[-2:-1] == [layer] for part in name.split(";"))]
            if not owned:
                raise ExportError(f"No op of layer {layer!r} is left in the converted model to keep in float.")
            nodes += owned
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
        return debugger.get_nondebug_quantized_model()


def _verification_images(model, verify_data, count):
    if verify_data is None:
        # Without data, a fixed random batch still proves the file loads, runs
        # and computes the same function.
        shape = [count, *model.input_shape[1:]]
        return np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    if isinstance(verify_data, np.ndarray):
        return np.asarray(verify_data[:count], np.float32)
    images = []
    collected = 0
    for batch in verify_data:
        batch_images = batch[0] if isinstance(batch, (tuple, list)) else batch
        batch_images = np.asarray(batch_images, np.float32)
        images.append(batch_images)
        collected += batch_images.shape[0]
        if collected >= count:
            break
    if not images:
        raise ValueError("Argument `verify_data` yielded no images.")
    return np.concatenate(images)[:count]


def verify(tflite, model, images, *, num_threads=None):
    """Compares a .tflite model with the Keras model on `images`.

    Args:
        tflite: a .tflite path, its bytes or a `TFLiteModel`.
        model: the tf_keras model it was converted from.
        images: float array of input images.
        num_threads: interpreter threads.

    Returns:
        A `Verification`.

    Raises:
        ExportError: the file does not run or its outputs have the wrong
            shape or are not finite.

    Example:

    ```python
    verify("float32.tflite", model, images).max_abs_diff
    ```
    """
    model = prepare_for_export(model)
    images = np.asarray(images, np.float32)
    try:
        runner = tflite if isinstance(tflite, TFLiteModel) else TFLiteModel(tflite, num_threads)
        lite = runner.predict(images)
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"The .tflite file does not run in LiteRT: {error}") from error
    expected = np.asarray(model(images, training=False), np.float32)
    if lite.shape != expected.shape:
        raise ExportError(
            f"The .tflite output shape {lite.shape} differs from the Keras model's {expected.shape}."
        )
    if not np.all(np.isfinite(lite)):
        raise ExportError("The .tflite model produced non-finite outputs.")
    flat_lite = lite.reshape(lite.shape[0], -1)
    flat_expected = expected.reshape(expected.shape[0], -1)
    return Verification(
        examples=int(images.shape[0]),
        top1_agreement=float(np.mean(flat_lite.argmax(1) == flat_expected.argmax(1))),
        max_abs_diff=float(np.max(np.abs(flat_lite - flat_expected))),
    )


def export_tflite(
    model,
    path,
    conversion="float32",
    *,
    representative_data=None,
    representative_examples=256,
    io_dtype="float32",
    verify_data=None,
    verify_examples=64,
    min_agreement=None,
    float_tolerance=1e-3,
    name=None,
    float_layers=(),
):
    """Converts `model`, verifies the file in LiteRT and writes it atomically.

    Args:
        model: a tf_keras model (pruning-wrapped and QAT models accepted).
        path: destination .tflite path; its directory is created.
        conversion: one of `CONVERSIONS`.
        representative_data: calibration data for full-integer conversions
            (see `convert`).
        representative_examples: calibration images, at most.
        io_dtype: "float32", "int8" or "uint8" (full-integer conversions).
        verify_data: images to verify on: a batched dataset, a float array,
            or None for a fixed random batch.
        verify_examples: number of images to verify on.
        min_agreement: if set, raise `ExportError` (and write nothing) when
            top-1 agreement with Keras is below it.
        float_tolerance: float32 conversions must match Keras within this
            (relative to the largest output magnitude, at least 1), or the
            file is rejected.
        name: variant name for reports (default: the file's stem).
        float_layers: layers an `int8` conversion keeps in float (see
            `convert`).

    Returns:
        An `ExportedModel`.

    Raises:
        ValueError: a bad argument.
        ExportError: conversion or verification failed; nothing is written.

    Example:

    ```python
    export_tflite(model, "out/float16.tflite", "float16", verify_data=data.validation)
    ```
    """
    check_model(model)
    _check_conversion(conversion, io_dtype)
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"Argument `min_agreement` must be in [0, 1] or None. Received: min_agreement={min_agreement!r}")
    if isinstance(verify_examples, bool) or not isinstance(verify_examples, int) or verify_examples < 1:
        raise ValueError(
            f"Argument `verify_examples` must be a positive integer. Received: verify_examples={verify_examples!r}"
        )
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"Argument `path` must end with .tflite. Received: path={path!r}")
    start = time.perf_counter()
    model = prepare_for_export(model)
    flatbuffer = convert(
        model,
        conversion,
        representative_data=representative_data,
        representative_examples=representative_examples,
        io_dtype=io_dtype,
        float_layers=float_layers,
    )
    images = _verification_images(model, verify_data, verify_examples)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(flatbuffer)
            handle.flush()
            os.fsync(handle.fileno())
        # Verify the very bytes on disk before they take the final name.
        verification = verify(temporary, model, images)
        if conversion in _FLOAT_EXACT:
            scale = max(1.0, float(np.max(np.abs(np.asarray(model(images, training=False))))))
            if verification.max_abs_diff > float_tolerance * scale:
                raise ExportError(
                    f"The {conversion} file differs from the Keras model by "
                    f"{verification.max_abs_diff:.3g} (tolerance {float_tolerance * scale:.3g}); "
                    "the conversion is broken, so it was not written."
                )
        if min_agreement is not None and verification.top1_agreement < min_agreement:
            raise ExportError(
                f"The {conversion} file agrees with the Keras model on "
                f"{verification.top1_agreement:.1%} of {verification.examples} images, "
                f"below min_agreement={min_agreement}; it was not written."
            )
    return ExportedModel(
        name=name or os.path.splitext(os.path.basename(path))[0],
        conversion=conversion,
        path=path,
        size_bytes=len(flatbuffer),
        gzip_bytes=gzip_size(flatbuffer),
        io_dtype=io_dtype if conversion in _NEEDS_CALIBRATION else "float32",
        verification=verification,
        seconds=time.perf_counter() - start,
    )
