"""The interface every quantization-aware training engine implements."""

import contextlib

__all__ = ["QATEngine"]


class QATEngine:
    """Makes float models quantization-aware, calibrates them and hands them to the converter.

    `EdgeTrainer`, the trial conversion and `edgekeras.litert.convert` call
    only these methods; `edgekeras.qat.engine_for(model)` returns the engine
    of the model's Keras. A subclass implements every method below.

    Example:

    ```python
    engine = edgekeras.qat.engine_for(model)
    engine.check(model)                         # before any training
    qat_model, scheme = engine.quantize(model)  # a new, uncompiled model
    engine.calibrate(qat_model, train_batches, steps=16)
    ```
    """

    name = None

    def check(self, model, quantize_skip=(), quantize_configs=None):
        """Raises before training when `model` cannot be made quantization-aware.

        Args:
            model: a float model.
            quantize_skip: names of layers to leave in float.
            quantize_configs: `{layer name: config}` for layers the engine
                does not know (engine-specific config objects).

        Raises:
            UnquantizableLayersError: one error naming every layer the
                engine cannot quantize.
            ValueError: bad argument, or a model the engine cannot take.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `check`")

    def quantize(self, model, scheme="auto", quantize_skip=(), quantize_configs=None):
        """Returns `(qat_model, scheme_name)`: a new, uncompiled quantization-aware copy.

        Args:
            model: a float model (pruned or not).
            scheme: `"auto"` (prune-preserving when the model is sparse),
                `"default"` or `"prune_preserve"`.
            quantize_skip: names of layers to leave in float.
            quantize_configs: as for `check`.

        Returns:
            The copy, holding `model`'s weights and `trainable` flags, and
            the scheme it used (`"default"` or `"prune_preserve"`).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `quantize`")

    def activation_ranges(self, model):
        """Returns `[(min_variable, max_variable)]`: the activation ranges QAT learns."""
        raise NotImplementedError(f"{type(self).__name__} must implement `activation_ranges`")

    def calibrate(self, model, data, steps=16):
        """Sets the activation ranges from `steps` batches of `data`; returns how many ranges.

        Args:
            model: a quantization-aware model from `quantize`.
            data: a `tf.data.Dataset` or iterable of `(x, y)` or `x` batches.
            steps: batches to read (>= 2).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `calibrate`")

    def is_quantization_aware(self, model):
        """Returns True if `model` came from `quantize`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `is_quantization_aware`")

    def frozen_weights_made_trainable(self, model):
        """Returns variables of frozen layers that QAT would train; the trainer holds them still.

        Engines that keep frozen layers frozen return an empty list.
        """
        return []

    def strip(self, model):
        """Returns the model to hand the converter: training-only wrappers (pruning) removed."""
        return model

    def conversion_scope(self, model):
        """A context manager around the converter's read of a quantization-aware `model`."""
        return contextlib.nullcontext()
