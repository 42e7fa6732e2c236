"""`TFLiteModel`: a .tflite file run the way it is deployed, by the LiteRT interpreter.

Part of the device side (`edgekeras.runtime`): numpy and ai-edge-litert only.

Batched prediction (`resize_tensor_input` once, the last short batch padded
rather than re-allocating), several threads, float images converted to the
model's quantized input type and quantized outputs back to floats through each
tensor's own (scale, zero_point). Imports no TensorFlow.
"""

import os
import sys

import numpy as np

from edgekeras.arguments import check_positive_int
from edgekeras.errors import EdgekerasError

__all__ = ["TFLiteFileError", "TFLiteModel", "progress_bar", "check_threads", "check_tflite_bytes", "tflite_file_error"]

# A TFLite flatbuffer carries this file identifier at bytes 4-8.
_TFLITE_IDENTIFIER = b"TFL3"


def progress_bar(iterable, *, total=None, description="", enabled=True):
    """Wraps `iterable` in a tqdm progress bar on stderr when `enabled`.

    Args:
        iterable: what to iterate over.
        total: its length, if known.
        description: the bar's label.
        enabled: False returns `iterable` itself (and imports no tqdm).

    Returns:
        An iterable over the same items.

    Example:

    ```python
    for batch in progress_bar(dataset, total=100, description="evaluate"):
        ...
    ```
    """
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stderr, leave=False)


class TFLiteFileError(EdgekerasError, ValueError):
    """A .tflite file (or buffer) is not a TFLite model: truncated, corrupted or of another format."""


def tflite_file_error(model, error, argument="model"):
    """Returns the `TFLiteFileError` for a file or buffer LiteRT could not read.

    Args:
        model: the path or bytes that were read.
        error: what went wrong, for the message.
        argument: the argument that held `model`, for the message.

    Returns:
        A `TFLiteFileError` to raise.

    Example:

    ```python
    raise tflite_file_error(path, error) from error
    ```
    """
    received = f"{len(model)} bytes" if isinstance(model, (bytes, bytearray)) else repr(os.fspath(model))
    return TFLiteFileError(
        f"Argument `{argument}` is not a valid .tflite model ({error}). Received: {argument}={received}. "
        "The file may be truncated, corrupted or of another format: export it again "
        "(edgekeras.litert.export_tflite writes files atomically) or copy it again."
    )


def check_tflite_bytes(data, model, argument="model"):
    """Raises `TFLiteFileError` unless `data` starts like a TFLite flatbuffer.

    A cheap check of the file identifier, for tools that do not load the
    interpreter (e.g. the C-array export).

    Args:
        data: the file's bytes.
        model: its path (or the bytes), for the message.
        argument: the argument that held it, for the message.

    Example:

    ```python
    check_tflite_bytes(open("model.tflite", "rb").read(), "model.tflite")
    ```
    """
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise tflite_file_error(model, f"no {_TFLITE_IDENTIFIER.decode()} file identifier", argument)


def check_threads(num_threads, argument="num_threads"):
    """Raises a ValueError naming `argument` unless `num_threads` is a positive integer or None.

    Args:
        num_threads: interpreter threads, or None for LiteRT's default.
        argument: the argument's name, for the message.

    Raises:
        ValueError: `num_threads` is not a positive integer or None.

    Example:

    ```python
    check_threads(2)
    ```
    """
    check_positive_int(num_threads, argument, allow_none=True)


def _input_name(detail):
    """An input's name as the model was called with it: "serving_default_image:0" -> "image"."""
    name = detail["name"]
    name = name[len("serving_default_"):] if name.startswith("serving_default_") else name
    return name.rsplit(":", 1)[0]


def _quantize(values, detail, dtype):
    """Values in the input tensor's dtype: float inputs cast, quantized ones by their scale and zero point."""
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f" or not scale:
        # A float input, or a plain integer one (ids, not a quantized image).
        return np.asarray(values).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    quantized = np.round(np.asarray(values, np.float32) / scale + zero_point)
    return np.clip(quantized, info.min, info.max).astype(dtype)


