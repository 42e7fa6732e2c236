"""The tf_keras.applications backbones of `build_transfer_model`, and what edgekeras knows of each.

Each `Architecture` names the tf_keras builder, the input scaling its
ImageNet weights were trained with (`edgekeras.choices.ARCHITECTURE_NORMALIZATION`,
which the data pipelines follow), and the layer where fine-tuning starts by
default (`trainable_from="auto"` with pretrained weights). That layer starts
a block without a residual connection around it, so `split_model` can cut
the model there and the frozen part's activations can be cached.

Example:

```python
from edgekeras.models.architectures import get_architecture

spec = get_architecture("mobilenet_v3_small")
print(spec.title, spec.normalization, spec.trainable_from)
```
"""

import dataclasses

from edgekeras.choices import ARCHITECTURE_NORMALIZATION, ARCHITECTURES
from edgekeras.compat import keras

__all__ = ["Architecture", "ARCHITECTURE_SPECS", "get_architecture"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One tf_keras.applications backbone.

    Attributes:
        name: the name edgekeras uses, e.g. "mobilenet_v3_small".
        title: the tf_keras builder's name, e.g. "MobileNetV3Small".
        trainable_from: first fine-tuned layer of `trainable_from="auto"`
            with pretrained weights: the start of the last stage(s), a point
            no skip connection crosses.
        cut_points: other good `trainable_from` values, named in messages.
        width_multiplier: whether the builder takes `alpha`.
        model_name: default name of the transfer model.
    """

    name: str
    title: str
    trainable_from: str
    cut_points: tuple
    width_multiplier: bool
    model_name: str

    @property
    def normalization(self):
        """How input pixels are scaled for this backbone (see `edgekeras.images.normalize`)."""
        return ARCHITECTURE_NORMALIZATION[self.name]

    def build(self, inputs, weights, alpha, library=keras):
        """The backbone without its top on `inputs` (its layers join the caller's graph), from `library`'s applications."""
        builder = getattr(library.applications, self.title)
        options = {"alpha": alpha} if self.width_multiplier else {}
        base = builder(input_tensor=inputs, include_top=False, weights=weights, **options)
        if weights is None:
            _fast_batchnorm_statistics(base, library)
        return base


# BatchNorm momentum for backbones trained from random weights. keras.applications
# use 0.999 (MobileNetV3, EfficientNet), tuned for fine-tuning ImageNet statistics:
# from scratch, a run of a few thousand steps leaves the moving statistics near
# their initial 0/1, and the trained model predicts one class at inference (measured:
# MobileNetV3-Small, 1,570 steps, 58.7 % training accuracy, 10.0 % test accuracy).
RANDOM_INIT_BATCHNORM_MOMENTUM = 0.9


def _fast_batchnorm_statistics(base, library):
    for layer in base.layers:
        if isinstance(layer, library.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, RANDOM_INIT_BATCHNORM_MOMENTUM)


def _efficientnet(variant):
    return Architecture(
        f"efficientnet_b{variant}", f"EfficientNetB{variant}", "block6a_expand_conv",
        ("block5a_expand_conv", "block6a_expand_conv", "block7a_expand_conv", "top_conv"), False,
        f"efficientnetb{variant}_transfer",
    )


ARCHITECTURE_SPECS = {
    spec.name: spec
    for spec in (
        Architecture(
            "mobilenet_v2", "MobileNetV2", "block_16_expand",
            ("block_13_expand", "block_15_expand", "block_16_expand", "Conv_1"), True, "mobilenetv2_transfer",
        ),
        # Blocks 8 (Small) and 12 (Large) start the last stage: the stride-2
        # block after which every block of the stage is residual.
        Architecture(
            "mobilenet_v3_small", "MobileNetV3Small", "expanded_conv_8/expand",
            ("expanded_conv_6/expand", "expanded_conv_8/expand", "Conv_1"), True, "mobilenetv3small_transfer",
        ),
        Architecture(
            "mobilenet_v3_large", "MobileNetV3Large", "expanded_conv_12/expand",
            ("expanded_conv_10/expand", "expanded_conv_12/expand", "Conv_1"), True, "mobilenetv3large_transfer",
        ),
        *(_efficientnet(variant) for variant in range(4)),
        # conv5_block1's projection shortcut starts from the same tensor as
        # its first conv, so a cut there crosses no skip connection.
        Architecture(
            "resnet50", "ResNet50", "conv5_block1_1_conv", ("conv4_block1_1_conv", "conv5_block1_1_conv"), False,
            "resnet50_transfer",
        ),
    )
}


def get_architecture(name):
    """The `Architecture` called `name`.

    Args:
        name: one of `edgekeras.choices.ARCHITECTURES`.

    Returns:
        An `Architecture`.

    Raises:
        ValueError: `name` is not one of those.

    Example:

    ```python
    get_architecture("resnet50").normalization  # "caffe"
    ```
    """
    if not isinstance(name, str) or name not in ARCHITECTURE_SPECS:
        raise ValueError(
            f"Argument `architecture` must be one of ({', '.join(repr(a) for a in ARCHITECTURES)}). "
            f"Received: architecture={name!r}"
        )
    return ARCHITECTURE_SPECS[name]
