"""Trainers that run float training, pruning and quantization-aware fine-tuning as phases.

- `edge_trainer`: `EdgeTrainer`, the phases and what each leaves behind.
- `checks`: its checks of arguments and training data, made before any training.
- `optimizers`: one fresh optimizer per phase (`make_optimizer`, `phase_optimizer`).
"""

from edgekeras.trainers.edge_trainer import PHASES, EdgeTrainer
from edgekeras.trainers.optimizers import OPTIMIZERS, make_optimizer, phase_optimizer

__all__ = ["EdgeTrainer", "OPTIMIZERS", "PHASES", "make_optimizer", "phase_optimizer"]
