"""Which weights get pruned, how their masks are computed, and how sparse they are.

Prunable weights are the kernels of `Conv2D` and `Dense` layers and the
`depthwise_kernel` of `DepthwiseConv2D` layers. They are found by walking the
model's layers recursively (through nested sub-models, subclassed models and
wrappers such as TFMOT's `QuantizeWrapperV2`), in the order the layers were
added, so "first" and "last" mean what they look like in the model's code.

Policies choose among them:

- `"all"`: every prunable layer.
- `"skip_first_last"`: all but the first convolution and the last Dense
  layer, the two layers whose pruning costs the most accuracy for the least
  size.
- `"pointwise"`: only 1x1 `Conv2D` layers, the ones XNNPACK's sparse
  inference kernels accelerate.
- a callable `policy(layer) -> bool`, called on each prunable layer.

Frozen layers (`trainable=False`) are left out unless asked for, since they
could not recover from the pruning.

Models of either Keras are read through `edgekeras.backend` (tf_keras or
Keras 3, whichever the model is). Masks come in two forms that select the
same weights: tensors (`magnitude_masks`, `global_magnitude_masks`,
`m_by_n_mask`), traced into tf_keras' per-batch `tf.function`, and numpy
arrays (`*_mask_arrays`), computed eagerly on any Keras 3 backend.
"""

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

from edgekeras import backend
from edgekeras.choices import ALLOCATIONS, POLICIES

__all__ = [
    "POLICIES",
    "check_policy",
    "prunable_weights",
    "prunable_layers",
    "select_weights",
    "select_layers",
    "prunable_weight",
    "ALLOCATIONS",
    "check_allocation",
    "magnitude_mask",
    "magnitude_masks",
    "global_magnitude_masks",
    "global_prune_counts",
    "m_by_n_mask",
    "magnitude_mask_arrays",
    "global_magnitude_mask_arrays",
    "m_by_n_mask_array",
    "weight_sparsity",
    "layer_sparsities",
    "overall_sparsity",
]


def check_allocation(allocation, max_layer_sparsity=None):
    """Raises ValueError unless `allocation` and `max_layer_sparsity` are usable together."""
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"Argument `allocation` must be one of {', '.join(repr(a) for a in ALLOCATIONS)}. "
            f"Received: allocation={allocation!r}"
        )
    if max_layer_sparsity is None:
        return
    if isinstance(max_layer_sparsity, bool) or not isinstance(max_layer_sparsity, (int, float)) or not (
        0.0 < max_layer_sparsity < 1.0
    ):
        raise ValueError(
            "Argument `max_layer_sparsity` must be in (0, 1) or None. "
            f"Received: max_layer_sparsity={max_layer_sparsity!r}"
        )
    if allocation != "global":
        raise ValueError(
            "Argument `max_layer_sparsity` bounds the per-layer sparsity of global allocation only. "
            f"Received: max_layer_sparsity={max_layer_sparsity!r} with allocation={allocation!r}; "
            'pass allocation="global" or drop max_layer_sparsity.'
        )


def check_policy(policy, argument="policy"):
    """Returns `policy` if it is a known policy name or a callable."""
    if callable(policy) or (isinstance(policy, str) and policy in POLICIES):
        return policy
    raise ValueError(
        f"Argument `{argument}` must be one of {', '.join(repr(p) for p in POLICIES)} "
        f"or a callable `policy(layer) -> bool`. Received: {argument}={policy!r}"
    )


def prunable_weight(layer, model=None):
    """Returns the variable pruning acts on for `layer`, or None.

    Args:
        layer: a layer, tf_keras or Keras 3.
        model: the model holding `layer`; needed when `layer` sits inside a
            TFMOT `QuantizeWrapper`, which takes the kernel variable over.

    Returns:
        The kernel (`depthwise_kernel` for depthwise convolutions), or None
        if `layer` has no prunable weight.

    Example:

    ```python
    prunable_weight(model.get_layer("conv"))  # the Conv2D's kernel
    ```
    """
    return backend.for_model(layer).prunable_weight(layer, model)


def prunable_weights(model):
    """Returns `[(layer, variable)]` for every prunable layer of `model`, in order."""
    return backend.for_model(model).prunable_weights(model)


