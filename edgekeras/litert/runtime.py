"""`TFLiteModel`: a .tflite file run the way it is deployed, by the LiteRT interpreter.

Batched prediction (`resize_tensor_input` once, the last short batch padded
rather than re-allocating), several threads, float images converted to the
model's quantized input type and quantized outputs back to floats through each
tensor's own (scale, zero_point). Imports no TensorFlow.
"""

import os
import sys

import numpy as np

from edgekeras.errors import EdgekerasError

__all__ = ["TFLiteFileError", "TFLiteModel", "progress_bar", "check_threads", "tflite_file_error"]


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
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(
            f"Argument `{argument}` must be a positive integer or None. "
            f"Received: {argument}={num_threads!r}"
        )


class TFLiteModel:
    """A .tflite model in the LiteRT interpreter that takes and returns floats.

    Quantized (int8/uint8) inputs are quantized from float images with the
    input tensor's scale and zero point, and quantized outputs are
    dequantized, so callers always deal with the same float arrays they would
    feed the Keras model.

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: interpreter threads (None: LiteRT's default).

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
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                "edgekeras evaluates single-input, single-output classifiers. "
                f"Received a model with {len(inputs)} inputs and {len(outputs)} outputs."
            )
        self._input = inputs[0]
        self._output = outputs[0]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_shape = tuple(int(d) for d in self._input["shape_signature"])
        self._batch_size = None

    def _allocate(self, batch_size):
        if batch_size == self._batch_size:
            return
        shape = [batch_size, *self.input_shape[1:]]
        self._interpreter.resize_tensor_input(self._input["index"], shape, strict=False)
        self._interpreter.allocate_tensors()
        self._batch_size = batch_size

    def quantize_input(self, images):
        """Converts float images to the input tensor's dtype."""
        images = np.asarray(images, dtype=np.float32)
        if self.input_dtype == np.float32:
            return images
        scale, zero_point = self._input["quantization"]
        if not scale:
            raise ValueError(f"The model's {self.input_dtype} input has no quantization scale.")
        info = np.iinfo(self.input_dtype)
        quantized = np.round(images / scale + zero_point)
        return np.clip(quantized, info.min, info.max).astype(self.input_dtype)

    def _dequantize_output(self, values):
        if self.output_dtype == np.float32:
            return values.astype(np.float32, copy=True)
        scale, zero_point = self._output["quantization"]
        return (values.astype(np.float32) - zero_point) * scale

    def predict(self, images, batch_size=None):
        """Returns the model's float outputs for a float batch of images.

        Args:
            images: float array `(n, height, width, channels)`.
            batch_size: run in chunks of this size (default: all of `images`
                at once). The last chunk is padded to keep one allocation.

        Returns:
            float32 array `(n, ...)` of outputs, dequantized if needed.
        """
        images = np.asarray(images, dtype=np.float32)
        count = images.shape[0]
        if count == 0:
            raise ValueError("Argument `images` must hold at least one image. Received an empty batch.")
        batch_size = batch_size or self._batch_size or count
        outputs = []
        for start in range(0, count, batch_size):
            chunk = images[start : start + batch_size]
            outputs.append(self._run(chunk, batch_size))
        return np.concatenate(outputs, axis=0)

    def _run(self, chunk, batch_size):
        real = chunk.shape[0]
        if real < batch_size:
            padding = np.zeros((batch_size - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding], axis=0)
        self._allocate(batch_size)
        self._interpreter.set_tensor(self._input["index"], self.quantize_input(chunk))
        self._interpreter.invoke()
        values = self._interpreter.get_tensor(self._output["index"])
        return self._dequantize_output(values[:real])

    def invoke_raw(self, prepared_input):
        """Runs one already-quantized, already-allocated input (for timing)."""
        self._interpreter.set_tensor(self._input["index"], prepared_input)
        self._interpreter.invoke()
