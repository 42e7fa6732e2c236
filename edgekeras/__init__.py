"""edgekeras: pruning, quantization-aware training and TFLite export inside `model.fit`.

edgekeras always uses tf_keras (Keras 2), because TensorFlow Model
Optimization supports nothing else; `edgekeras.keras` is that module, so users
can build models with it whatever `TF_USE_LEGACY_KERAS` says.
"""

from edgekeras.compat import keras

__version__ = "0.1.0"
__all__ = ["keras", "__version__"]
