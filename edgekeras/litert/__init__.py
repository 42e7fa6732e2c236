"""LiteRT: converting models to .tflite, running the files, reading and evaluating them.

- `export`: `convert` and `export_tflite` (verified, atomic) for every conversion.
- `runtime`: `TFLiteModel`, batched LiteRT inference (no TensorFlow needed).
- `flatbuffer`: sizes and the weight sparsity a file really holds.
- `evaluate`: accuracy on a labelled dataset and batch-1 latency.
"""

from edgekeras.litert.evaluate import (
    Accuracy,
    Evaluation,
    Latency,
    evaluate_accuracy,
    evaluate_tflite,
    measure_latency,
)
from edgekeras.litert.export import (
    CONVERSIONS,
    IO_DTYPES,
    ExportedModel,
    ExportError,
    Verification,
    check_float_layers,
    convert,
    export_tflite,
    prepare_for_export,
    verify,
)
from edgekeras.litert.flatbuffer import file_sizes, gzip_size, tflite_sparsity, weight_sparsity
from edgekeras.litert.runtime import TFLiteFileError, TFLiteModel, progress_bar

__all__ = [
    "Accuracy",
    "CONVERSIONS",
    "Evaluation",
    "ExportError",
    "ExportedModel",
    "IO_DTYPES",
    "Latency",
    "TFLiteFileError",
    "TFLiteModel",
    "Verification",
    "check_float_layers",
    "convert",
    "evaluate_accuracy",
    "evaluate_tflite",
    "export_tflite",
    "file_sizes",
    "gzip_size",
    "measure_latency",
    "prepare_for_export",
    "progress_bar",
    "tflite_sparsity",
    "verify",
    "weight_sparsity",
]
