"""The inputs of a model as the converter and LiteRT see them: one image tensor, several, or a dict.

A .tflite file has a flat list of input tensors; a Keras model is called with
one tensor, a list of tensors or a dict of them, and a dataset yields those
inside `(x, y)` batches. `ModelInputs` holds the model's input structure as
`tf.TensorSpec`s (batch dimension free) and maps any batch of data onto the
flat list: dict entries by name, lists by position. The structure comes from
an explicit `input_signature`, the model's own inputs (functional and
Sequential models), the inputs a subclassed model was first called with, or
the element spec of its data, in that order.

Example:

```python
from edgekeras.litert.signature import model_inputs

inputs = model_inputs(model, data=train)   # train yields ({"image": x}, y)
inputs.names                                # ['image']
```
"""

import re

import numpy as np
import tensorflow as tf

from edgekeras.errors import EdgekerasError

__all__ = [
    "InputDataError",
    "ModelInputs",
    "check_input_signature",
    "find_inputs",
    "input_batches",
    "model_inputs",
    "sample_inputs",
]

# Input names kept as they are for the .tflite inputs (placeholder names
# TensorFlow neither rewrites nor rejects).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SIGNATURE_FORM = (
    "a tf.TensorSpec, or a list, tuple or dict of them, e.g. "
    "tf.TensorSpec([None, 96, 96, 3], tf.float32) or {'image': tf.TensorSpec([None, 96, 96, 3])}"
)


class InputDataError(EdgekerasError, ValueError):
    """Data does not fit the model's inputs: other names, ranks or an unbatched dataset."""


def _is_structure(value):
    return isinstance(value, (list, tuple, dict))


def check_input_signature(input_signature):
    """Returns `input_signature` with free batch dimensions, or raises a clear ValueError.

    Args:
        input_signature: a `tf.TensorSpec`, or a list, tuple or dict of them,
            shaped like one batch (the batch dimension is made free).

    Returns:
        The same structure of `tf.TensorSpec`s, batch dimension None.

    Raises:
        ValueError: anything else, an empty structure or a spec without a
            batch dimension.

    Example:

    ```python
    check_input_signature(tf.TensorSpec([8, 32, 32, 3]))  # TensorSpec(shape=(None, 32, 32, 3), ...)
    ```
    """
    leaves = tf.nest.flatten(input_signature) if _is_structure(input_signature) else [input_signature]
    nested = _is_structure(input_signature) and any(_is_structure(v) for v in (
        input_signature.values() if isinstance(input_signature, dict) else input_signature
    ))
    if not leaves or nested or not all(isinstance(leaf, tf.TensorSpec) and leaf.shape.rank for leaf in leaves):
        raise ValueError(
            f"Argument `input_signature` must be {_SIGNATURE_FORM}, each with a batch dimension. "
            f"Received: input_signature={input_signature!r}"
        )
    return tf.nest.map_structure(lambda spec: tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, spec.name), input_signature)


