"""Reading a .tflite flatbuffer directly: the sparsity and sizes a file really has.

Sparsity is read from the constant weight tensors of convolutions and
fully-connected layers in the flatbuffer itself, so it is the sparsity the file
holds, whatever the training side claims. Sizes are reported raw and gzipped,
because a flatbuffer does not shrink from zeros alone. Imports no TensorFlow.
"""

import functools
import gzip
import os
import struct

import numpy as np

from edgekeras.runtime.model import tflite_file_error

__all__ = ["tflite_sparsity", "weight_sparsity", "gzip_size", "file_sizes"]


# Operators whose filter (input 1) holds the weights that pruning zeroes.
_WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


# Operators that only re-encode a constant (dequantize fp16/int8, densify a
# sparse tensor); the weights are found by following them back.
_PASS_THROUGH_OPS = {"DEQUANTIZE", "DENSIFY"}


def _read_flatbuffer(model):
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    else:
        with open(os.fspath(model), "rb") as handle:
            data = handle.read()
    # A flatbuffer is not verified when read from Python: check its file
    # identifier here, and `weight_sparsity` turns a failed read into a
    # TFLiteFileError.
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise tflite_file_error(model, "no TFL3 file identifier")
    return schema, schema.Model.GetRootAsModel(data, 0), data


def _buffer_array(schema, model, data, tensor):
    """Returns the raw numpy values stored for a constant tensor, or None."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None:
        return None
    dtype = _dtype_table().get(tensor.Type())
    if dtype is None:
        return None
    if buffer.Offset() > 1:
        # Models over 2 GB keep buffers after the flatbuffer, addressed by offset.
        raw = np.frombuffer(data, dtype=np.uint8, count=buffer.Size(), offset=buffer.Offset())
    else:
        if buffer.DataLength() == 0:
            return None
        raw = buffer.DataAsNumpy()
    return np.frombuffer(raw.tobytes(), dtype=dtype)


@functools.cache
def _dtype_table():
    from ai_edge_litert import schema_py_generated as schema

    types = schema.TensorType
    return {
        types.FLOAT32: np.float32,
        types.FLOAT16: np.float16,
        types.INT8: np.int8,
        types.UINT8: np.uint8,
        types.INT32: np.int32,
        types.INT16: np.int16,
        types.FLOAT64: np.float64,
    }


def weight_sparsity(model):
    """Per-weight-tensor sparsity read from a .tflite flatbuffer.

    Follows each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV filter back through DEQUANTIZE and DENSIFY operators to
    the constant it is stored as. A weight counts as zero when its stored
    value equals the tensor's zero point (0 for float and for TFLite's
    symmetric int8 weights). Sparse-encoded tensors (EXPERIMENTAL_SPARSITY)
    store only their non-zero blocks, so their zeros are the dense size minus
    the stored non-zeros.

    Args:
        model: a .tflite path or its bytes.

    Returns:
        A dict `{tensor_name: (zeros, total)}`.

    Raises:
        TFLiteFileError: `model` is not a valid TFLite flatbuffer.
    """
    schema, root, data = _read_flatbuffer(model)
    try:
        return _weight_sparsity(schema, root, data)
    except (struct.error, IndexError, TypeError, ValueError) as error:  # offsets past the end of a damaged file
        raise tflite_file_error(model, f"{type(error).__name__}: {error}") from error


def _weight_sparsity(schema, root, data):
    op_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = []
    for index in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(index)
        codes.append(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    stats = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        producers = {}
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            for output in operator.OutputsAsNumpy() if operator.OutputsLength() else []:
                producers[int(output)] = operator
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            name = codes[operator.OpcodeIndex()]
            if name not in _WEIGHT_OPS or operator.InputsLength() <= _WEIGHT_OPS[name]:
                continue
            index = int(operator.Inputs(_WEIGHT_OPS[name]))
            for _ in range(4):
                producer = producers.get(index)
                if producer is None or codes[producer.OpcodeIndex()] not in _PASS_THROUGH_OPS:
                    break
                index = int(producer.Inputs(0))
            tensor = subgraph.Tensors(index)
            values = _buffer_array(schema, root, data, tensor)
            if values is None:
                continue
            total = int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else values.size
            zero_point = 0
            quantization = tensor.Quantization()
            if quantization is not None and quantization.ZeroPointLength() == 1:
                zero_point = int(quantization.ZeroPoint(0))
            nonzero = int(np.count_nonzero(values != zero_point))
            tensor_name = tensor.Name().decode("utf-8", "replace")
            stats[tensor_name] = (total - nonzero, total)
    return stats


def tflite_sparsity(model):
    """Fraction of zeros over all conv/dense weights of a .tflite file.

    Args:
        model: a .tflite path or its bytes.

    Returns:
        A float in [0, 1]; 0.0 for a model without such weights.

    Example:

    ```python
    tflite_sparsity("pruned_int8.tflite")  # e.g. 0.74
    ```
    """
    stats = weight_sparsity(model).values()
    total = sum(t for _, t in stats)
    return sum(z for z, _ in stats) / total if total else 0.0


def gzip_size(data):
    """Size in bytes of `data` compressed with gzip at level 9.

    Args:
        data: bytes (e.g. a .tflite flatbuffer).

    Returns:
        The compressed size, in bytes: what a download of the file costs.

    Example:

    ```python
    gzip_size(open("model.tflite", "rb").read())
    ```
    """
    return len(gzip.compress(bytes(data), compresslevel=9, mtime=0))


def file_sizes(path):
    """Returns `(size_bytes, gzip_bytes)` of a file.

    Args:
        path: the file.

    Returns:
        Its size and its size after gzip -9, in bytes.

    Example:

    ```python
    size_bytes, gzip_bytes = file_sizes("model.tflite")
    ```
    """
    with open(os.fspath(path), "rb") as handle:
        data = handle.read()
    return len(data), gzip_size(data)
