"""The names edgekeras accepts for its options, in one module without TensorFlow.

The library checks its arguments against these tuples, and the config files
of `edgekeras run` and `edgekeras tune` are validated against the same ones,
so reading and checking a config never has to import TensorFlow.
"""

__all__ = [
    "CHANNEL_ALLOCATIONS", "CHANNEL_SCORES",
    "ARCHITECTURES", "ARCHITECTURE_NORMALIZATION", "CACHE_ENGINES", "CONVERSIONS", "IO_DTYPES", "NORMALIZATIONS",
    "OPTIMIZERS", "ORACLES", "POLICIES", "ALLOCATIONS", "STRATEGIES", "KERASES",
]

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
# How a target sparsity is shared among them (edgekeras.sparsity.global_magnitude_masks).
ALLOCATIONS = ("uniform", "global")
# How [channels] spreads a latency target over the channel groups.
CHANNEL_ALLOCATIONS = ("latency", "uniform")
# How channels are ranked (edgekeras.callbacks.channel_pruning.SCORES, TensorFlow-free here).
CHANNEL_SCORES = ("activation", "bn", "l2")
# tf.distribute strategies (edgekeras.distribute.get_strategy).
STRATEGIES = ("default", "mirrored", "multi_worker")
# How a frozen prefix is run to cache its activations (edgekeras.features).
CACHE_ENGINES = ("litert", "keras")
# The Kerases a model can be built with (edgekeras.backend.by_name): Keras 2 and Keras 3.
KERASES = ("tf_keras", "keras3")
# Optimizers by name (edgekeras.trainers.phase_optimizer; "sgd" with momentum 0.9).
OPTIMIZERS = ("adam", "sgd")
# keras-tuner oracles (edgekeras.tuning.make_oracle).
ORACLES = ("random", "bayesian", "hyperband")
# How pixels in [0, 255] are scaled before they enter the model
# (edgekeras.images.normalize): "minus_one_to_one" x / 127.5 - 1;
# "zero_to_one" x / 255; "pixels" unchanged (models with their own Rescaling);
# "caffe" RGB -> BGR minus the ImageNet channel means; "torch" x / 255 minus
# the ImageNet means, over the ImageNet standard deviations.
NORMALIZATIONS = ("minus_one_to_one", "zero_to_one", "pixels", "caffe", "torch")
# tf_keras.applications backbones (edgekeras.models.build_transfer_model)
# and the input scaling each was trained with: the data pipelines scale
# images this way, so training, int8 calibration, the .tflite file and its
# LiteRT evaluation all see the same inputs.
ARCHITECTURE_NORMALIZATION = {
    "mobilenet_v2": "minus_one_to_one",
    # tf_keras' MobileNetV3 and EfficientNet hold their own Rescaling layers.
    "mobilenet_v3_small": "pixels",
    "mobilenet_v3_large": "pixels",
    "efficientnet_b0": "pixels",
    "efficientnet_b1": "pixels",
    "efficientnet_b2": "pixels",
    "efficientnet_b3": "pixels",
    "resnet50": "caffe",
}
ARCHITECTURES = tuple(ARCHITECTURE_NORMALIZATION)
