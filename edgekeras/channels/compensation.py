"""What a removed channel still gave its consumers, folded into their biases (data-free).

A channel is rarely zero where its consumers read it: after a
BatchNormalization and an activation it carries at least `act(beta)`, and
pretrained ImageNet networks have many channels whose scale |gamma| is tiny
but whose offset is not. Removing such a channel by its small scale takes a
near-constant input away from every consumer; on the demo's MobileNetV2,
removing the 10 % of expand channels with the smallest |gamma| without this
left the model at chance. The expected value of the channel is known without
data from its last normalization: the normalized channel is distributed
about `N(beta, gamma^2)` (the BatchNorm's own statistics), and the
activations after it map that distribution to a mean (Gauss-Hermite
quadrature through the very layers). That mean times the consumer's weights
is added to the consumer's bias, or to the offset of the BatchNormalization
right after a consumer without bias (the data-free bias absorption of Nagel
et al., "Data-Free Quantization", ICCV 2019).

Channels whose path to a consumer is not `BatchNormalization -> channelwise
layers` (a residual sum, a concatenation, a depthwise convolution after the
last normalization) get no compensation.

Example:

```python
channel_graph = analyse(model)
absorb_removed(channel_graph, {3: removed_now})  # before their weights are zeroed
```
"""

import numpy as np

from edgekeras import backend
from edgekeras.channels.groups import CHANNELWISE, NORM, PRODUCER

__all__ = ["absorb_removed", "expected_values"]

# Layers that leave a channel's mean as it is (pooling averages it, padding
# and cropping only touch the border, dropout and noise are off in inference).
_MEAN_PRESERVING = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Identity", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "UpSampling1D", "UpSampling2D", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
)
_POINTS, _WEIGHTS = np.polynomial.hermite.hermgauss(24)


def _producers(channel_graph):
    return {key: index for index, node in enumerate(channel_graph.graph.nodes) for key in node.outputs}


def _chain(channel_graph, key, producer_of):
    """`(norm node, [channelwise nodes after it, in order])` ending at tensor `key`, or None."""
    chain = []
    while key in producer_of:
        index = producer_of[key]
        node, kind = channel_graph.graph.nodes[index], channel_graph.kinds[index]
        if kind == NORM:
            return node, chain[::-1]
        if kind != CHANNELWISE:
            return None
        chain.append(node)
        key = node.inputs[0]
    return None


def _through(chain, values):
    """The channelwise layers applied to `values` (points x channels)."""
    for node in chain:
        if type(node.layer).__name__ not in _MEAN_PRESERVING:
            values = np.asarray(backend.for_model(node.layer).to_numpy(node.layer(values.astype("float32"))))
    return values


def expected_values(channel_graph, index, key, producer_of=None):
    """The expected value of each channel of group `index` on tensor `key`, or None when not known.

    Args:
        channel_graph: `analyse(model)`.
        index: the group's index.
        key: a tensor key that carries the group (a consumer's input).
        producer_of: `{tensor key: index of the node that outputs it}`,
            when the caller has it already.

    Returns:
        A float array of the group's size, or None (the path from the last
        normalization is not channelwise).
    """
    found = _chain(channel_graph, key, _producers(channel_graph) if producer_of is None else producer_of)
    if found is None:
        return None
    norm, chain = found
    layer = norm.layer
    start = dict(channel_graph.slices(norm.outputs[0])).get(index)
    if start is None:
        return None
    size = channel_graph.groups[index].size
    to_numpy = backend.for_model(layer).to_numpy
    gamma = to_numpy(layer.gamma)[start:start + size] if layer.scale else np.ones(size, "float32")
    beta = to_numpy(layer.beta)[start:start + size] if layer.center else np.zeros(size, "float32")
    points = beta[None, :] + np.sqrt(2.0) * np.abs(gamma)[None, :] * _POINTS[:, None]
    return (_WEIGHTS[:, None] * _through(chain, points)).sum(axis=0) / np.sqrt(np.pi)


def _next_norm(channel_graph, key):
    """The BatchNormalization node that alone reads tensor `key`, or None."""
    readers = [i for i, node in enumerate(channel_graph.graph.nodes) if key in node.inputs]
    if len(readers) == 1 and channel_graph.kinds[readers[0]] == NORM:
        return channel_graph.graph.nodes[readers[0]]
    return None


def _add_to_output(channel_graph, node, delta):
    """Adds `delta` to the consumer's output: its bias, else the offset of the BatchNorm after it."""
    layer = node.layer
    library = backend.for_model(layer)
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        layer.bias.assign(library.to_numpy(layer.bias) + delta.astype("float32"))
        return True
    norm = _next_norm(channel_graph, node.outputs[0])
    if norm is None or not norm.layer.center:
        return False
    bn = norm.layer
    scale = library.to_numpy(bn.gamma) if bn.scale else 1.0
    spread = np.sqrt(library.to_numpy(bn.moving_variance) + bn.epsilon)
    bn.beta.assign(library.to_numpy(bn.beta) + (scale * delta / spread).astype("float32"))
    return True


def absorb_removed(channel_graph, removed, means=None):
    """Folds the expected values of channels about to be removed into their consumers.

    Call it while the channels still hold their weights, then zero them.

    Args:
        channel_graph: `analyse(model)` of the model being pruned.
        removed: `{group index: boolean array}`, True for the channels now
            removed (only those: a channel absorbed twice counts twice).
        means: `{tensor key: per-channel means}` measured on data (see
            `edgekeras.channels.activations`); used where given, else the
            data-free estimate (`expected_values`).

    Returns:
        The number of consumer layers changed.
    """
    changed = 0
    producer_of = _producers(channel_graph)
    for node_index, node in enumerate(channel_graph.graph.nodes):
        if channel_graph.kinds[node_index] != PRODUCER or len(node.inputs) != 1:
            continue
        key = node.inputs[0]
        if not any(np.any(removed.get(index, False)) for index, _ in channel_graph.slices(key)):
            continue  # reads no channel removed now
        kernel = backend.for_model(node.layer).to_numpy(node.layer.kernel)
        weights = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)  # spatial taps summed
        delta = np.zeros(kernel.shape[-1])
        for index, start in channel_graph.slices(key):
            gone = removed.get(index)
            if not np.any(gone):
                continue
            if means is not None and key in means:
                values = np.asarray(means[key])[start:start + channel_graph.groups[index].size]
            else:
                values = expected_values(channel_graph, index, key, producer_of)
            if values is None:
                continue
            rows = start + np.flatnonzero(gone)
            delta += values[np.flatnonzero(gone)] @ weights[rows]
        if np.any(delta) and _add_to_output(channel_graph, node, delta):
            changed += 1
    return changed
