"""Channel groups: the sets of channels of a model that must be removed together.

Removing output channel `c` of a convolution also removes input channel `c`
of every layer that reads it: the BatchNormalization after it, a depthwise
convolution (whose output channel `c` goes too), the next convolution's input
channel. Outputs joined by a residual `Add`, a `Concatenate`'s slice or a
squeeze-excite `Multiply` are coupled: one kept/removed decision for all of
them. A `ChannelGroup` names one such set by the layers it touches.
"""

import dataclasses

__all__ = ["ChannelGroup"]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """One set of channels that is kept or removed as a whole.

    Attributes:
        name: the group's name (its first producer's layer name).
        size: channels in the group.
        producers: layers whose output channels (the kernel's last axis of a
            `Conv2D`/`Dense`) are the group's channels, in graph order.
        passthrough: layers that carry the channels one to one and lose the
            removed ones too: `BatchNormalization`, `DepthwiseConv2D`
            (kernel axis 2), activations, pooling.
        consumers: layers whose input channels (a `Conv2D`/`Dense` kernel's
            second-to-last axis) are the group's channels.
        prunable: False when the channels are tied to the model's input or
            output (the classifier's classes, the image's RGB), so no channel
            may go.

    Example:

    ```python
    group = ChannelGroup(
        name="block_1_expand", size=96,
        producers=("block_1_expand",),
        passthrough=("block_1_expand_BN", "block_1_expand_relu", "block_1_depthwise",
                     "block_1_depthwise_BN", "block_1_depthwise_relu"),
        consumers=("block_1_project",),
        prunable=True,
    )
    ```
    """

    name: str
    size: int
    producers: tuple
    passthrough: tuple
    consumers: tuple
    prunable: bool = True
