"""The trainer's trial conversions: each phase's model converted before the first epoch.

The float and pruning phases train the model itself, and QAT a
quantization-aware copy of it; converting the untrained model and a copy made
the same way finds what the converter refuses before any training
(`edgekeras.litert.trial_conversion` for one model). The `TFLiteExport`
callbacks given to `fit` try their own conversions on the same models here,
once, instead of at the start of every phase.

Example:

```python
from edgekeras.trainers.trial import trial_data, trial_phases

trial_phases(model, ("float32", "int8"), representative_data=trial_data(train))
```
"""

import concurrent.futures
import functools

import numpy as np
import tensorflow as tf

from edgekeras.callbacks import TFLiteExport
from edgekeras.compat import keras
from edgekeras.litert import trial_conversion
from edgekeras.litert.trial import TRIAL_EXAMPLES, check_conversions
from edgekeras.models import clone_with_weights
from edgekeras.qat import engine_for

__all__ = ["trial_data", "trial_phases"]


def _arrays(x):
    values = x.values() if isinstance(x, dict) else x
    return isinstance(x, np.ndarray) or (isinstance(x, (dict, list, tuple)) and bool(x) and all(
        isinstance(value, np.ndarray) for value in values
    ))


def trial_data(x):
    """A batch or two of `fit`'s training data that can be read again, for trial calibration.

    Args:
        x: what `fit` trains on: a `tf.data.Dataset`, a `keras.utils.Sequence`,
            an array, or a list/tuple/dict of arrays (several inputs).

    Returns:
        Batches to calibrate on, or None for a generator, which reading here
        would rob of training batches (the trial then calibrates on random
        inputs).

    Example:

    ```python
    trial_data(np.zeros((64, 32, 32, 3)))  # a dataset of one batch of 8
    ```
    """
    if isinstance(x, tf.data.Dataset):
        return x.take(2)
    if isinstance(x, keras.utils.Sequence):
        return [x[0]]
    if _arrays(x):
        # A 1-tuple element: its x is the whole structure, by Keras' (x, y) convention.
        return tf.data.Dataset.from_tensor_slices((tuple(x) if isinstance(x, list) else x,)).batch(TRIAL_EXAMPLES).take(1)
    return None


def _plain(model):
    """`model`, or a plain copy when its variables are distributed (the converter cannot trace those)."""
    if any(getattr(variable, "_distribute_strategy", None) is not None for variable in model.weights):
        return clone_with_weights(model)
    return model


def trial_phases(
    model,
    conversions=(),
    *,
    quantize=None,
    calibrate=True,
    float_model=True,
    representative_data=None,
    io_dtype="float32",
    float_layers=(),
    callbacks=(),
    log_path=None,
):
    """Converts the untrained model, and its quantization-aware copy, as training will export them.

    Args:
        model: the untrained tf_keras model.
        conversions: conversions of the float (and pruned) model, applied
            per conversion as `export_tflite` does with `io_dtype` and
            `float_layers`.
        quantize: a function returning the quantization-aware copy of a
            model, as QAT makes it; None when QAT does not run.
        calibrate: set the copy's activation ranges on
            `representative_data` first, as QAT does (TFMOT's initial ranges
            would hide range-dependent converter constraints).
        float_model: try the float model (False when only QAT runs).
        representative_data: a few calibration batches, or None for random
            inputs.
        io_dtype: input/output dtype of int8 files.
        float_layers: layers post-training int8 keeps in float.
        callbacks: the `TFLiteExport` callbacks among them (with `trial`
            on) try their own conversions on the same models.
        log_path: where a failed conversion's converter output goes.

    Returns:
        `{"float": {conversion: bytes}, "qat": {"int8": bytes}}` for the
        models converted here (callbacks' trials not counted).

    Raises:
        ValueError: a bad argument, or a conversion a model cannot have.
        ConversionError: the converter refused a model.

    Example:

    ```python
    trial_phases(model, ("float32",), quantize=lambda m: quantize_model(m)[0])
    ```
    """
    conversions = check_conversions(conversions)
    exports = [c for c in callbacks or () if isinstance(c, TFLiteExport) and c.trial]
    settings = dict(representative_data=representative_data, io_dtype=io_dtype, log_path=log_path)
    work = functools.partial(_trial, model, conversions, exports, quantize, calibrate, float_model, float_layers, settings)
    if not tf.distribute.has_strategy():
        return work()
    # Inside a strategy's scope every copy made (the plain one, the QAT one)
    # would get distributed variables again, which the converter cannot
    # trace. The scope belongs to its thread: a fresh thread is outside it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def _trial(model, conversions, exports, quantize, calibrate, float_model, float_layers, settings):
    model, sizes = _plain(model), {}
    if float_model and conversions:
        sizes["float"] = trial_conversion(model, conversions, float_layers=float_layers, **settings)
    for callback in exports if float_model else ():
        callback.trial_conversion(model)
    if quantize is not None:
        copy = quantize(model)
        if calibrate and settings["representative_data"] is not None:
            engine_for(copy).calibrate(copy, settings["representative_data"], steps=2)
        sizes["qat"] = trial_conversion(copy, ("int8",), **settings)
        for callback in exports:
            callback.trial_conversion(copy)
    return sizes
