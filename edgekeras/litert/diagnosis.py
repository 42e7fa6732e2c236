"""Failed conversions explained: the Keras layer at fault and the fix, the converter's dump in a log file.

When the TFLite converter refuses a model it raises kilobytes of MLIR
diagnostics (every call site of the failing op, then the whole module) and
prints as much again from C++ to the process's stderr. `captured_output`
sends that native output to a temporary file; `conversion_error` turns the
converter's exception into a `ConversionError` of a few lines (the layer, the
op, what is wrong and the fix) and writes the dump to a log file whose path
the message gives.

The layer is found from the converter's op locations: ops are named after
the Keras name scopes they were traced in (`model/my_layer/Atan`), so the
path's components are matched against the model's layer names, nested
models' layers included and TFMOT wrappers (`quant_conv`) mapped back to the
layer they wrap.

Example:

```python
from edgekeras.litert.diagnosis import ConversionError

try:
    convert(model, "int8", representative_data=data.train)
except ConversionError as error:
    print(error.layers, error.log_path)
```
"""

import contextlib
import os
import re
import sys
import tempfile
import time
import traceback

from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_write_text

__all__ = ["ConversionError", "ExportError", "captured_output", "conversion_error", "layer_names"]

_OPS_URL = "https://ai.google.dev/edge/litert/models/ops_compatibility"
# Quoted op paths in MLIR locations: `loc("net/conv/Conv2D")`, `callsite("net/x/Atan"(...))`.
_QUOTED = re.compile(r"[\"']([^\"'\s]+)[\"']")
_FIRST_ERROR = re.compile(r"error: ([^\n]+)")


class ExportError(EdgekerasError, RuntimeError):
    """A conversion failed, or its file did not load or run in LiteRT."""


class ConversionError(ExportError):
    """The TFLite converter refused a model.

    Attributes:
        conversion: the conversion that failed.
        layers: names of the Keras layers the converter's message points at
            (empty when it names none).
        ops: the TensorFlow/TFLite ops it names.
        log_path: the file holding the converter's full output, or None.
    """

    def __init__(self, message, *, conversion, layers=(), ops=(), log_path=None):
        super().__init__(message)
        self.conversion = conversion
        self.layers = tuple(layers)
        self.ops = tuple(ops)
        self.log_path = log_path


class _Captured:
    text = ""


@contextlib.contextmanager
def captured_output():
    """Redirects the process's stdout and stderr (file descriptors 1 and 2) into memory.

    The converter prints from C++, below Python's `sys.stderr`, so only a
    redirection of the file descriptors keeps its output off the terminal.

    Yields:
        An object whose `text` holds what was printed, once the block ends.

    Example:

    ```python
    with captured_output() as captured:
        flatbuffer = converter.convert()
    ```
    """
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        for descriptor in (1, 2):
            saved.append(os.dup(descriptor))
    except OSError:  # no descriptors to redirect (an embedding host): nothing to keep off
        for original in saved:
            os.close(original)
        saved = None
    if saved is None:
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, original in zip((1, 2), saved):
                os.dup2(original, descriptor)
                os.close(original)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def layer_names(model):
    """`{name in op paths: the user's layer name}` for every layer of `model`, nested ones included.

    A TFMOT wrapper (`quant_conv`, `prune_low_magnitude_conv`) maps to the
    layer it wraps (`conv`), which is the name the user knows.

    Example:

    ```python
    layer_names(qat_model)["quant_conv"]  # "conv"
    ```
    """
    names = {}
    for layer in getattr(model, "layers", ()):
        inner = getattr(layer, "layer", None)
        names[layer.name] = inner.name if inner is not None and hasattr(inner, "name") else layer.name
        if hasattr(layer, "layers"):
            names.update(layer_names(layer))
    return names


def _op_paths(error, captured_text):
    """Op paths and op names the converter's error and output mention."""
    paths, ops = [], []
    for detail in getattr(error, "errors", None) or ():
        # ConverterError carries structured errors: the op and its call sites.
        if detail.operator.name:
            ops.append(detail.operator.name)
        paths += [call.name for call in detail.location.call if call.name]
        paths += re.findall(r'name: "([^"]+)"', str(detail.location))
    for text in (str(error), captured_text):
        paths += [match for match in _QUOTED.findall(text) if "/" in match and ".py" not in match and not match.startswith("/")]
        ops += re.findall(r"'((?:tf|tfl)\.\w+)' op", text)
    return paths, list(dict.fromkeys(ops))


