"""Keras callbacks that bring edge optimizations into `model.fit`, one per module.

- `MagnitudePruning` (magnitude_pruning.py): prune to a schedule while training.
- `ChannelPruning` (channel_pruning.py): ramp whole channel groups to zero while training.
- `PreserveSparsity` (preserve_sparsity.py): keep a pruned model's zeros.
- `TFLiteExport` (tflite_export.py): write verified .tflite files when `fit` ends.
- `EpochLine` (epoch_line.py): the epoch line without the per-layer figures.
"""

from edgekeras.callbacks.channel_pruning import ChannelPruning
from edgekeras.callbacks.epoch_line import EpochLine, on_console
from edgekeras.callbacks.magnitude_pruning import MagnitudePruning
from edgekeras.callbacks.masking import MaskingCallback, current_learning_rate
from edgekeras.callbacks.preserve_sparsity import PreserveSparsity
from edgekeras.callbacks.tflite_export import TFLiteExport

__all__ = [
    "ChannelPruning", "EpochLine", "MagnitudePruning", "MaskingCallback", "PreserveSparsity", "TFLiteExport",
    "current_learning_rate", "on_console",
]
