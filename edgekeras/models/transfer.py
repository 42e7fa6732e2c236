"""Transfer models (a tf_keras.applications backbone + pooling + softmax), built flat.

edgekeras builds the model flat from the start (the base's layers directly in
the outer graph, not as a nested sub-model), because TFMOT's
quantization-aware training refuses nested models. The seed's model is
MobileNetV2; `edgekeras.models.architectures` lists the other backbones.
`freeze_before` applies the same "fine-tune from this layer on" rule to a
model of your own.
"""

import os

from edgekeras.backend import by_name, check_model, for_model
from edgekeras.compat import keras
from edgekeras.errors import EdgekerasError
from edgekeras.models.architectures import get_architecture

__all__ = ["build_transfer_model", "freeze_before", "WeightsError"]


class WeightsError(EdgekerasError, ValueError):
    """A weights file is missing or does not fit the model's architecture."""


def _check_weights(weights, spec):
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
            f"weights={path!r}. Pass the path of a {spec.title} no-top .h5 file "
            '(e.g. ../shared/data/weights/...), "imagenet" to download, or None.'
        )
    return path


def _first_trainable_index(layers, trainable_from, valid_names, base=True):
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
                f"Argument `trainable_from` must be a {'base ' if base else ''}layer index in "
                f"[{-len(layers)}, {len(layers)}). Received: "
                f"trainable_from={trainable_from}"
            )
        return trainable_from % len(layers)
    names = [layer.name for layer in layers]
    if trainable_from not in names:
        # Keras 3's applications spell tf_keras' "expanded_conv_8/expand" and "Conv_1" as
        # "expanded_conv_8_expand" and "conv_1": the one name that differs only so is meant.
        spelled = [name for name in names if _spelling(name) == _spelling(trainable_from)]
        if len(spelled) == 1:
            return names.index(spelled[0])
        raise ValueError(
            f"Argument `trainable_from` must name a layer of the {'base ' if base else ''}model. "
            f"Received: trainable_from={trainable_from!r}. Valid names include {valid_names}."
        )
    return names.index(trainable_from)


def _spelling(name):
    return name.replace("/", "_").lower()


def _check_arguments(num_classes, image_size, dropout, spec, alpha):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "Argument `num_classes` must be an integer >= 2. "
            f"Received: num_classes={num_classes!r}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(
            f"Argument `image_size` must be an integer >= 32 ({spec.title} "
            f"downsamples by 32). Received: image_size={image_size!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if alpha != 1.0 and not spec.width_multiplier:
        raise ValueError(
            f"Argument `alpha` must be 1.0 for {spec.name!r}: only the MobileNets have a width multiplier. "
            f"Received: alpha={alpha!r}"
        )


def _base(spec, inputs, weights, alpha, library):
    """The backbone without top on `inputs`; a weights file that does not fit raises `WeightsError`."""
    built = f"{spec.title}({f'alpha={alpha}, ' if spec.width_multiplier else ''}include_top=False)"
    try:
        return spec.build(inputs, weights, alpha, library)
    except ValueError as error:
        if weights not in (None, "imagenet"):
            raise WeightsError(
                f"Argument `weights` does not fit {built}. Received: weights={weights!r} ({error}). "
                f"Pass a no-top {spec.title} .h5 file"
                f"{' saved for the same alpha' if spec.width_multiplier else ''}."
            ) from error
        raise
    except OSError as error:  # h5py: not an HDF5 file, or a truncated one
        if weights not in (None, "imagenet"):
            raise WeightsError(
                f"Argument `weights` names a file that is not a readable .h5 weights file ({error}). "
                f"Received: weights={weights!r}. Pass a no-top {spec.title} .h5 file (e.g. "
                "../shared/data/weights/...) and check that it was copied whole."
            ) from error
        raise


def _set_trainable(layers, first, train_batchnorm, library=keras):
    for index, layer in enumerate(layers):
        trainable = index >= first
        if isinstance(layer, library.layers.BatchNormalization) and not train_batchnorm:
            # Frozen BatchNorm stays in inference mode: the stable choice for
            # fine-tuning with small batches.
            trainable = False
        layer.trainable = trainable


def _resolve_trainable_from(trainable_from, spec, weights):
    if trainable_from != "auto":
        return trainable_from
    # Random weights are useless frozen: the whole base trains. Pretrained
    # ones are fine-tuned from the start of the last stage(s).
    return 0 if weights is None else spec.trainable_from


