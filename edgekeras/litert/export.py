"""TFLite export: every deployable variant, written atomically and verified.

`export_tflite` is the one function every export goes through (the
`TFLiteExport` callback, `edgekeras run` and `edgekeras tune` all call it). It
takes the export settings of a whole run and applies them per conversion
(`applicable_options`): `io_dtype` sets the input/output dtype of `int8` files
only, and `float_layers` applies to post-training `int8` only. The conversion
itself is `edgekeras.litert.conversion` (see its table of conversions).

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

import numpy as np

from edgekeras.arguments import check_positive_int
from edgekeras.backend import check_model
from edgekeras.io import atomic_path
from edgekeras.litert.conversion import (
    CONVERSIONS,
    IO_DTYPES,
    ExportError,
    applicable_options,
    check_conversion,
    convert,
    prepare_for_export,
)
from edgekeras.litert.flatbuffer import gzip_size
from edgekeras.runtime import TFLiteModel
from edgekeras.litert.signature import model_inputs, sample_inputs

__all__ = [
    "CONVERSIONS",
    "IO_DTYPES",
    "ExportError",
    "ExportedModel",
    "Verification",
    "export_tflite",
    "verify",
]

# Conversions that must compute the Keras model's function to float precision.
_FLOAT_EXACT = ("float32", "sparse_float32")


@dataclasses.dataclass
class Verification:
    """How a .tflite file compares with the Keras model it came from.

    Attributes:
        examples: images compared.
        top1_agreement: fraction of images where both predict the same class.
        max_abs_diff: largest absolute difference of the (dequantized)
            outputs.
        max_abs_output: largest absolute output of the Keras model, the
            scale `max_abs_diff` is judged against.
    """

    examples: int
    top1_agreement: float
    max_abs_diff: float
    max_abs_output: float = 0.0  # absent from runs recorded before it existed


@dataclasses.dataclass
class ExportedModel:
    """One verified .tflite file.

    Attributes:
        name: variant name (the file's stem by default).
        conversion: one of `CONVERSIONS`.
        path: where the file was written.
        size_bytes: file size.
        gzip_bytes: file size after gzip -9.
        io_dtype: input/output dtype of the file ("float32" for every
            conversion but `int8`).
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
        """Returns the fields as a JSON-able dict (the verification as a nested dict)."""
        return dataclasses.asdict(self)


# Verification runs both models this many images at a time: all 512 of a
# run's verification images at once made LiteRT allocate (and Keras compute)
# activations for 512 at 128 px, 2.5 GB above the rest of the export.
VERIFY_BATCH = 64


def _feed(runner, inputs, arrays):
    """The flat arrays as `runner` takes them: by name when the file's inputs carry the model's names."""
    if sorted(runner.input_names) == sorted(inputs.names):
        return inputs.by_name(arrays)
    return arrays


def verify(tflite, model, images, *, num_threads=None, input_signature=None):
    """Compares a .tflite model with the Keras model on `images`.

    Args:
        tflite: a .tflite path, its bytes or a `TFLiteModel`.
        model: the Keras model it was converted from.
        images: the inputs to compare on, as the model is called with them:
            a float array, or a list or dict of arrays for several inputs.
        num_threads: interpreter threads.
        input_signature: the model's inputs, for a subclassed model that has
            never been called (see `convert`).

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
    inputs = model_inputs(model, input_signature, (images,))
    arrays = inputs.flatten(images, "images")
    try:
        runner = tflite if isinstance(tflite, TFLiteModel) else TFLiteModel(tflite, num_threads)
        lite = runner.predict(_feed(runner, inputs, arrays), batch_size=min(VERIFY_BATCH, len(arrays[0])))
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"The .tflite file does not run in LiteRT: {error}") from error
    expected = np.concatenate([
        np.asarray(model(inputs.pack([array[start : start + VERIFY_BATCH] for array in arrays]), training=False), np.float32)
        for start in range(0, len(arrays[0]), VERIFY_BATCH)
    ])
    if lite.shape != expected.shape:
        raise ExportError(
            f"The .tflite output shape {lite.shape} differs from the Keras model's {expected.shape}."
        )
    if not np.all(np.isfinite(lite)):
        raise ExportError("The .tflite model produced non-finite outputs.")
    flat_lite = lite.reshape(lite.shape[0], -1)
    flat_expected = expected.reshape(expected.shape[0], -1)
    return Verification(
        examples=int(arrays[0].shape[0]),
        top1_agreement=float(np.mean(flat_lite.argmax(1) == flat_expected.argmax(1))),
        max_abs_diff=float(np.max(np.abs(flat_lite - flat_expected))),
        max_abs_output=float(np.max(np.abs(flat_expected))),
    )


def _verification_inputs(inputs, verify_data, count):
    """Up to `count` examples from `verify_data` as the model is called, or a fixed random batch without it."""
    if verify_data is None:
        # Without data, a fixed random batch still proves the file loads, runs
        # and computes the same function.
        return inputs.pack(inputs.random(count))
    return inputs.pack(sample_inputs(verify_data, inputs, count, "verify_data"))


def _check_export_arguments(model, path, conversion, io_dtype, min_agreement, verify_examples):
    """Checks what `export_tflite` needs before converting; returns `path` as a string."""
    check_model(model)
    check_conversion(conversion, io_dtype)
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"Argument `min_agreement` must be in [0, 1] or None. Received: min_agreement={min_agreement!r}")
    check_positive_int(verify_examples, "verify_examples")
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"Argument `path` must end with .tflite. Received: path={path!r}")
    return path


def _check_verification(verification, conversion, float_tolerance, min_agreement):
    """Raises ExportError when the file strays from the Keras model by more than allowed."""
    if conversion in _FLOAT_EXACT:
        # The scale comes from the outputs `verify` computed batch by batch:
        # calling the model on all verification images at once held every
        # layer's activations for all of them (1.2-1.5 GiB for 256 images of
        # MobileNetV2 at 96 px, the demo's peak).
        scale = max(1.0, verification.max_abs_output)
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


def _write_synced(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def export_tflite(
    model, path, conversion="float32", *, representative_data=None, representative_examples=256, io_dtype="float32",
    verify_data=None, verify_examples=64, min_agreement=None, float_tolerance=1e-3, name=None, float_layers=(),
    input_signature=None, log_path=None,
):
    """Converts `model`, verifies the file in LiteRT and writes it atomically.

    Args:
        model: a tf_keras or Keras 3 model (pruning-wrapped and QAT models accepted):
            functional, Sequential or subclassed, single-, multi- or
            dict-input.
        path: destination .tflite path; its directory is created.
        conversion: one of `CONVERSIONS`.
        representative_data: calibration data for post-training `int8` (see
            `convert`); a quantization-aware model needs none.
        representative_examples: calibration images, at most.
        io_dtype: input/output dtype of `int8` files: "float32", "int8" or
            "uint8". Every other conversion writes a float32-I/O file,
            whatever this says.
        verify_data: inputs to verify on: a batched dataset of `(x, y)` or
            `x` batches (x as the model is called: an array, a tuple or a
            dict), a float array, or None for a fixed random batch.
        verify_examples: number of images to verify on.
        min_agreement: if set, raise `ExportError` (and write nothing) when
            top-1 agreement with Keras is below it.
        float_tolerance: float32 conversions must match Keras within this
            (relative to the largest output magnitude, at least 1), or the
            file is rejected.
        name: variant name for reports (default: the file's stem).
        float_layers: layers a post-training `int8` conversion keeps in float
            (see `convert`); ignored for other conversions and for a
            quantization-aware model, which carries its own ranges.
        input_signature: the model's inputs (see `convert`), for a
            subclassed model never called and without a dataset to read them.
        log_path: where the converter's output goes if it fails (`convert`).

    Returns:
        An `ExportedModel`.

    Raises:
        ValueError: a bad argument, `float_layers` for post-training `int8`
            with integer I/O or naming layers the model lacks, a float
            conversion of a QAT model, calibration data or input signature
            missing; `InputDataError` for data that does not fit the model.
        ExportError: verification failed, or the converter refused the model
            (`ConversionError`, naming the layer and the fix); nothing is
            written.

    Example:

    ```python
    export_tflite(model, "out/float16.tflite", "float16", verify_data=data.validation)
    ```
    """
    path = _check_export_arguments(model, path, conversion, io_dtype, min_agreement, verify_examples)
    start = time.perf_counter()
    model = prepare_for_export(model)
    io_dtype, float_layers = applicable_options(model, conversion, io_dtype, float_layers)
    inputs = model_inputs(model, input_signature, (representative_data, verify_data))
    flatbuffer = convert(
        model, conversion, representative_data=representative_data, representative_examples=representative_examples,
        io_dtype=io_dtype, float_layers=float_layers, input_signature=inputs, log_path=log_path,
    )
    images = _verification_inputs(inputs, verify_data, verify_examples)
    with atomic_path(path) as temporary:
        _write_synced(temporary, flatbuffer)
        # Verify the very bytes on disk before they take the final name.
        verification = verify(temporary, model, images, input_signature=inputs)
        _check_verification(verification, conversion, float_tolerance, min_agreement)
    return ExportedModel(
        name=name or os.path.splitext(os.path.basename(path))[0], conversion=conversion, path=path,
        size_bytes=len(flatbuffer), gzip_bytes=gzip_size(flatbuffer), io_dtype=io_dtype,
        verification=verification, seconds=time.perf_counter() - start,
    )
