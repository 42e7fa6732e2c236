"""LiteRT: converting models to .tflite, running the files, reading and evaluating them.

- `conversion`: `convert`, one model to one .tflite flatbuffer in memory, for every conversion.
- `signature`: a model's inputs (one tensor, several, a dict; subclassed models traced from
  their first call, their data or an `input_signature`) and how batches of data map onto them.
- `diagnosis`: `ConversionError`, a failed conversion as the layer at fault and the fix, the
  converter's dump in a log file.
- `trial`: `trial_conversion`, the untrained model converted once per conversion before training.
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
    ConversionError,
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
from edgekeras.runtime import TFLiteFileError, TFLiteModel, progress_bar
from edgekeras.litert.signature import InputDataError, check_input_signature
from edgekeras.litert.trial import trial_conversion

__all__ = [
    "Accuracy",
    "CONVERSIONS",
    "ConversionError",
    "Evaluation",
    "ExportError",
    "ExportedModel",
    "IO_DTYPES",
    "InputDataError",
    "Latency",
    "TFLiteFileError",
    "TFLiteModel",
    "Verification",
    "applicable_options",
    "check_conversion",
    "check_float_layers",
    "check_input_signature",
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
    "trial_conversion",
    "verify",
    "weight_sparsity",
]