class ModelInputs:
    """A model's input structure, and the names and order its .tflite inputs get.

    The converter keeps the order of the traced function's inputs: a file's
    inputs come in the model's flat (`tf.nest`) order, each named after its
    dict key or Keras input name (else "input_<i>").

    Args:
        structure: `tf.TensorSpec`s nested the way the model is called: one
            spec, a list or tuple, or a dict (no deeper nesting).
        keys: what a dict batch is keyed by, per flat input (default: the
            dict keys, else the specs' own names).

    Attributes:
        structure: the specs, named as the file's inputs will be.
        specs: the specs in the model's flat order, the file's input order.
        keys: per flat input, the key a dict batch holds it under.
        names: per flat input, the name of the file's input.

    Example:

    ```python
    inputs = ModelInputs({"image": tf.TensorSpec([None, 32, 32, 3])})
    inputs.flatten({"image": images}, "verify_data")  # [images]
    ```
    """

    def __init__(self, structure, keys=None):
        specs = tf.nest.flatten(structure)
        if keys is None:
            keys = sorted(structure) if isinstance(structure, dict) else [spec.name for spec in specs]
        self.keys = [None if key is None else str(key) for key in keys]
        names = self.keys
        if not all(_NAME.match(name or "") for name in names) or len(set(names)) != len(names):
            names = [f"input_{index}" for index in range(len(specs))]
        self.names = names
        self.specs = [tf.TensorSpec(spec.shape, spec.dtype, name) for spec, name in zip(specs, names)]
        self.structure = tf.nest.pack_sequence_as(structure, self.specs)

    def __repr__(self):
        return f"ModelInputs({self.structure!r})"

    def flatten(self, x, argument):
        """The flat input arrays of one batch `x` (a tensor, a list/tuple or a dict of them).

        Raises:
            InputDataError: `x` has other names, another number of inputs,
                or tensors of the wrong rank (an unbatched dataset).
        """
        if isinstance(x, dict) and len(x) == 1 and len(self.names) == 1:
            values = list(x.values())  # one input: its key needs no matching
        elif isinstance(x, dict):
            missing = [key for key in self.keys if key not in x]
            if missing:
                raise InputDataError(
                    f"Argument `{argument}` yields inputs named {sorted(map(str, x))}, but the model's inputs are "
                    f"{self.keys} (missing: {missing}). Received: {argument} with keys {sorted(map(str, x))}"
                )
            values = [x[key] for key in self.keys]
        elif isinstance(x, (list, tuple)):
            values = list(x)
        else:
            values = [x]
        if len(values) != len(self.specs):
            raise InputDataError(
                f"Argument `{argument}` yields {len(values)} input tensor(s) per batch, but the model takes "
                f"{len(self.specs)} ({self.keys}). Yield `(x, y)` batches whose x is a dict keyed by "
                f"{self.keys} or a tuple in that order. Received: {argument} with {len(values)} input tensor(s)"
            )
        return [self._array(value, spec, argument) for value, spec in zip(values, self.specs)]

    @staticmethod
    def _array(value, spec, argument):
        array = np.asarray(value)
        if array.ndim != spec.shape.rank:
            fix = " Batch it first (dataset.batch(32))." if array.ndim == spec.shape.rank - 1 else ""
            raise InputDataError(
                f"Argument `{argument}` yields input {spec.name!r} of shape {array.shape}, but the model takes "
                f"batches of shape {tuple(spec.shape)} (rank {spec.shape.rank}).{fix} "
                f"Received: {argument} with {array.ndim}-d inputs"
            )
        return array.astype(spec.dtype.as_numpy_dtype, copy=False)

    def pack(self, arrays):
        """The flat arrays nested the way the model is called."""
        return tf.nest.pack_sequence_as(self.structure, list(arrays))

    def by_name(self, arrays):
        """The flat arrays keyed by the file's input names."""
        return dict(zip(self.names, arrays))

    def random(self, count, seed=0):
        """`count` random examples in [-1, 1] per input (for a file's smoke test without data)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for spec in self.specs:
            if not spec.shape[1:].is_fully_defined():
                raise ValueError(
                    f"Input {spec.name!r} has an undefined dimension {tuple(spec.shape)}: pass data to "
                    "verify on (`verify_data`) or an `input_signature` with fixed sizes."
                )
            values = rng.uniform(-1.0, 1.0, [count, *spec.shape[1:]])
            arrays.append(values.astype(spec.dtype.as_numpy_dtype))
        return arrays


def _x_of(element):
    """The inputs part of a dataset element, by Keras' `(x, y[, sample_weight])` convention."""
    return element[0] if isinstance(element, (tuple, list)) else element


def _spec_of_data(data):
    """The input structure `data` yields, or None when it cannot be read without consuming it."""
    if isinstance(data, tf.data.Dataset):
        structure = _x_of(data.element_spec)
    elif isinstance(data, np.ndarray) or (isinstance(data, dict) and all(isinstance(v, np.ndarray) for v in data.values())):
        structure = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, tf.float32 if a.dtype.kind == "f" else a.dtype), data)
    else:
        return None
    leaves = tf.nest.flatten(structure)
    if not all(isinstance(leaf, tf.TensorSpec) and leaf.shape.rank for leaf in leaves):
        return None
    return tf.nest.map_structure(lambda spec: tf.TensorSpec([None, *spec.shape[1:]], spec.dtype), structure)


