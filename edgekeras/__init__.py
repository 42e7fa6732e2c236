"""edgekeras: pruning, quantization-aware training and TFLite export inside `model.fit`.

Models of both Kerases are taken: tf_keras (Keras 2, quantization-aware
training by TensorFlow Model Optimization) and Keras 3 (`import keras`,
edgekeras' own QAT engine); the model's own Keras picks the implementation
(`edgekeras.backend`, `edgekeras.qat`). `edgekeras.keras` is tf_keras, so
code written for it builds Keras 2 models whatever `TF_USE_LEGACY_KERAS` says.

The names a user needs first are here; each is loaded on first use (PEP 562),
so `import edgekeras`, reading a config and `edgekeras --help` do not import
TensorFlow. Everything else lives in the subpackages:

| step | where |
|---|---|
| data | `edgekeras.data` (TFDS image data), `edgekeras.folders` (image directories), `edgekeras.features` (cached activations) |
| model | `edgekeras.models` (transfer models of several architectures, flatten/clone/split, save/load) |
| channel pruning | `edgekeras.channels` (channel groups, `shrink` to a narrower model) |
| fit with callbacks | `edgekeras.callbacks`, `edgekeras.schedules`, `edgekeras.sparsity`, `edgekeras.quantization`, `edgekeras.qat` |
| phases | `edgekeras.trainers` (`EdgeTrainer`: float -> prune -> QAT) |
| export and evaluate | `edgekeras.litert` (convert, verify, run, evaluate .tflite files) |
| search | `edgekeras.tuning` (`EdgeTuner` on keras-tuner) |
| run / tune / report / CLI | `edgekeras.app` |

Example:

```python
import edgekeras

model = edgekeras.build_transfer_model(10, 96, weights=None)
pruning = edgekeras.MagnitudePruning(edgekeras.schedules.PolynomialDecay(0.0, 0.5, 0, 100))
```
"""

import importlib

from edgekeras.errors import EdgekerasError

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "keras": "edgekeras.compat",
    "MagnitudePruning": "edgekeras.callbacks",
    "ChannelPruning": "edgekeras.callbacks",
    "PreserveSparsity": "edgekeras.callbacks",
    "TFLiteExport": "edgekeras.callbacks",
    "EdgeTrainer": "edgekeras.trainers",
    "EdgeTuner": "edgekeras.tuning",
    "build_transfer_model": "edgekeras.models",
    "flatten": "edgekeras.models",
    "find_groups": "edgekeras.channels",
    "shrink": "edgekeras.channels",
    "load_model": "edgekeras.models",
    "save_model": "edgekeras.models",
    "load_image_data": "edgekeras.data",
    "load_image_folders": "edgekeras.folders",
    "export_tflite": "edgekeras.litert",
    "evaluate_tflite": "edgekeras.litert",
    "TFLiteModel": "edgekeras.litert",
}
_SUBPACKAGES = ("callbacks", "channels", "litert", "models", "schedules", "sparsity", "trainers", "tuning")

__all__ = ["EdgekerasError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"edgekeras.{name}")
    else:
        raise AttributeError(f"module 'edgekeras' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})
