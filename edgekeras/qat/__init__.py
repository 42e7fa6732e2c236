"""Quantization-aware training engines, one per Keras, behind one interface.

A tf_keras (Keras 2) model is made quantization-aware by TensorFlow Model
Optimization (`TFMOTEngine`, `edgekeras.qat.tfmot`); a Keras 3 model by
edgekeras' own engine built on Keras 3's public API (`Keras3QAT`,
`edgekeras.qat.keras3`). `engine_for(model)` picks the engine from the
model's own Keras, so the trainer and the conversion code never ask which
Keras they hold.
"""

from edgekeras.backend import is_keras3
from edgekeras.qat.engine import QATEngine
from edgekeras.qat.keras3 import Keras3QAT, Keras3UnquantizableLayersError
from edgekeras.qat.tfmot import TFMOTEngine

__all__ = ["QATEngine", "TFMOTEngine", "Keras3QAT", "Keras3UnquantizableLayersError", "engine_for"]

_TFMOT = TFMOTEngine()
_KERAS3 = Keras3QAT()


def engine_for(model):
    """Returns the QAT engine for `model`'s Keras.

    Args:
        model: a tf_keras or Keras 3 model, float or quantization-aware.

    Returns:
        A `QATEngine`: `Keras3QAT` for a Keras 3 model, `TFMOTEngine`
        otherwise.

    Example:

    ```python
    engine = engine_for(model)
    qat_model, scheme = engine.quantize(model)
    engine.calibrate(qat_model, train_batches, steps=16)
    ```
    """
    return _KERAS3 if is_keras3(model) else _TFMOT
