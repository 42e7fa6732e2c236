"""Models: graph surgery, the transfer model, and saving/loading every phase's model.

- `graph`: `flatten`, `clone_with_weights`, `split_model`, `assemble_with_weights`,
  and what a model holds (`is_nested`, `is_quantization_aware`, `is_pruning_wrapped`).
- `transfer`: `build_transfer_model` (MobileNetV2, MobileNetV3, EfficientNet or ResNet50
  + pooling + softmax, flat), `freeze_before` for your own models.
- `architectures`: the backbones, their input scaling and default fine-tuning cut.
- `saving`: `save_model` / `load_model` for float, pruned and quantization-aware models.
"""

from edgekeras.models.graph import (
    assemble_with_weights,
    clone_with_weights,
    custom_objects,
    flatten,
    is_nested,
    is_pruning_wrapped,
    is_quantization_aware,
    split_model,
)
from edgekeras.models.saving import FORMATS, ModelFileError, UnsafeModelError, load_model, model_file_name, save_model
from edgekeras.models.architectures import ARCHITECTURE_SPECS, Architecture, get_architecture
from edgekeras.models.transfer import WeightsError, build_transfer_model, freeze_before

__all__ = [
    "ARCHITECTURE_SPECS",
    "Architecture",
    "FORMATS",
    "ModelFileError",
    "UnsafeModelError",
    "WeightsError",
    "assemble_with_weights",
    "build_transfer_model",
    "clone_with_weights",
    "custom_objects",
    "flatten",
    "freeze_before",
    "get_architecture",
    "is_nested",
    "is_pruning_wrapped",
    "is_quantization_aware",
    "load_model",
    "model_file_name",
    "save_model",
    "split_model",
]
