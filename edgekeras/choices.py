"""The names edgekeras accepts for its options, in one module without TensorFlow.

The library checks its arguments against these tuples, and the config files
of `edgekeras run` and `edgekeras tune` are validated against the same ones,
so reading and checking a config never has to import TensorFlow.
"""

__all__ = ["CACHE_ENGINES", "CONVERSIONS", "IO_DTYPES", "ORACLES", "POLICIES", "STRATEGIES"]

# .tflite conversions (edgekeras.litert.convert). No sparse int8: LiteRT 2.3's
# XNNPACK delegate fails to prepare the sparse int8 FULLY_CONNECTED that
# EXPERIMENTAL_SPARSITY emits ("failed to delegate FULLY_CONNECTED node"), so
# such a file would not run with default settings. Pruned int8 models are
# exported dense; their zeros show in the gzip size.
CONVERSIONS = ("float32", "float16", "dynamic_int8", "int8", "sparse_float32")
# Input/output dtypes of full-integer int8 files.
IO_DTYPES = ("float32", "int8", "uint8")
# Which layers are pruned (edgekeras.sparsity.select_weights).
POLICIES = ("all", "skip_first_last", "pointwise")
# tf.distribute strategies (edgekeras.distribute.get_strategy).
STRATEGIES = ("default", "mirrored", "multi_worker")
# How a frozen prefix is run to cache its activations (edgekeras.features).
CACHE_ENGINES = ("litert", "keras")
# keras-tuner oracles (edgekeras.tuning.make_oracle).
ORACLES = ("random", "bayesian", "hyperband")