def prunable_layers(model):
    """Returns the built layers of `model` that have a prunable weight."""
    return [layer for layer, _ in prunable_weights(model)]


def _is_pointwise(layer, keras_backend):
    # Conv2DTranspose has no prunable weight, so never gets here.
    return keras_backend.is_conv(layer) and tuple(layer.kernel_size) == (1, 1) and getattr(layer, "groups", 1) == 1


def select_weights(model, policy="all", include_frozen=False):
    """Returns `[(layer, variable)]` for the prunable layers `policy` selects.

    Args:
        model: a built model, tf_keras or Keras 3 (functional, Sequential,
            nested, subclassed or quantization-aware).
        policy: a name from `POLICIES` or a callable `policy(layer) -> bool`.
        include_frozen: also select layers with `trainable=False`.

    Returns:
        A list of `(layer, variable)` pairs, in model order.

    Example:

    ```python
    pairs = select_weights(model, "skip_first_last")
    ```
    """
    check_policy(policy)
    keras_backend = backend.for_model(model)
    every = keras_backend.prunable_weights(model)
    candidates = every if include_frozen else [(layer, w) for layer, w in every if layer.trainable]
    if callable(policy):
        return [(layer, w) for layer, w in candidates if policy(layer)]
    if policy == "all":
        return candidates
    if policy == "pointwise":
        return [(layer, w) for layer, w in candidates if _is_pointwise(layer, keras_backend)]
    # skip_first_last: decided on all prunable layers, frozen or not, so that
    # freezing the stem does not make the next layer "first".
    convs = [layer for layer, _ in every if keras_backend.is_conv(layer)]
    denses = [layer for layer, _ in every if keras_backend.is_dense(layer)]
    skipped = {id(convs[0])} if convs else set()
    if denses:
        skipped.add(id(denses[-1]))
    return [(layer, w) for layer, w in candidates if id(layer) not in skipped]


def select_layers(model, policy="all", include_frozen=False):
    """Returns the prunable layers of `model` that `policy` selects (see `select_weights`)."""
    return [layer for layer, _ in select_weights(model, policy, include_frozen)]


def _thresholds(sparsity, *arrays):
    thresholds = []
    for array in arrays:
        flat = np.abs(array).ravel()
        prune = min(int(round(flat.size * float(sparsity))), flat.size - 1)  # keep >= 1 weight
        if prune <= 0:
            thresholds.append(np.array(-1.0, array.dtype))
        else:
            # Introselect, O(n): an order of magnitude faster than a sort or
            # tf.math.top_k over the whole kernel, and mask updates sit in
            # the training loop.
            thresholds.append(np.partition(flat, prune - 1)[prune - 1].astype(array.dtype))
    return thresholds


def magnitude_masks(weights, sparsity):
    """Returns 0/1 masks keeping the largest-magnitude `1 - sparsity` of each tensor.

    Per tensor, the `round(size * sparsity)` smallest magnitudes are zeroed
    (at least one weight is kept): the threshold is their largest value,
    found by selection rather than sorting. Only ties at the threshold, e.g.
    weights already exactly zero beyond the target, can zero more.

    Args:
        weights: a list of tensors.
        sparsity: scalar fraction of zeros in [0, 1), applied to each.

    Returns:
        A list of masks with the shapes and dtypes of `weights`.
    """
    weights = list(weights)
    if not weights:
        return []
    dtypes = [w.dtype for w in weights]
    thresholds = tf.numpy_function(
        _thresholds, [tf.cast(sparsity, tf.float64), *weights], dtypes, stateful=False
    )
    if not isinstance(thresholds, (list, tuple)):  # one output comes back bare
        thresholds = [thresholds]
    return [tf.cast(tf.abs(w) > t, w.dtype) for w, t in zip(weights, thresholds)]


