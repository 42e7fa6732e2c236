"""Per-channel weight ranges of a QAT model that its int8 file can hold.

A quantization-aware model carries one fake-quant range per output channel
of each convolution kernel, and the converter takes those ranges as the int8
file's weight scales. It quantizes each channel's bias (BatchNorm folded in)
as int32 at the scale `input_scale * weight_scale`. A channel whose weights
are all near zero gets a weight scale so small that its bias overflows int32
and is clamped: the channel outputs about 0 instead of its constant, and
everything after it drifts. ImageNet MobileNetV2 has such dead channels
(`block_11_expand` channel 259: |w| <= 1e-8, a BatchNorm offset of 2.28).
The post-training converter widens such scales itself; for a QAT model
nothing does.

`floored_weight_ranges` widens every per-channel kernel range to at least
`RANGE_FLOOR` times the widest channel's of its layer while the converter
reads them, and restores them afterwards. A floored channel's weights round
to 0 in the file, which is what they were worth.

Example:

```python
with floored_weight_ranges(qat_model):
    flatbuffer = converter.convert()
```
"""

import contextlib
import re

import numpy as np

__all__ = ["RANGE_FLOOR", "floored_weight_ranges"]

# A range below a thousandth of its layer's widest holds weights that would
# round to 0 at the widest channel's scale (1/254 of it) anyway.
RANGE_FLOOR = 1e-3
_KERNEL_RANGE = re.compile(r"kernel_(min|max)(:\d+)?$")


def _kernel_ranges(model):
    """`(min_variable, max_variable)` of every per-channel kernel quantizer of `model`."""
    pairs = []
    for layer in model.layers:
        found = {}
        for variable in layer.weights:
            match = _KERNEL_RANGE.search(variable.name)
            if match and variable.shape.rank == 1 and variable.shape[0] > 1:
                found[(variable.name[: match.start()], match.group(1))] = variable
        for (prefix, side), variable in found.items():
            if side == "max" and (prefix, "min") in found:
                pairs.append((found[(prefix, "min")], variable))
    return pairs


@contextlib.contextmanager
def floored_weight_ranges(model, floor=None):
    """Widens a QAT model's near-empty per-channel kernel ranges while the block runs.

    Args:
        model: a quantization-aware tf_keras model (TFMOT wrappers); a model
            without per-channel kernel ranges is left as it is.
        floor: the narrowest range, as a fraction of the widest channel's
            range in the same layer (None: `RANGE_FLOOR`).

    Yields:
        The number of channels widened.

    Example:

    ```python
    with floored_weight_ranges(qat_model) as widened:
        flatbuffer = converter.convert()
    ```
    """
    floor = RANGE_FLOOR if floor is None else floor
    saved = []
    widened = 0
    try:
        for low, high in _kernel_ranges(model):
            lows, highs = low.numpy(), high.numpy()
            reach = floor * float(np.max(np.maximum(np.abs(lows), np.abs(highs))))
            narrow = (highs < reach) | (lows > -reach)
            if reach > 0 and narrow.any():
                saved.append((low, lows, high, highs))
                low.assign(np.minimum(lows, -reach))
                high.assign(np.maximum(highs, reach))
                widened += int(narrow.sum())
        yield widened
    finally:
        for low, lows, high, highs in saved:
            low.assign(lows)
            high.assign(highs)
