"""Keras callbacks that bring edge optimizations into `model.fit`."""

from edgekeras.callbacks.pruning import MagnitudePruning, PreserveSparsity

__all__ = ["MagnitudePruning", "PreserveSparsity"]
