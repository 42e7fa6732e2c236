"""The seed's transfer model (MobileNetV2 + pooling + softmax), built flat.

edgekeras builds the model flat from the start (the base's layers directly in
the outer graph, not as a nested sub-model), because TFMOT's
quantization-aware training refuses nested models.
"""

import os

from edgekeras.compat import keras
from edgekeras.errors import EdgekerasError

__all__ = ["build_transfer_model", "WeightsError"]


class WeightsError(EdgekerasError, ValueError):
    """A weights file is missing or does not fit the model's architecture."""


def _check_weights(weights):
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            'Argument `weights` must be "imagenet", None or the path of a '
            f".h5 weights file. Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise WeightsError(
            f"Argument `weights` names a file that does not exist. Received: "
            f"weights={path!r}. Pass the path of a MobileNetV2 no-top .h5 file "
            '(e.g. ../shared/data/weights/...), "imagenet" to download, or None.'
        )
    return path


def _first_trainable_index(layers, trainable_from):
    if trainable_from is None:
        return len(layers)
    if isinstance(trainable_from, bool):
        raise ValueError(
            "Argument `trainable_from` must be a layer name, a layer index or "
            f"None. Received: trainable_from={trainable_from!r}"
        )
    if isinstance(trainable_from, int):
        if not -len(layers) <= trainable_from < len(layers):
            raise ValueError(
                f"Argument `trainable_from` must be a base layer index in "
                f"[{-len(layers)}, {len(layers)}). Received: "
                f"trainable_from={trainable_from}"
            )
        return trainable_from % len(layers)
    names = [layer.name for layer in layers]
    if trainable_from not in names:
        blocks = sorted({n.split("_expand")[0] for n in names if n.startswith("block_") and "_expand" in n})
        raise ValueError(
            f"Argument `trainable_from` must name a layer of the base model. "
            f"Received: trainable_from={trainable_from!r}. Valid names include "
            f"{', '.join(b + '_expand' for b in blocks[-3:])} and Conv_1."
        )
    return names.index(trainable_from)


def _check_arguments(num_classes, image_size, dropout):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "Argument `num_classes` must be an integer >= 2. "
            f"Received: num_classes={num_classes!r}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(
            "Argument `image_size` must be an integer >= 32 (MobileNetV2 "
            f"downsamples by 32). Received: image_size={image_size!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}")


def _mobilenet_v2(inputs, weights, alpha):
    """MobileNetV2 without top on `inputs`; a weights file that does not fit raises `WeightsError`."""
    try:
        return keras.applications.MobileNetV2(input_tensor=inputs, include_top=False, weights=weights, alpha=alpha)
    except ValueError as error:
        if weights not in (None, "imagenet"):
            raise WeightsError(
                f"Argument `weights` does not fit MobileNetV2(alpha={alpha}, "
                f"include_top=False). Received: weights={weights!r} ({error}). "
                "Pass a no-top MobileNetV2 .h5 file saved for the same alpha."
            ) from error
        raise
    except OSError as error:  # h5py: not an HDF5 file, or a truncated one
        if weights not in (None, "imagenet"):
            raise WeightsError(
                f"Argument `weights` names a file that is not a readable .h5 weights file ({error}). "
                f"Received: weights={weights!r}. Pass a no-top MobileNetV2 .h5 file (e.g. "
                "../shared/data/weights/...) and check that it was copied whole."
            ) from error
        raise


def _set_trainable(base, trainable_from, train_batchnorm):
    # Layer 0 is the shared Input; the base's real layers follow it.
    base_layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = _first_trainable_index(base_layers, trainable_from)
    for index, layer in enumerate(base_layers):
        trainable = index >= first
        if isinstance(layer, keras.layers.BatchNormalization) and not train_batchnorm:
            # Frozen BatchNorm stays in inference mode: the stable choice for
            # fine-tuning with small batches.
            trainable = False
        layer.trainable = trainable


def build_transfer_model(
    num_classes=10,
    image_size=160,
    *,
    alpha=1.0,
    weights="imagenet",
    trainable_from=None,
    train_batchnorm=False,
    dropout=0.0,
    name="mobilenetv2_transfer",
):
    """Builds MobileNetV2 + global average pooling + softmax Dense, flat.

    The base's layers live directly in the returned functional model (no
    nested sub-model), so TFMOT can prune and quantize every layer.

    Args:
        num_classes: number of output classes.
        image_size: side of the square input images (at least 32).
        alpha: MobileNetV2 width multiplier.
        weights: `"imagenet"` (downloads), None (random init) or the path of
            a MobileNetV2 no-top `.h5` file for this `alpha`.
        trainable_from: name or index of the first trainable base layer; the
            layers before it are frozen. None freezes the whole base.
        train_batchnorm: whether BatchNormalization layers in the trainable
            part of the base are trained. By default they stay frozen (in
            inference mode), which is the stable choice for fine-tuning with
            small batches.
        dropout: dropout rate before the classifier.
        name: model name.

    Returns:
        A compiled-free tf_keras functional model with input
        `(image_size, image_size, 3)` in [-1, 1] and softmax output.

    Raises:
        ValueError: an argument is out of range.
        WeightsError: the weights file is missing or of another architecture.

    Example:

    ```python
    model = build_transfer_model(10, 96, weights=None, trainable_from="block_16_expand")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ```
    """
    _check_arguments(num_classes, image_size, dropout)
    weights = _check_weights(weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    base = _mobilenet_v2(inputs, weights, alpha)
    _set_trainable(base, trainable_from, train_batchnorm)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(base.output)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)