def _functional_inputs(model):
    structure = model.input
    if isinstance(structure, dict):
        keys = sorted(structure)
    else:
        keys = list(getattr(model, "input_names", None) or [t.name for t in model.inputs])
    specs = tf.nest.map_structure(lambda tensor: tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype), structure)
    return ModelInputs(specs, keys)


def find_inputs(model, input_signature=None, data=()):
    """The `ModelInputs` of `model` (see `model_inputs`), or None when nothing tells them yet.

    Example:

    ```python
    if find_inputs(model, data=(train,)) is None:
        ...  # a subclassed model that has not been called, and no dataset
    ```
    """
    if isinstance(input_signature, ModelInputs):
        return input_signature
    if input_signature is not None:
        return ModelInputs(check_input_signature(input_signature))
    if getattr(model, "inputs", None):
        return _functional_inputs(model)
    # A subclassed model records the inputs of its first call (Keras' save spec).
    saved = model.save_spec(dynamic_batch=True) if hasattr(model, "save_spec") else None
    if saved is not None and saved[0]:
        return ModelInputs(saved[0][0])
    for source in data:
        structure = _spec_of_data(source)
        if structure is not None:
            return ModelInputs(structure)
    return None


def model_inputs(model, input_signature=None, data=()):
    """The `ModelInputs` of `model`: from `input_signature`, the model, or its data.

    Args:
        model: a tf_keras model (functional, Sequential or subclassed).
        input_signature: an explicit signature (see `check_input_signature`);
            needed for a subclassed model that has not been called yet and
            has no dataset to trace from.
        data: datasets or arrays the model is fed with, in order of
            preference; the first whose inputs can be read without consuming
            it (a `tf.data.Dataset` or arrays) gives the signature.

    Returns:
        A `ModelInputs`.

    Raises:
        ValueError: a malformed `input_signature`, or no signature could be
            found.

    Example:

    ```python
    model_inputs(subclassed_model, input_signature=tf.TensorSpec([None, 32, 32, 3]))
    ```
    """
    inputs = find_inputs(model, input_signature, data)
    if inputs is None:
        raise ValueError(
            f"Argument `input_signature` is needed to convert model {model.name!r}: it is a subclassed model that "
            "has not been called yet, and no dataset was given to read its inputs from. Pass "
            "input_signature=tf.TensorSpec([None, height, width, channels]) (a list or dict of them for several "
            "inputs), or call the model on a batch first. Received: input_signature=None"
        )
    return inputs


def input_batches(data, inputs, argument):
    """Yields the flat input arrays of each batch of `data`.

    Args:
        data: a batched `tf.data.Dataset` or iterable of `(x, y)` / `x`
            batches, one array (a batch of a single-input model) or a dict
            of arrays (one batch of a dict-input model).
        inputs: the model's `ModelInputs`.
        argument: the argument that held `data`, for error messages.

    Yields:
        Lists of arrays, in the flat order of `inputs`.

    Example:

    ```python
    first = next(input_batches(data.train, inputs, "representative_data"))
    ```
    """
    if isinstance(data, (np.ndarray, dict)) or tf.is_tensor(data):
        yield inputs.flatten(data, argument)
        return
    for element in data:
        yield inputs.flatten(_x_of(element), argument)


def sample_inputs(data, inputs, count, argument):
    """Up to `count` examples of `data` as flat input arrays (one array per input).

    Raises:
        InputDataError: `data` yields no examples or batches that do not fit.
    """
    collected, total = [], 0
    for arrays in input_batches(data, inputs, argument):
        collected.append(arrays)
        total += arrays[0].shape[0]
        if total >= count:
            break
    if not total:
        raise InputDataError(f"Argument `{argument}` yielded no examples. Received: an empty {argument}")
    return [np.concatenate(parts)[:count] for parts in zip(*collected)]
