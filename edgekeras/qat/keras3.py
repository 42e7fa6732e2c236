"""edgekeras' quantization-aware training engine for Keras 3 models (TensorFlow backend).

TFMOT is Keras 2 only and Keras 3's `model.quantize()` is post-training
only, so `Keras3QAT` rebuilds a functional (or Sequential, nested models
flattened) Keras 3 model itself, with Keras 3's public API and TensorFlow's
fake-quant ops, which the TFLite converter turns into int8 kernels:

- weights fake-quantized per output channel, symmetric, narrow range
  (depthwise kernels per depthwise output channel; Dense and Conv1D kernels
  per tensor, as TFMOT has them: the converter refuses a per-channel range
  across the transpose or reshape it puts before their kernels), after the
  BatchNormalization and constant arithmetic that follow are folded in as the
  converter folds them, with ReLU/ReLU6 fused (`keras3_layers`);
- activations per tensor, asymmetric, with ranges moved by a moving average
  in training and set from data by `calibrate`;
- a range on exactly the tensors that are tensors of the int8 file
  (`keras3_graph`), so that the QAT model's int8 file has the operator list
  of the float model's post-training int8 file: no stray QUANTIZE or
  DEQUANTIZE inside the graph.

The prune-preserving scheme multiplies each kernel by the mask of its zeros
before quantization, so a pruned model's zeros stay zeros through QAT and in
the file. Frozen layers stay frozen; the float model is not changed.

Convert a QAT model like any other: `edgekeras.litert.convert(qat_model,
"int8")` or `export_tflite` (no representative data needed).

Example:

```python
engine = Keras3QAT()
qat_model, scheme = engine.quantize(model)  # "default", or "prune_preserve" for a pruned model
engine.calibrate(qat_model, train_dataset, steps=16)
qat_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
qat_model.fit(train_dataset, epochs=1)
```
"""

import keras
import numpy as np
import tensorflow as tf

from edgekeras.backend.keras3 import BackendError, check_tensorflow
from edgekeras.quantization import SCHEMES, SPARSE_THRESHOLD, UnquantizableLayersError
from edgekeras.qat.engine import QATEngine
from edgekeras.qat.keras3_build import build
from edgekeras.qat.keras3_graph import plan
from edgekeras.qat.keras3_layers import ActivationQuantizer, QuantizedWeighted

__all__ = ["Keras3QAT", "Keras3UnquantizableLayersError", "BackendError", "SCHEMES", "SPARSE_THRESHOLD"]

_KINDS = {"output": "output", "pass_through": "pass"}