class TFLiteModel:
    """A .tflite model in the LiteRT interpreter that takes and returns floats.

    Quantized (int8/uint8) inputs are quantized from float images with the
    input tensor's scale and zero point, and quantized outputs are
    dequantized, so callers always deal with the same float arrays they would
    feed the Keras model. A model with several inputs takes a list of arrays
    (in the file's input order, `input_names`) or a dict keyed by input name,
    as the Keras model it came from does (edgekeras writes a file's inputs
    in the model's own order, named after its dict keys or Input names).

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: interpreter threads (None: LiteRT's default).

    Attributes:
        input_names: the inputs' names, in the file's order (dict keys of a
            dict-input model).
        input_shape, input_dtype: shape (batch -1) and dtype of the first
            input; `input_shapes`, `input_dtypes` list them all.
        output_dtype: the output's dtype.

    Raises:
        FileNotFoundError: `model` is a path to nothing.
        TFLiteFileError: `model` is not a valid TFLite flatbuffer (e.g. a
            truncated or corrupted file).

    Example:

    ```python
    probabilities = TFLiteModel("model.tflite", num_threads=2).predict(images)
    ```
    """

    def __init__(self, model, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        check_threads(num_threads)
        # LiteRT raises a ValueError for a corrupted flatbuffer that names
        # neither the file nor a fix.
        try:
            if isinstance(model, (bytes, bytearray)):
                self.path = None
                self._interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
            else:
                self.path = os.fspath(model)
                if not os.path.isfile(self.path):
                    raise FileNotFoundError(
                        f"Argument `model` must be a .tflite file or its bytes. "
                        f"Received: model={self.path!r}, which does not exist."
                    )
                self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        except ValueError as error:
            raise tflite_file_error(model, error) from error
        self._inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(outputs) != 1:
            raise ValueError(
                f"edgekeras evaluates single-output classifiers. Received a model with {len(outputs)} outputs."
            )
        self._output = outputs[0]
        self.input_names = [_input_name(detail) for detail in self._inputs]
        self.input_dtypes = [np.dtype(detail["dtype"]) for detail in self._inputs]
        self.input_shapes = [tuple(int(d) for d in detail["shape_signature"]) for detail in self._inputs]
        self.input_dtype, self.input_shape = self.input_dtypes[0], self.input_shapes[0]
        self.output_dtype = np.dtype(self._output["dtype"])
        self._batch_size = None

    def allocate(self, batch_size):
        """Sizes the input tensors for `batch_size` examples (once per size), as `predict` does."""
        if batch_size == self._batch_size:
            return
        for detail, shape in zip(self._inputs, self.input_shapes):
            self._interpreter.resize_tensor_input(detail["index"], [batch_size, *shape[1:]], strict=False)
        self._interpreter.allocate_tensors()
        self._batch_size = batch_size

    def _arrays(self, inputs, argument="inputs"):
        """`inputs` (an array, a list in input order, or a dict by name) as one array per input."""
        if isinstance(inputs, dict):
            missing = [name for name in self.input_names if name not in inputs]
            if missing and not (len(inputs) == 1 == len(self.input_names)):
                raise ValueError(
                    f"Argument `{argument}` must hold the model's inputs {self.input_names}. "
                    f"Received: inputs with keys {sorted(map(str, inputs))} (missing: {missing})"
                )
            arrays = list(inputs.values()) if missing else [inputs[name] for name in self.input_names]
        elif isinstance(inputs, (list, tuple)):
            arrays = list(inputs)
        else:
            arrays = [inputs]
        if len(arrays) != len(self._inputs):
            raise ValueError(
                f"Argument `{argument}` must hold {len(self._inputs)} array(s), one per model input {self.input_names}. "
                f"Received: {len(arrays)} array(s)"
            )
        arrays = [np.asarray(array) for array in arrays]
        if any(array.shape[0] != arrays[0].shape[0] for array in arrays):
            raise ValueError(
                f"Argument `{argument}` must hold the same number of examples per input. "
                f"Received: {[array.shape[0] for array in arrays]}"
            )
        return arrays

    def _check_shapes(self, arrays, argument):
        """Raises a clear ValueError when an array is not a batch of the input's shape."""
        for array, name, shape in zip(arrays, self.input_names, self.input_shapes):
            fits = array.ndim == len(shape) and all(
                want in (-1, got) for want, got in zip(shape[1:], array.shape[1:])
            )
            if fits:
                continue
            expected = ", ".join("None" if d == -1 else str(d) for d in shape[1:])
            hint = " (an unbatched dataset? batch it, e.g. `dataset.batch(32)`)" if array.ndim == len(shape) - 1 else ""
            raise ValueError(
                f"Argument `{argument}` must hold batches of shape (batch, {expected}) for input {name!r}. "
                f"Received: shape {tuple(array.shape)}{hint}"
            )

    def check_inputs(self, inputs, argument="inputs"):
        """Raises a clear ValueError unless `inputs` is a batch the model takes.

        Args:
            inputs: one array, a list in input order, or a dict by input name.
            argument: the argument name the error message names.

        Raises:
            ValueError: wrong number of inputs, a shape that is not a batch
                of the input's shape (e.g. one unbatched example), or inputs
                holding different numbers of examples.

        Example:

        ```python
        runner.check_inputs(images, argument="dataset")
        ```
        """
        self._check_shapes(self._arrays(inputs, argument), argument)

    def quantize_input(self, images):
        """Converts float inputs (one array, a list or a dict) to the input tensors' dtypes.

        Returns:
            One array for a single-input model, else a list in input order.
        """
        arrays = [
            _quantize(array, detail, dtype) for array, detail, dtype in zip(self._arrays(images), self._inputs, self.input_dtypes)
        ]
        return arrays[0] if len(arrays) == 1 else arrays

    def _dequantize_output(self, values):
        if self.output_dtype == np.float32:
            return values.astype(np.float32, copy=True)
        scale, zero_point = self._output["quantization"]
        return (values.astype(np.float32) - zero_point) * scale

    def predict(self, images, batch_size=None):
        """Returns the model's float outputs for a batch of inputs.

        Args:
            images: a float array `(n, height, width, channels)`; for a model
                with several inputs, a list of arrays in `input_names` order
                or a dict keyed by input name.
            batch_size: run in chunks of this size (default: all of `images`
                at once). The last chunk is padded to keep one allocation.

        Returns:
            float32 array `(n, ...)` of outputs, dequantized if needed.
        """
        arrays = self._arrays(images)
        self._check_shapes(arrays, "inputs")
        count = arrays[0].shape[0]
        if count == 0:
            raise ValueError("Argument `images` must hold at least one image. Received an empty batch.")
        batch_size = batch_size or self._batch_size or count
        outputs = []
        for start in range(0, count, batch_size):
            outputs.append(self._run([array[start : start + batch_size] for array in arrays], batch_size))
        return np.concatenate(outputs, axis=0)

    def _run(self, chunks, batch_size):
        real = chunks[0].shape[0]
        if real < batch_size:
            chunks = [
                np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), dtype=chunk.dtype)], axis=0)
                for chunk in chunks
            ]
        self.allocate(batch_size)
        prepared = self.quantize_input(chunks)
        self.invoke_raw(prepared)
        values = self._interpreter.get_tensor(self._output["index"])
        return self._dequantize_output(values[:real])

    def invoke_raw(self, prepared_input):
        """Runs one already-quantized, already-allocated input (a list of them for several inputs), for timing."""
        prepared = prepared_input if isinstance(prepared_input, list) and len(self._inputs) > 1 else [prepared_input]
        for detail, array in zip(self._inputs, prepared):
            self._interpreter.set_tensor(detail["index"], array)
        self._interpreter.invoke()
