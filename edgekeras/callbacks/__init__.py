"""Keras callbacks that bring edge optimizations into `model.fit`."""
