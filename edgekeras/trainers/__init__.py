"""Trainers that run float training, pruning and quantization-aware fine-tuning as phases."""

from edgekeras.trainers.edge_trainer import PHASES, EdgeTrainer
from edgekeras.trainers.optimizers import OPTIMIZERS, phase_optimizer

__all__ = ["EdgeTrainer", "OPTIMIZERS", "PHASES", "phase_optimizer"]
