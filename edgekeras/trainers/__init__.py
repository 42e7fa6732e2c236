"""Trainers that run float training, pruning and quantization-aware fine-tuning as phases."""

from edgekeras.trainers.edge_trainer import PHASES, EdgeTrainer
from edgekeras.trainers.quantization import (
    UnquantizableLayersError,
    is_quantization_aware,
    is_sparse,
    quantize_model,
    unquantizable_layers,
)

__all__ = [
    "EdgeTrainer",
    "PHASES",
    "UnquantizableLayersError",
    "is_quantization_aware",
    "is_sparse",
    "quantize_model",
    "unquantizable_layers",
]