class Keras3UnquantizableLayersError(UnquantizableLayersError):
    """Layers of a Keras 3 model that `Keras3QAT` cannot quantize.

    An `edgekeras.quantization.UnquantizableLayersError`, so one `except`
    catches the refusal of either engine.

    Attributes:
        layers: list of `(layer name, description)` pairs.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        names = ", ".join(f"{name!r} ({kind})" for name, kind in self.layers)
        listed = ", ".join(repr(name) for name, _ in self.layers)
        # The base class words its message for TFMOT; this one names the Keras 3 engine's fixes.
        super(UnquantizableLayersError, self).__init__(
            f"Argument `model` has layers that edgekeras' Keras 3 quantization-aware training cannot quantize. "
            f"Received: {names}. Fix: keep them in float with `quantize_skip=[{listed}]` (the int8 file computes "
            "them in float between DEQUANTIZE and QUANTIZE ops), or, where TFLite has an int8 kernel for what they "
            "compute, place each with `quantize_configs={name: 'output'}` (a range on its output) or "
            "`{name: 'pass_through'}` (an op that keeps its input's scale)."
        )


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `model` must be a Keras 3 `keras.Model` (tf_keras models go to the TFMOT engine). "
            f"Received: model of type {type(model).__module__}.{type(model).__name__}"
        )
    functional = model._functional if isinstance(model, keras.Sequential) else model
    if functional is None or not hasattr(functional, "_nodes_by_depth"):
        raise ValueError(
            f"Argument `model` must be a built functional or Sequential model for quantization-aware training "
            f"(edgekeras rebuilds it layer by layer). Received: model={model.name!r} of type {type(model).__name__}"
            + (" that is not built. Give it a `keras.Input` first." if isinstance(model, keras.Sequential) else
               ", a subclassed model. Rebuild it with the functional API.")
        )


def _layer_names(model):
    return {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)}


def _overrides(model, quantize_skip, quantize_configs):
    if quantize_skip is None:
        quantize_skip = ()
    if isinstance(quantize_skip, str) or not all(isinstance(name, str) for name in quantize_skip):
        raise ValueError(f"Argument `quantize_skip` must be a list of layer names. Received: quantize_skip={quantize_skip!r}")
    configs = quantize_configs or {}
    if not isinstance(configs, dict) or not all(value in _KINDS for value in configs.values()):
        raise ValueError(
            f"Argument `quantize_configs` must map layer names to 'output' or 'pass_through' for a Keras 3 model. "
            f"Received: quantize_configs={quantize_configs!r}"
        )
    overrides = {**{name: _KINDS[value] for name, value in configs.items()}, **{name: "skip" for name in quantize_skip}}
    unknown = sorted(set(overrides) - _layer_names(model))
    if unknown:
        raise ValueError(
            f"Arguments `quantize_skip` and `quantize_configs` must name layers of the model. Received unknown "
            f"names: {unknown}"
        )
    return overrides


def _kernel_sparsity(graph):
    return [float(np.mean(keras.ops.convert_to_numpy(step.layer.kernel) == 0)) for step in graph.steps if step.kind == "weighted"]


def _quantizers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if isinstance(layer, ActivationQuantizer)]


def _inputs_of(batch):
    return batch[0] if isinstance(batch, tuple) else batch


class Keras3QAT(QATEngine):
    """The QAT engine of Keras 3 models: quantize, calibrate, and what the converter needs.

    Args:
        fake_quant: False builds QAT models with every fake quantization off
            (their float output equals the float model's: a check of the
            BatchNorm folding).
        ema_decay: decay of the activation ranges' moving average in training.
        sparse_threshold: the fraction of exact zeros in a kernel from which
            scheme "auto" preserves sparsity.

    Raises:
        ValueError: a bad argument.

    Example:

    ```python
    engine = Keras3QAT()
    qat_model, scheme = engine.quantize(model, scheme="auto")
    ```
    """

    name = "keras3"

    def __init__(self, fake_quant=True, ema_decay=0.999, sparse_threshold=SPARSE_THRESHOLD):
        if not isinstance(fake_quant, bool):
            raise ValueError(f"Argument `fake_quant` must be a boolean. Received: fake_quant={fake_quant!r}")
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay < 1:
            raise ValueError(f"Argument `ema_decay` must be in [0, 1). Received: ema_decay={ema_decay!r}")
        if isinstance(sparse_threshold, bool) or not isinstance(sparse_threshold, (int, float)) or not 0 < sparse_threshold <= 1:
            raise ValueError(f"Argument `sparse_threshold` must be in (0, 1]. Received: sparse_threshold={sparse_threshold!r}")
        self.fake_quant, self.ema_decay, self.sparse_threshold = fake_quant, float(ema_decay), float(sparse_threshold)

    def _plan(self, model, quantize_skip, quantize_configs):
        _check_model(model)
        check_tensorflow()
        if self.is_quantization_aware(model):
            raise ValueError(
                f"Argument `model` must be a float model. Received: model={model.name!r}, which is already "
                "quantization-aware (train it, or quantize its float original)."
            )
        graph = plan(model, _overrides(model, quantize_skip, quantize_configs))
        if graph.unsupported:
            raise Keras3UnquantizableLayersError(graph.unsupported)
        return graph

    def check(self, model, quantize_skip=(), quantize_configs=None):
        """Raises before anything is built if `model` cannot be made quantization-aware.

        Args:
            model: a functional or Sequential Keras 3 model.
            quantize_skip: names of layers kept in float (a range on their output).
            quantize_configs: `{layer name: "output" | "pass_through"}` for layers
                the engine does not know.

        Raises:
            TypeError: not a Keras 3 model.
            ValueError: a subclassed, unbuilt or already quantization-aware model, a bad argument.
            BackendError: Keras 3 runs on another backend than TensorFlow.
            Keras3UnquantizableLayersError: every layer it cannot quantize, in one error.

        Example:

        ```python
        Keras3QAT().check(model, quantize_skip=["custom_op"])
        ```
        """
        self._plan(model, quantize_skip, quantize_configs)

    def quantize(self, model, scheme="auto", quantize_skip=(), quantize_configs=None):
        """Returns `(qat_model, scheme_name)`: a new, uncompiled quantization-aware copy of `model`.

        Args:
            model: a functional or Sequential Keras 3 model (not changed).
            scheme: "auto" (prune-preserving when a kernel has at least
                `sparse_threshold` zeros), "default" or "prune_preserve".
            quantize_skip: see `check`.
            quantize_configs: see `check`.

        Returns:
            The QAT model, with the float model's weights and trainable flags,
            and the scheme used ("default" or "prune_preserve").

        Raises:
            ValueError: an unknown scheme, and what `check` raises.

        Example:

        ```python
        qat_model, scheme = Keras3QAT().quantize(pruned_model)  # scheme == "prune_preserve"
        ```
        """
        if scheme not in SCHEMES:
            raise ValueError(f"Argument `scheme` must be one of {SCHEMES}. Received: scheme={scheme!r}")
        graph = self._plan(model, quantize_skip, quantize_configs)
        if scheme == "auto":
            sparse = any(value >= self.sparse_threshold for value in _kernel_sparsity(graph))
            scheme = "prune_preserve" if sparse else "default"
        qat_model = build(graph, scheme == "prune_preserve", self.fake_quant, self.ema_decay, name=model.name)
        return qat_model, scheme

    def activation_ranges(self, model):
        """Returns the `(min_var, max_var)` variables of every activation range of a QAT model.

        Args:
            model: a model from `quantize` (any other model has none).

        Returns:
            A list of pairs of scalar variables, in the model's layer order.

        Example:

        ```python
        widths = [float(high - low) for low, high in Keras3QAT().activation_ranges(qat_model)]
        ```
        """
        return [(quantizer.min_var, quantizer.max_var) for quantizer in _quantizers(model)]

    def calibrate(self, model, data, steps=16):
        """Sets every activation range of a QAT model from `steps` batches of data.

        Each batch runs through the model in inference mode; each range is set
        to the batch's observed min and max (holding zero) before the layers
        after it run, so that they see calibrated inputs, and ends as the mean
        over the batches.

        Args:
            model: a model from `quantize`.
            data: a `tf.data.Dataset` or iterable of `(x, y)` / `x` batches.
            steps: the number of batches (>= 1).

        Returns:
            The number of ranges calibrated (0 for a model without any).

        Raises:
            ValueError: `steps` not a positive integer, `data` empty.
            BackendError: Keras 3 runs on another backend than TensorFlow.

        Example:

        ```python
        Keras3QAT().calibrate(qat_model, train_dataset, steps=16)
        ```
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Argument `steps` must be an integer >= 1. Received: steps={steps!r}")
        check_tensorflow()
        quantizers = _quantizers(model)
        if not quantizers:
            return 0
        batches = data.take(steps) if isinstance(data, tf.data.Dataset) else data
        for quantizer in quantizers:
            quantizer.observed = []
        try:
            for index, batch in enumerate(batches):
                if index == steps:
                    break
                model(_inputs_of(batch), training=False)
        finally:
            observed = [quantizer.observed for quantizer in quantizers]
            for quantizer in quantizers:
                quantizer.observed = None
        if not observed[0]:
            raise ValueError("Argument `data` must yield at least one batch. Received: an empty dataset")
        for quantizer, ranges in zip(quantizers, observed):
            if not ranges:  # only applied, never observed: a range the graph shares with a later op
                continue
            low, high = np.mean(np.asarray(ranges, "float64"), axis=0)
            quantizer.min_var.assign(low)
            quantizer.max_var.assign(high)
        return len(quantizers)

    def is_quantization_aware(self, model):
        """Returns whether `model` holds this engine's quantization layers.

        Args:
            model: any Keras 3 model.

        Returns:
            True for a model from `quantize` (or one loaded from its file).

        Example:

        ```python
        Keras3QAT().is_quantization_aware(qat_model)  # True
        ```
        """
        layers = model._flatten_layers(include_self=False, recursive=True) if isinstance(model, keras.Model) else ()
        return any(isinstance(layer, (ActivationQuantizer, QuantizedWeighted)) for layer in layers)

    def strip(self, model):
        """Returns the model to hand the TFLite converter: the QAT model itself.

        Its fake-quant ops are what the converter turns into int8 ranges.

        Args:
            model: a model from `quantize`.

        Returns:
            `model`.

        Example:

        ```python
        Keras3QAT().strip(qat_model).export(path, format="tf_saved_model")
        ```
        """
        return model
