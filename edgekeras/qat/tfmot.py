"""The QAT engine of tf_keras (Keras 2) models: TensorFlow Model Optimization."""

import tensorflow_model_optimization as tfmot

from edgekeras import quantization
from edgekeras.models import is_pruning_wrapped, is_quantization_aware
from edgekeras.qat.engine import QATEngine
from edgekeras.qat.tfmot_ranges import floored_weight_ranges

__all__ = ["TFMOTEngine"]


class TFMOTEngine(QATEngine):
    """TFMOT's `quantize_apply` with edgekeras' layer registry and range calibration.

    The methods delegate to `edgekeras.quantization`, which documents the
    behaviour (schemes, calibration, frozen layers); conversion widens
    near-empty per-channel weight ranges (`edgekeras.qat.tfmot_ranges`).

    Example:

    ```python
    qat_model, scheme = TFMOTEngine().quantize(model)
    ```
    """

    name = "tfmot"

    def check(self, model, quantize_skip=(), quantize_configs=None):
        quantization.check_quantizable(model, quantize_skip, quantize_configs)

    def quantize(self, model, scheme="auto", quantize_skip=(), quantize_configs=None):
        return quantization.quantize_model(model, scheme, quantize_skip, quantize_configs)

    def activation_ranges(self, model):
        return quantization.activation_ranges(model)

    def calibrate(self, model, data, steps=16):
        return quantization.calibrate_activation_ranges(model, data, steps)

    def is_quantization_aware(self, model):
        return is_quantization_aware(model)

    def frozen_weights_made_trainable(self, model):
        return quantization.frozen_weights_made_trainable(model)

    def strip(self, model):
        if is_pruning_wrapped(model):
            return tfmot.sparsity.keras.strip_pruning(model)
        return model

    def conversion_scope(self, model):
        # Near-zero channels would get int32 bias overflows (tfmot_ranges.py).
        return floored_weight_ranges(model)
