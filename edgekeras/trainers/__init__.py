"""Trainers that run float training, pruning and quantization-aware fine-tuning as phases."""
