"""Saving and loading the models of every phase without "Unknown layer" errors.

Pruned models need nothing special: `MagnitudePruning` leaves plain Keras
layers. Quantization-aware models hold TFMOT classes (`QuantizeWrapperV2`,
`QuantizeLayer`, quantizers and quantize configs, the prune-preserving
quantizers, edgekeras' per-channel depthwise quantizer) that Keras can only
rebuild inside `tfmot.quantization.keras.quantize_scope` with `custom_objects()`;
`load_model` always opens it.

Formats (tf_keras 2.21 + TFMOT 0.8.1): `.h5` and SavedModel directories work
for every phase. The `.keras` zip format works for float and pruned models but
not for quantization-aware ones (TFMOT's `QuantizeLayer` variables do not
match on reload), so `save_model` refuses that combination with the fix,
instead of writing a file that cannot be read back.

Keras 3 models (`import keras`) save as `.keras` (every phase, QAT included:
edgekeras' Keras 3 QAT layers are registered serializable) or `.h5`;
`load_model` reads which Keras wrote a file from the file itself.

Safe loading: a `Lambda` layer stores its Python function as marshalled
bytecode, and loading the layer runs that code. tf_keras refuses it only for
`.keras` files (`safe_mode=True`); `.h5` files and SavedModel directories
would run it silently. `load_model` refuses such layers in every format unless
the caller passes `safe_mode=False` for a file they trust.
"""

import json
import os
import zipfile

from edgekeras.backend import check_model, for_file, for_model
from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_path
from edgekeras.models.graph import custom_objects, is_quantization_aware

__all__ = ["load_model", "save_model", "model_file_name", "FORMATS", "ModelFileError", "UnsafeModelError"]

FORMATS = (".h5", ".keras", "SavedModel directory (no extension)")


class ModelFileError(EdgekerasError, ValueError):
    """A model file or directory exists but cannot be read as a Keras model."""


class UnsafeModelError(EdgekerasError, ValueError):
    """A model file holds `Lambda` layers (Python bytecode) and `safe_mode` is on.

    Attributes:
        layers: names of the refused `Lambda` layers.
    """

    def __init__(self, message, layers):
        super().__init__(message)
        self.layers = list(layers)


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


def model_file_name(model, stem):
    """`stem` plus the file extension `model`'s Keras saves best: ".h5" (tf_keras) or ".keras" (Keras 3).

    Example:

    ```python
    save_model(model, model_file_name(model, "runs/demo/models/float"))
    ```
    """
    return os.fspath(stem) + for_model(model).model_file_extension


