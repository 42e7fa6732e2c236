"""Trainers that run float training, pruning and quantization-aware fine-tuning as phases."""

from edgekeras.trainers.edge_trainer import PHASES, EdgeTrainer

__all__ = ["EdgeTrainer", "PHASES"]