def global_prune_counts(sizes_or_arrays, sparsity, max_layer_sparsity=None):
    """How many weights of each tensor global magnitude pruning zeroes.

    The `round(total * sparsity)` smallest magnitudes over all tensors
    together are pruned, so a layer of small weights gives up more than one
    of large weights. With `max_layer_sparsity`, a tensor that would pass
    that bound is held at it and the rest of the budget is shared among the
    others by the same rule (repeated until no bound is passed), so the total
    stays exact while the bound allows it. Every tensor keeps >= 1 weight.

    Args:
        sizes_or_arrays: the weight arrays (numpy).
        sparsity: overall fraction of zeros in [0, 1).
        max_layer_sparsity: per-tensor bound in (0, 1), or None.

    Returns:
        An int64 array of counts, one per tensor.

    Example:

    ```python
    global_prune_counts([np.ones(10), np.full(10, 0.1)], 0.5)  # array([1, 9]): each keeps >= 1 weight
    ```
    """
    magnitudes = [np.abs(np.asarray(a)).ravel() for a in sizes_or_arrays]
    sizes = np.array([m.size for m in magnitudes], np.int64)
    caps = sizes - 1
    if max_layer_sparsity is not None:
        caps = np.minimum(caps, np.floor(sizes * float(max_layer_sparsity)).astype(np.int64))
    budget = min(int(round(sizes.sum() * float(sparsity))), int(caps.sum()))
    counts = np.zeros(len(sizes), np.int64)
    free = np.ones(len(sizes), bool)
    while budget > 0 and free.any():
        members = np.flatnonzero(free)
        pooled = np.concatenate([magnitudes[i] for i in members])
        owner = np.repeat(np.arange(len(members)), sizes[members])
        take = min(budget, pooled.size)
        chosen = np.argpartition(pooled, take - 1)[:take] if take < pooled.size else np.arange(pooled.size)
        wanted = np.bincount(owner[chosen], minlength=len(members))
        over = wanted > caps[members]
        if not over.any():
            counts[members] = wanted
            break
        # Hold the layers past their bound at it and share the rest again.
        for index in members[over]:
            counts[index] = caps[index]
            free[index] = False
        budget -= int(caps[members[over]].sum())
    return counts


def _global_thresholds(sparsity, max_layer_sparsity, *arrays):
    bound = None if max_layer_sparsity < 0 else float(max_layer_sparsity)
    counts = global_prune_counts(arrays, sparsity, bound)
    thresholds = []
    for array, count in zip(arrays, counts):
        flat = np.abs(array).ravel()
        thresholds.append(
            np.array(-1.0, array.dtype) if count <= 0 else np.partition(flat, count - 1)[count - 1].astype(array.dtype)
        )
    return thresholds


def global_magnitude_masks(weights, sparsity, max_layer_sparsity=None):
    """Returns 0/1 masks pruning the smallest magnitudes over all `weights` together.

    See `global_prune_counts` for how the zeros are shared; only ties at a
    layer's threshold can zero more than the count.

    Args:
        weights: a list of tensors.
        sparsity: overall fraction of zeros in [0, 1).
        max_layer_sparsity: per-tensor bound in (0, 1), or None.

    Returns:
        A list of masks with the shapes and dtypes of `weights`.
    """
    weights = list(weights)
    if not weights:
        return []
    bound = -1.0 if max_layer_sparsity is None else float(max_layer_sparsity)
    thresholds = tf.numpy_function(
        _global_thresholds,
        [tf.cast(sparsity, tf.float64), tf.constant(bound, tf.float64), *weights],
        [w.dtype for w in weights],
        stateful=False,
    )
    if not isinstance(thresholds, (list, tuple)):
        thresholds = [thresholds]
    return [tf.cast(tf.abs(w) > t, w.dtype) for w, t in zip(weights, thresholds)]


def magnitude_mask(weights, sparsity):
    """`magnitude_masks` for one tensor."""
    return magnitude_masks([weights], sparsity)[0]


def m_by_n_mask(weights, m_by_n=(2, 4)):
    """Returns a mask with `m` zeros in each block of `n` input-channel weights.

    Uses TFMOT's `weights_rearrange` / `generate_m_by_n_mask` /
    `m_by_n_sparsity_mask_prepare`, i.e. blocks along the last axis of the
    TFLite layout. Weights of rank 2 (Dense) and 4 (convolutions) only.
    """
    if weights.shape.rank not in (2, 4):
        raise ValueError(f"m-by-n sparsity needs a rank 2 or 4 weight. Received shape {weights.shape}")
    rearranged = pruning_utils.weights_rearrange(weights)
    mask = pruning_utils.generate_m_by_n_mask(rearranged, tuple(m_by_n))
    mask = pruning_utils.m_by_n_sparsity_mask_prepare(mask, weights.shape)
    return tf.cast(mask, weights.dtype)