def freeze_before(model, trainable_from, *, train_batchnorm=False):
    """Freezes the layers of `model` before `trainable_from`; the layers from it on train.

    The rule `build_transfer_model` applies to its base, for a flat model of
    your own (a loaded file, a factory's model): BatchNormalization layers
    train only with `train_batchnorm`.

    Args:
        model: a flat tf_keras or Keras 3 functional model (`flatten` a
            nested one first).
        trainable_from: name or index (among the layers after the input) of
            the first trainable layer.
        train_batchnorm: whether BatchNormalization layers from there on train.

    Returns:
        `model`, its `trainable` flags set.

    Raises:
        ValueError: `trainable_from` names no layer of `model`.

    Example:

    ```python
    model = freeze_before(keras.models.load_model("trained.h5"), "dense_1")
    ```
    """
    check_model(model)
    library = for_model(model).keras
    layers = [layer for layer in model.layers if not isinstance(layer, library.layers.InputLayer)]
    names = [layer.name for layer in layers]
    hint = ", ".join(repr(n) for n in names[-3:])
    first = _first_trainable_index(layers, trainable_from, f"{hint} (the last ones)", base=False)
    _set_trainable(layers, first, train_batchnorm, library)
    return model


def build_transfer_model(
    num_classes=10,
    image_size=160,
    *,
    architecture="mobilenet_v2",
    alpha=1.0,
    weights="imagenet",
    trainable_from=None,
    train_batchnorm=False,
    dropout=0.0,
    name=None,
    keras="tf_keras",
):
    """Builds a backbone (MobileNetV2 by default) + global average pooling + softmax Dense, flat.

    The base's layers live directly in the returned functional model (no
    nested sub-model), so TFMOT can prune and quantize every layer.

    Args:
        num_classes: number of output classes.
        image_size: side of the square input images (at least 32).
        architecture: the tf_keras.applications backbone: "mobilenet_v2",
            "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0" to
            "efficientnet_b3" or "resnet50" (`edgekeras.choices.ARCHITECTURES`).
            Feed it images scaled as `get_architecture(architecture).normalization`
            says (the data loaders' `normalization` argument).
        alpha: width multiplier (MobileNets only).
        weights: `"imagenet"` (downloads), None (random init) or the path of
            a no-top `.h5` file of this architecture (and `alpha`).
        trainable_from: name or index of the first trainable base layer; the
            layers before it are frozen. None freezes the whole base; "auto"
            fine-tunes pretrained weights from the architecture's default
            layer (e.g. "block_16_expand" of MobileNetV2) and trains every
            layer of a randomly initialized base.
        train_batchnorm: whether BatchNormalization layers in the trainable
            part of the base are trained. By default they stay frozen (in
            inference mode), which is the stable choice for fine-tuning with
            small batches; train them when the base is randomly initialized.
        dropout: dropout rate before the classifier.
        name: model name (default: the architecture's, e.g.
            "mobilenetv2_transfer").
        keras: the Keras to build it with: `"tf_keras"` (Keras 2) or
            `"keras3"` (`import keras`); every edgekeras phase then follows
            the model's Keras.

    Returns:
        A compiled-free functional model of that Keras with input
        `(image_size, image_size, 3)` and softmax output.

    Raises:
        ValueError: an argument is out of range.
        WeightsError: the weights file is missing or of another architecture.

    Example:

    ```python
    model = build_transfer_model(10, 96, weights=None, trainable_from="block_16_expand")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    small = build_transfer_model(10, 64, architecture="mobilenet_v3_small", weights=None, trainable_from="auto")
    keras3_model = build_transfer_model(10, 96, weights=None, trainable_from="block_16_expand", keras="keras3")
    ```
    """
    library = by_name(keras).keras
    spec = get_architecture(architecture)
    _check_arguments(num_classes, image_size, dropout, spec, alpha)
    weights = _check_weights(weights, spec)
    inputs = library.Input((image_size, image_size, 3), name="image")
    base = _base(spec, inputs, weights, alpha, library)
    # Layer 0 is the shared Input; the base's real layers follow it.
    layers = [layer for layer in base.layers if not isinstance(layer, library.layers.InputLayer)]
    valid = f"{', '.join(spec.cut_points)} (or \"auto\": {spec.trainable_from})"
    first = _first_trainable_index(layers, _resolve_trainable_from(trainable_from, spec, weights), valid)
    _set_trainable(layers, first, train_batchnorm, library)
    x = library.layers.GlobalAveragePooling2D(name="global_average_pooling")(base.output)
    if dropout:
        x = library.layers.Dropout(dropout, name="dropout")(x)
    outputs = library.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return library.Model(inputs, outputs, name=name or spec.model_name)