def save_model(model, path, include_optimizer=False):
    """Saves `model` atomically: the file appears whole or not at all.

    Args:
        model: a tf_keras or Keras 3 model from any phase.
        path: `.h5`, `.keras` (not for tf_keras quantization-aware models)
            or, for tf_keras models, a directory path without extension
            (SavedModel).
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
        for_model(model).save_file(model, temporary, kind, include_optimizer, custom_objects())
    return path


def _stored_configs(path, kind):
    """Yields the JSON configs a model file stores, without building any layer."""
    if kind == "h5":
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
        if raw is not None:
            yield json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    elif kind == "keras":
        with zipfile.ZipFile(path) as archive:
            yield json.loads(archive.read("config.json"))
    else:
        metadata_path = os.path.join(path, "keras_metadata.pb")
        if not os.path.isfile(metadata_path):
            return  # tf_keras rebuilds the model from the graph, under SafeModeScope
        from google.protobuf.message import DecodeError
        from tf_keras.protobuf import saved_metadata_pb2

        metadata = saved_metadata_pb2.SavedMetadata()
        with open(metadata_path, "rb") as handle:
            try:
                metadata.ParseFromString(handle.read())
            except DecodeError as error:
                raise OSError(f"keras_metadata.pb cannot be parsed: {error}") from error
        for node in metadata.nodes:
            if node.metadata:
                yield json.loads(node.metadata)


def _lambda_layers(config, found=None):
    """Names of the `Lambda` layers in a stored config whose function is Python bytecode."""
    found = [] if found is None else found
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") == "Lambda" and isinstance(inner, dict):
            # tf_keras marks bytecode with "*_type": "lambda", Keras 3 with a "__lambda__" object.
            stored = [inner.get(key) for key in ("function", "output_shape", "mask")]
            keras3_bytecode = any(isinstance(value, dict) and value.get("class_name") == "__lambda__" for value in stored)
            if keras3_bytecode or "lambda" in (inner.get("function_type"), inner.get("output_shape_type"), inner.get("mask_type")):
                name = inner.get("name", "?")
                if name not in found:
                    found.append(name)
        for value in config.values():
            _lambda_layers(value, found)
    elif isinstance(config, list):
        for value in config:
            _lambda_layers(value, found)
    return found


def _unsafe_error(path, layers):
    listed = ", ".join(repr(name) for name in layers) or "(a Lambda layer)"
    return UnsafeModelError(
        f"Argument `path` names a model with Lambda layers whose Python function is stored as bytecode: "
        f"{listed}. Loading them would run that code, so edgekeras refuses it by default. Received: "
        f"path={path!r}, safe_mode=True. If you trust the file, load it with `load_model(path, "
        "safe_mode=False)`; better, replace the Lambda layers by layers Keras knows or by registered "
        "custom layers.",
        layers,
    )


def _file_error(path, kind, error):
    what = {"h5": "an .h5 model file", "keras": "a .keras model file", "tf": "a SavedModel directory"}[kind]
    return ModelFileError(
        f"Argument `path` is not {what} edgekeras can read "
        f"({type(error).__name__}: {error}). Received: path={path!r}. The file may be truncated or of "
        "another format: save the model again with edgekeras.models.save_model (which writes "
        "atomically) or copy it again."
    )


# What reading a damaged file raises: h5py and SavedModel (OSError), zip
# archives, JSON and protobuf parsing, and a missing member of an archive.
_FILE_ERRORS = (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError, EOFError)


def load_model(path, compile=False, custom_objects=None, safe_mode=True):  # noqa: A002 - Keras' own keyword
    """Loads a model saved from any phase, with TFMOT's classes in scope.

    Safe mode: a `Lambda` layer stores its Python function as marshalled
    bytecode, and rebuilding the layer runs that code, so a model file can
    run arbitrary code when it is loaded. tf_keras refuses that only for
    `.keras` files; with `safe_mode=True` (the default) edgekeras refuses it
    for every format, before building anything, with an `UnsafeModelError`
    that names the layers. Pass `safe_mode=False` only for files you trust.

    Args:
        path: a `.h5` or `.keras` file or a SavedModel directory.
        compile: also restore the training configuration (needs the loss and
            metrics to be loadable).
        custom_objects: extra `{name: class}` for the user's own layers.
        safe_mode: refuse `Lambda` layers stored as Python bytecode (see
            above). False loads them, running their code.

    Returns:
        The model, of the Keras that wrote the file (tf_keras or Keras 3).

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ModelFileError: `path` is not a readable model (a truncated or
            corrupted file, or a file of another format).
        UnsafeModelError: the model holds `Lambda` layers and `safe_mode` is
            True.
        ValueError: `path` has an unknown extension or `safe_mode` is not a
            bool.

    Example:

    ```python
    model = load_model("runs/qat.h5")
    trusted = load_model("my_lambda_model.h5", safe_mode=False)
    ```
    """
    path = os.fspath(path)
    if not isinstance(safe_mode, bool):
        raise ValueError(f"Argument `safe_mode` must be True or False. Received: safe_mode={safe_mode!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Argument `path` names nothing on disk. Received: path={path!r}")
    kind = "tf" if os.path.isdir(path) else _format_of(path)
    if kind == "keras" and not zipfile.is_zipfile(path):
        # tf_keras would read it as .h5 and report an HDF5 error.
        raise _file_error(path, kind, OSError("not a .keras zip archive"))
    if safe_mode:
        try:
            layers = _lambda_layers(list(_stored_configs(path, kind)))
        except _FILE_ERRORS as error:
            raise _file_error(path, kind, error) from error
        if layers:
            raise _unsafe_error(path, layers)
    objects = _all_objects()
    objects.update(custom_objects or {})
    try:
        return for_file(path, kind).load_file(path, compile, objects, safe_mode)
    except _FILE_ERRORS as error:
        raise _file_error(path, kind, error) from error
    except ValueError as error:
        # Keras' own refusal, for a Lambda layer the scan above cannot see.
        if "deserialization of a Lambda layer" in str(error) or "Lambda" in str(error) and "safe_mode" in str(error):
            raise _unsafe_error(path, []) from error
        raise
