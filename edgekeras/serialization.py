"""Saving and loading the models of every phase without "Unknown layer" errors.

Pruned models need nothing special: `MagnitudePruning` leaves plain Keras
layers. Quantization-aware models hold TFMOT classes (`QuantizeWrapperV2`,
`QuantizeLayer`, quantizers and quantize configs, the prune-preserving
quantizers) that Keras can only rebuild inside
`tfmot.quantization.keras.quantize_scope`; `load_model` always opens it.

Formats (tf_keras 2.21 + TFMOT 0.8.1): `.h5` and SavedModel directories work
for every phase. The `.keras` zip format works for float and pruned models but
not for quantization-aware ones (TFMOT's `QuantizeLayer` variables do not
match on reload), so `save_model` refuses that combination with the fix,
instead of writing a file that cannot be read back.
"""

import os
import warnings

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry as prune_preserve,
)

from edgekeras.compat import check_model, keras
from edgekeras.io import atomic_path
from edgekeras.trainers.quantization import is_quantization_aware

__all__ = ["custom_objects", "load_model", "save_model", "FORMATS"]

FORMATS = (".h5", ".keras", "SavedModel directory (no extension)")


def custom_objects():
    """Returns `{name: class}` for the TFMOT classes edgekeras models may hold.

    `load_model` applies these itself; this is for code that calls
    `keras.models.load_model` or `model_from_config` directly.
    """
    objects = {
        "PrunePreserveDefaultWeightsQuantizer": prune_preserve.PrunePreserveDefaultWeightsQuantizer,
        "PrunePreserveDefault8BitWeightsQuantizer": prune_preserve.PrunePreserveDefault8BitWeightsQuantizer,
        "PrunePreserveDefault8BitConvWeightsQuantizer": prune_preserve.PrunePreserveDefault8BitConvWeightsQuantizer,
    }
    # quantize_scope() is a CustomObjectScope over TFMOT's own dictionaries.
    for mapping in tfmot.quantization.keras.quantize_scope().custom_objects:
        objects.update(mapping)
    return objects


_all_objects = custom_objects  # load_model's keyword shadows the name


def _format_of(path):
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension in (".h5", ".hdf5"):
        return "h5"
    if extension == ".keras":
        return "keras"
    if extension == "":
        return "tf"
    raise ValueError(
        f"Argument `path` must end in .h5 or .keras, or have no extension (SavedModel "
        f"directory). Received: path={os.fspath(path)!r}"
    )


def save_model(model, path, include_optimizer=False):
    """Saves `model` atomically: the file appears whole or not at all.

    Args:
        model: a tf_keras model from any phase.
        path: `.h5`, `.keras` (not for quantization-aware models) or a
            directory path without extension (SavedModel).
        include_optimizer: also save the optimizer state (.h5 and SavedModel;
            `.keras` files always hold the compiled optimizer).

    Returns:
        `path`.

    Example:

    ```python
    save_model(trainer.qat_model, "runs/qat.h5")
    model = load_model("runs/qat.h5")
    ```
    """
    check_model(model)
    kind = _format_of(path)
    if kind == "keras" and is_quantization_aware(model):
        raise ValueError(
            "Argument `path` ends in .keras, a format that cannot reload TFMOT "
            "quantization-aware models in tf_keras 2.21 / TFMOT 0.8.1. Received: "
            f"path={os.fspath(path)!r}. Save it as .h5 or as a SavedModel directory (no extension)."
        )
    with atomic_path(path, directory=kind == "tf") as temporary:
        with tfmot.quantization.keras.quantize_scope(custom_objects()):
            if kind == "keras":  # the .keras format always stores the compiled optimizer
                model.save(temporary)
            else:
                with warnings.catch_warnings():
                    # Keras calls .h5 "legacy"; for QAT models it is one of
                    # the two formats that reload, and it was asked for.
                    warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\(\)`")
                    model.save(temporary, include_optimizer=include_optimizer)
    return path


def load_model(path, compile=False, custom_objects=None):  # noqa: A002 - Keras' own keyword
    """Loads a model saved from any phase, with TFMOT's classes in scope.

    Args:
        path: a `.h5` or `.keras` file or a SavedModel directory.
        compile: also restore the training configuration (needs the loss and
            metrics to be loadable).
        custom_objects: extra `{name: class}` for the user's own layers.

    Returns:
        The tf_keras model.

    Example:

    ```python
    model = load_model("runs/qat.h5")
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Argument `path` names nothing on disk. Received: path={path!r}")
    objects = _all_objects()
    objects.update(custom_objects or {})
    with tfmot.quantization.keras.quantize_scope(objects):
        return keras.models.load_model(path, compile=compile)
