"""LiteRT: converting models to .tflite, running the files, reading and evaluating them.

- `convert`: `convert`, one model to one .tflite flatbuffer in memory, for every conversion.
- `export`: `export_tflite`, the one export function: settings applied per conversion,
  the file verified in LiteRT and written atomically.
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
from edgekeras.litert.conversion import (
    CONVERSIONS,
    IO_DTYPES,
    ExportError,
    applicable_options,
    check_conversion,
    check_float_layers,
    check_representative_data,
    convert,
    prepare_for_export,
)
from edgekeras.litert.export import ExportedModel, Verification, export_tflite, verify
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
    "applicable_options",
    "check_conversion",
    "check_float_layers",
    "check_representative_data",
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
