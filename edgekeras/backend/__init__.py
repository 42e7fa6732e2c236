"""The one place edgekeras tells tf_keras (Keras 2) from Keras 3 apart.

A model's own Keras decides the implementation: `for_model(model)` returns
the module for it, `edgekeras.backend.tf_keras` or `edgekeras.backend.keras3`.
Both offer the same small interface, what pruning needs and what differs
between the two Kerases:

- `name` (`"tf_keras"` or `"keras3"`) and `keras`, the Keras module itself;
- `is_model(obj)`; `layers(model)`, the flattened traversal through nested
  models, in order; `prunable_weight(layer, model=None)`,
  `prunable_weights(model)`, `is_conv(layer)`, `is_dense(layer)`;
- optimizer access: `build_optimizer(optimizer, variables)`,
  `slot_variables(optimizer, weight)`, `learning_rate(optimizer)`,
  `step(optimizer)`;
- masking: `sync_state(model)` (JAX keeps the training state outside the
  variables during an epoch), `to_numpy(variable)`, `mask_variable(weight)`,
  `apply_masks(weights, masks, slots)` and `batch_function(...)`, the work
  done after every training batch (one `tf.function` on tf_keras,
  `keras.ops` on any Keras 3 backend);
- graphs: `is_graph_model`, `is_nested`, `flatten`, `clone_model`,
  `layer_graph(model)` (a flat model's nodes in order, what channel
  groups are read from) and `model_from_config(model, config)` (a model
  rebuilt from an edited config, what a narrower model is made with).

Nothing outside this package and `edgekeras.qat` asks which Keras it has
(`tests/test_layout.py` checks it).
"""

import json
import zipfile

from edgekeras.backend import keras3, tf_keras
from edgekeras.choices import KERASES
from edgekeras.compat import is_keras3_object

__all__ = ["Callback", "KERAS_MODULES", "is_keras3", "for_model", "for_file", "by_name", "check_model", "tf_keras", "keras3"]

# The Keras modules a model may come from: tf_keras, then Keras 3's `keras`.
KERAS_MODULES = (tf_keras.keras, keras3.keras)


def is_keras3(obj):
    """True if `obj` is a Keras 3 object (model, layer, optimizer, variable), subclasses included.

    Example:

    ```python
    import keras
    is_keras3(keras.layers.Dense(2))  # True
    ```
    """
    return is_keras3_object(obj)


def for_model(model):
    """Returns the backend module of `model`'s own Keras: `keras3` or `tf_keras`.

    Anything that is not a Keras 3 object gets the tf_keras backend, the
    default edgekeras has always had; `check_model` refuses non-models.

    Args:
        model: a model, layer, optimizer or variable.

    Returns:
        `edgekeras.backend.keras3` or `edgekeras.backend.tf_keras`.

    Example:

    ```python
    backend = for_model(model)
    pairs = backend.prunable_weights(model)
    ```
    """
    return keras3 if is_keras3(model) else tf_keras


def for_file(path, kind):
    """Returns the backend module of the Keras that wrote a model file.

    Args:
        path: a model file or SavedModel directory.
        kind: `"h5"`, `"keras"` or `"tf"` (a SavedModel directory).

    Returns:
        `edgekeras.backend.keras3` for a file Keras 3 wrote (its stored
        `keras_version` is 3.x), else `edgekeras.backend.tf_keras`.

    Raises:
        OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError: the file
            cannot be read.

    Example:

    ```python
    model = for_file("model.keras", "keras").load_file("model.keras", compile=False, custom_objects={}, safe_mode=True)
    ```
    """
    version = ""
    if kind == "keras":
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
    elif kind == "h5":
        import h5py

        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version", "")
        version = version.decode("utf-8") if isinstance(version, bytes) else str(version)
    return keras3 if version.startswith("3.") else tf_keras


def by_name(name, argument="keras"):
    """Returns the backend module named `name`: `"tf_keras"` or `"keras3"` (`edgekeras.choices.KERASES`).

    Raises:
        ValueError: another name; the message names `argument`.

    Example:

    ```python
    keras = by_name("keras3").keras  # Keras 3's `keras` module
    ```
    """
    backends = {"tf_keras": tf_keras, "keras3": keras3}
    if name not in backends:
        raise ValueError(f"Argument `{argument}` must be one of {', '.join(map(repr, KERASES))}. Received: {argument}={name!r}")
    return backends[name]


def check_model(model, argument="model"):
    """Checks that `model` is a Keras model, tf_keras or Keras 3, and returns it.

    Args:
        model: the object to check.
        argument: the argument name to use in the error message.

    Returns:
        `model`, unchanged.

    Raises:
        TypeError: if `model` is not a Keras model.

    Example:

    ```python
    check_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    ```
    """
    if for_model(model).is_model(model):
        return model
    raise TypeError(
        f"Argument `{argument}` must be a Keras model (tf_keras or Keras 3 `keras.Model`). "
        f"Received: {argument}={model!r} (type {type(model).__name__})"
    )


class Callback(tf_keras.Callback):
    """The base of edgekeras' callbacks: accepted by both tf_keras' and Keras 3's `fit`.

    A tf_keras `Callback` satisfies tf_keras' `CallbackList`, which calls its
    private hooks, and Keras 3's, which calls only the public ones. What a
    Keras 3 `Callback` adds is kept: under JAX, reading `self.model` first
    writes the training state back into the model's variables, so a hook
    that reads weights sees the current ones.

    Example:

    ```python
    class Weights(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["norm"] = float(np.linalg.norm(self.model.get_weights()[0]))
    ```
    """

    @property
    def model(self):
        model = self.__dict__.get("_model")
        if model is not None:
            for_model(model).sync_state(model)
        return model

    @model.setter
    def model(self, model):
        self._model = model
