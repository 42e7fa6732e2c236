"""Trial conversion: the untrained model converted once per conversion, before any training.

Training leaves a model's graph as it is: only the weights (and a QAT model's
ranges) change. So whether the converter accepts a model, and whether LiteRT
loads the file, can be found before the first epoch by converting the
untrained model, at the cost of a few seconds instead of a training run.
`trial_conversion` does that for each conversion asked for, in memory, with a
few calibration examples and no verification, and raises the same short
`ConversionError` that export would (the layer, the op, the fix; the
converter's dump in a log file). `EdgeTrainer.fit`, the `TFLiteExport`
callback and `edgekeras run` call it before training.

Example:

```python
from edgekeras.litert import trial_conversion

trial_conversion(model, ("float32", "int8"), representative_data=data.train)  # {"float32": 9120, "int8": 4144}
```
"""

from edgekeras.choices import CONVERSIONS
from edgekeras.litert.conversion import applicable_options, convert, is_quantization_aware, prepare_for_export
from edgekeras.litert.diagnosis import ConversionError, ExportError, captured_output
from edgekeras.runtime import TFLiteModel
from edgekeras.litert.signature import model_inputs

__all__ = ["TRIAL_EXAMPLES", "check_conversions", "structure_key", "trial_conversion"]

# Calibration examples per trial: enough for the calibrator to run every op,
# few enough to cost nothing next to training.
TRIAL_EXAMPLES = 8


def check_conversions(conversions, argument="conversions"):
    """Returns `conversions` as a tuple of known, distinct conversion names, or raises a clear ValueError.

    Args:
        conversions: a conversion name or a list of them (may be empty).
        argument: the argument's name, for the message.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: an unknown name, a duplicate, or not a list of names.

    Example:

    ```python
    check_conversions(["float32", "int8"])  # ("float32", "int8")
    ```
    """
    if isinstance(conversions, str):
        conversions = (conversions,)
    try:
        conversions = tuple(conversions)
    except TypeError:
        conversions = None
    if conversions is None or not all(isinstance(name, str) and name in CONVERSIONS for name in conversions):
        raise ValueError(f"Argument `{argument}` must hold names from {', '.join(CONVERSIONS)}. Received: {argument}={conversions!r}")
    if len(set(conversions)) != len(conversions):
        raise ValueError(f"Argument `{argument}` has duplicates. Received: {argument}={conversions!r}")
    return conversions


def structure_key(model):
    """A key equal for models whose conversions are the same: same layer types and wrapped layers.

    The model of each training phase converts like its untrained self, and a
    quantization-aware copy made before training like the one made after it;
    callers use this to try each kind of model once.

    Example:

    ```python
    structure_key(model) == structure_key(clone_with_weights(model))  # True
    ```
    """
    layers = []
    for layer in getattr(model, "layers", ()):
        inner = getattr(layer, "layer", None)
        layers.append(type(layer).__name__ if inner is None else f"{type(layer).__name__}({inner.name})")
    return (type(model).__name__, is_quantization_aware(model), tuple(layers))


def _random_calibration(inputs, count):
    """A generator function of `count` random examples, for int8 calibration without data."""
    arrays = inputs.random(count, seed=1)

    def generate():
        for index in range(count):
            yield [array[index:index + 1] for array in arrays]

    return generate


def _load(flatbuffer, conversion, label):
    """Loads the file in LiteRT and allocates batch 1: what export and evaluation will do with it."""
    try:
        with captured_output():  # LiteRT announces its delegate on stdout
            TFLiteModel(flatbuffer).allocate(1)
    except (ValueError, RuntimeError) as error:
        raise ExportError(
            f"Checked before training: the {conversion} file of {label} converts but does not load in LiteRT: {error}"
        ) from error


def trial_conversion(
    model,
    conversions,
    *,
    representative_data=None,
    representative_examples=TRIAL_EXAMPLES,
    io_dtype="float32",
    float_layers=(),
    input_signature=None,
    log_path=None,
):
    """Converts `model` once per conversion, in memory, and loads each file in LiteRT; writes nothing.

    Meant for the untrained model, before training: a model the converter
    refuses fails here, in seconds, rather than after training. Settings
    apply per conversion as in `export_tflite` (`io_dtype` to int8 only,
    `float_layers` to post-training int8 only); a quantization-aware model
    is tried in the conversions a QAT model has (int8), and asking it for a
    float one raises the ValueError export would.

    Args:
        model: a tf_keras model (pruning-wrapped and QAT models accepted).
        conversions: names from `CONVERSIONS`.
        representative_data: calibration data for post-training int8 (see
            `convert`); None calibrates on random inputs, which is enough to
            find what the converter refuses.
        representative_examples: calibration examples, at most.
        io_dtype: input/output dtype of int8 files.
        float_layers: layers post-training int8 keeps in float.
        input_signature: the model's inputs, for a subclassed model that has
            never been called (see `convert`).
        log_path: where the converter's output goes if a conversion fails
            (default: a new file in the temporary directory).

    Returns:
        `{conversion: size in bytes}` of the untrained model's files.

    Raises:
        ValueError: bad arguments, or a conversion the model cannot have.
        InputDataError: `representative_data` does not fit the model.
        ConversionError: the converter refused the model; the message names
            the layer, the op and the fix, and the log file.
        ExportError: a file converted but does not load in LiteRT.

    Example:

    ```python
    trial_conversion(model, ["float32", "int8"], representative_data=data.train, log_path="conversion.log")
    ```
    """
    conversions = check_conversions(conversions)
    model = prepare_for_export(model)
    inputs = model_inputs(model, input_signature, (representative_data,))
    label = "the quantization-aware copy of the untrained model" if is_quantization_aware(model) else "the untrained model"
    calibration = representative_data
    if calibration is None:
        calibration = _random_calibration(inputs, representative_examples)
    sizes = {}
    for conversion in conversions:
        conversion_io, layers = applicable_options(model, conversion, io_dtype, float_layers)
        try:
            flatbuffer = convert(
                model, conversion, representative_data=calibration, representative_examples=representative_examples,
                io_dtype=conversion_io, float_layers=layers, input_signature=inputs, log_path=log_path,
            )
        except ConversionError as error:
            raise ConversionError(
                f"Checked before training, on {label}: {error}", conversion=error.conversion, layers=error.layers,
                ops=error.ops, log_path=error.log_path,
            ) from None  # the converter's dump is in the log, not for the terminal
        _load(flatbuffer, conversion, label)
        sizes[conversion] = len(flatbuffer)
    return sizes