def magnitude_mask_arrays(arrays, sparsity):
    """`magnitude_masks` on numpy arrays, eagerly: the same masks, no TensorFlow.

    Args:
        arrays: a list of numpy arrays.
        sparsity: fraction of zeros in [0, 1), applied to each.

    Returns:
        A list of 0/1 numpy masks with the shapes and dtypes of `arrays`.

    Example:

    ```python
    magnitude_mask_arrays([np.array([0.1, -2.0, 0.5, 3.0])], 0.5)  # [array([0., 1., 0., 1.])]
    ```
    """
    arrays = [np.asarray(a) for a in arrays]
    return [(np.abs(a) > t).astype(a.dtype) for a, t in zip(arrays, _thresholds(float(sparsity), *arrays))]


def global_magnitude_mask_arrays(arrays, sparsity, max_layer_sparsity=None):
    """`global_magnitude_masks` on numpy arrays, eagerly: the same masks, no TensorFlow.

    Args:
        arrays: a list of numpy arrays.
        sparsity: overall fraction of zeros in [0, 1).
        max_layer_sparsity: per-array bound in (0, 1), or None.

    Returns:
        A list of 0/1 numpy masks with the shapes and dtypes of `arrays`.
    """
    arrays = [np.asarray(a) for a in arrays]
    bound = -1.0 if max_layer_sparsity is None else float(max_layer_sparsity)
    thresholds = _global_thresholds(float(sparsity), bound, *arrays)
    return [(np.abs(a) > t).astype(a.dtype) for a, t in zip(arrays, thresholds)]


def m_by_n_mask_array(array, m_by_n=(2, 4)):
    """`m_by_n_mask` on a numpy array, eagerly: TFMOT's blocks and choice, no TensorFlow.

    Blocks of `n` run along the input channels of the TFLite layout; in each,
    the `n - m` largest magnitudes are kept, the first one winning a tie (as
    `tf.math.top_k` does).

    Args:
        array: a rank 2 (Dense) or rank 4 (convolution) numpy array.
        m_by_n: `(m, n)`, `m` zeros in every block of `n`.

    Returns:
        A 0/1 numpy mask with the shape and dtype of `array`.

    Raises:
        ValueError: if `array` is not of rank 2 or 4.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        rows = array.T
    elif array.ndim == 4:
        rows = np.transpose(array, (3, 0, 1, 2)).reshape(-1, array.shape[2])
    else:
        raise ValueError(f"m-by-n sparsity needs a rank 2 or 4 weight. Received shape {array.shape}")
    zeros, size = m_by_n
    # TFMOT pads a whole block when the row already divides into blocks.
    padded = np.pad(np.abs(rows), ((0, 0), (0, size - rows.shape[1] % size)))
    blocks = padded.reshape(-1, size)
    kept = np.argsort(-blocks, axis=1, kind="stable")[:, : size - zeros]
    mask = np.zeros(blocks.shape, array.dtype)
    np.put_along_axis(mask, kept, 1, axis=1)
    mask = mask.reshape(padded.shape)[:, : rows.shape[1]]
    if array.ndim == 2:
        return np.ascontiguousarray(mask.T)
    out, height, width, inputs = array.shape[3], array.shape[0], array.shape[1], array.shape[2]
    return np.ascontiguousarray(mask.reshape(out, height, width, inputs).transpose(1, 2, 3, 0))


def weight_sparsity(weight):
    """Fraction of exact zeros in a variable or array, as a Python float."""
    values = np.asarray(weight)
    return float(np.mean(values == 0)) if values.size else 0.0


def layer_sparsities(model):
    """Returns `{layer name: fraction of exact zeros}` for every prunable layer.

    Quantization-aware models are looked into: the names are the wrapped
    layers' names.
    """
    return {layer.name: weight_sparsity(weight) for layer, weight in prunable_weights(model)}


def overall_sparsity(model, pairs=None):
    """Fraction of exact zeros over the prunable weights (of `pairs`, default all)."""
    pairs = prunable_weights(model) if pairs is None else pairs
    zeros = total = 0
    for _, weight in pairs:
        values = np.asarray(weight)
        zeros += int(np.sum(values == 0))
        total += values.size
    return zeros / total if total else 0.0