def _layers_at(model, paths):
    """The user's layer names the op paths point at, in order of first mention."""
    names = layer_names(model)
    found = []
    for path in paths:
        for part in path.split(";"):
            components = part.split("/")
            if components and components[0] == model.name:
                components = components[1:]
            # The deepest component that is a layer: ops of a nested model's
            # layers are scoped `outer/submodel/layer/Op`.
            matches = [names[c] for c in components[:-1] if c in names]
            if matches and matches[-1] not in found:
                found.append(matches[-1])
    return found


def _problem_and_fix(text, conversion, layers, ops):
    """What the converter objects to, and what to do about it."""
    where = (f"layer {layers[0]!r}" if len(layers) == 1 else f"layers {layers}") if layers else "the layer holding the op"
    if "ERROR_NEEDS_FLEX_OPS" in text or "ERROR_NEEDS_CUSTOM_OPS" in text or "neither a custom op nor a flex op" in text:
        return (
            "TFLite has no built-in kernel for the op, and edgekeras writes files of built-in ops only "
            "(TF Select and custom ops need a bigger runtime)",
            f"Fix: build {where} from Keras layers TFLite supports ({_OPS_URL}), or remove it",
        )
    if "same scale constraint" in text:
        return (
            "the op's int8 kernel needs the same quantization scale on its input and output, and the model gives them different ranges",
            f"Fix: keep {where} in float (`quantize_skip` for QAT, `float_layers` for post-training int8), or give it a "
            "QuantizeConfig without an output quantizer so that it passes its input's range on",
        )
    if re.search(r"[Qq]uantization not yet supported|not supported.*int8|int8.*not supported", text):
        return (
            "the op has no int8 kernel",
            f"Fix: keep {where} in float (`float_layers` for post-training int8, `quantize_skip` for QAT) or use "
            "another conversion",
        )
    first = _FIRST_ERROR.search(text)
    summary = (first.group(1) if first else text.strip().splitlines()[0] if text.strip() else "no message")[:300]
    if not layers and not ops:
        return summary, "Fix: see the converter's output"
    return summary, f"Fix: change {where} to ops TFLite supports for {conversion!r} ({_OPS_URL})"


def _default_log_path():
    handle, path = tempfile.mkstemp(prefix="edgekeras-conversion-", suffix=".log")
    os.close(handle)
    return path


def conversion_error(model, conversion, error, captured_text="", log_path=None):
    """The `ConversionError` for the converter's `error`, with its dump written to `log_path`.

    Args:
        model: the tf_keras model that was converted.
        conversion: the conversion name.
        error: the exception the converter raised.
        captured_text: what the converter printed meanwhile.
        log_path: where to write the converter's full output (default: a
            new file in the temporary directory).

    Returns:
        A `ConversionError` naming the layer, the op and the fix, and the log.

    Example:

    ```python
    raise conversion_error(model, "int8", error, captured.text, "runs/x/conversion.log") from error
    ```
    """
    text = f"{error}\n{captured_text}"
    paths, ops = _op_paths(error, captured_text)
    layers = _layers_at(model, paths)
    problem, fix = _problem_and_fix(text, conversion, layers, ops)
    at = f" at layer {', '.join(repr(name) for name in layers)}" if layers else ""
    op = f" (op {', '.join(ops[:3])})" if ops else ""
    log_path = os.fspath(log_path) if log_path is not None else _default_log_path()
    message = f"TFLite conversion {conversion!r} of model {model.name!r} failed{at}{op}: {problem}. {fix}."
    dump = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    atomic_write_text(log_path, (
        f"edgekeras conversion log, {time.strftime('%Y-%m-%d %H:%M:%S')}\n{message}\n\n"
        f"== converter output ==\n{captured_text}\n== converter error ==\n{dump}"
    ))
    return ConversionError(
        f"{message} The converter's full output is in {log_path}",
        conversion=conversion, layers=layers, ops=ops, log_path=log_path,
    )
