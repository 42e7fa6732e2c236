"""Quantization-aware training engines: TFMOT for tf_keras models, edgekeras' own for Keras 3 models."""
