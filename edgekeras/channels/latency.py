"""A per-layer latency table: what each layer of a model costs at the widths it may be slimmed to.

The latency of an int8 .tflite file is close to the sum of the latencies of
its convolutions, depthwise convolutions, fully connected layers and the few
channel-wise ops (residual `Add`, pooling) between them, and each of those
depends, at the layer's fixed spatial shape, only on its input and output
channel counts. A `ZeroPadding2D` before a convolution costs nothing: XNNPACK
folds it into the convolution's own padding (measured: a padded 3x3 stride-2
depthwise convolution at 48x48 takes what the same convolution with "same"
padding takes, while the pad alone takes 0.033 ms), so the table leaves it out. A `LatencyTable` holds, per layer of one model,
that cost measured at a few widths (`edgekeras.channels.measure.measure_table`
measures it with LiteRT) and interpolates in between, so the latency of any
slimming of the model is predicted without converting it.

The file format (JSON, `LatencyTable.save` / `LatencyTable.load`):

```
{
  "format": "edgekeras-latency-table", "version": 1,
  "num_threads": 1,             # LiteRT threads the costs were measured with
  "conversion": "int8",         # the conversion of the measured files
  "floor_ms": 0.004,            # an almost empty file's latency, taken off every cost
  "overhead_ms": 0.004,         # added once to a prediction (the invocation itself)
  "scale": 1.3,                 # layer costs x this: the dense model's latency over their sum
  "layers": {
    "block_1_expand": {
      "kind": "conv2d",         # conv2d, depthwise_conv2d, dense, add or pool
      "width": [16, 96],        # the model's input and output channels
      "by_in": [[8, 0.011], [48, 0.030], [96, 0.052]],   # [input channels, ms], output at full width
      "by_out": [[16, 0.052]],  # [output channels, ms], input at full width
      "corner": null            # [in, out, ms] with both narrowed: the interaction term
    }, ...
  }
}
```

Every cost is one file's batch-1 median latency in milliseconds minus
`floor_ms`: what `edgekeras bench LAYER.tflite --threads N` reports as
`latency[N].median_ms` for a file holding that one layer at those widths,
with int8 inputs and outputs (no QUANTIZE op), minus the same for a file
holding one `Add` of a 1x1x8 tensor. A table measured on a device is written
in this format from those figures; `num_threads` is the `--threads` value.

A prediction is `overhead_ms + scale x` the sum of the layers' costs. Layers
timed alone run with their weights and activations in the cache; inside the
whole model they do not, so the dense model takes longer than the sum of its
layers (1.2-1.6x on this project's CPU, more the busier the machine). The
calibration (`overhead_ms` = `floor_ms`, `scale` = the dense model's latency
less that, over the sum) spreads the difference over the layers in
proportion to their cost rather than as a constant: on MobileNetV2 at 96 px
the proportional form predicted slimmed models' latency ratios (to the dense
model, timed as `edgekeras bench` times a file) within 1-7 %, where the
constant one was off by up to 50 % (`benchmarks/channel_latency.py`).

Example:

```python
table = LatencyTable.load("mobilenet_v2_96.json")
dense = table.predict(model)
slim = table.predict(model, {"block_1_expand": 48}, groups=groups)
print(slim / dense)
```
"""

import dataclasses
import json
import math
import os

from edgekeras.compat import keras
from edgekeras.errors import EdgekerasError
from edgekeras.io import atomic_write_json

__all__ = ["CHANNEL_WISE", "KINDS", "LatencyTable", "LatencyTableError", "LayerCost", "layer_kind", "layer_widths", "slimmed_widths"]

FORMAT = "edgekeras-latency-table"
VERSION = 1
# The layer classes whose cost the table holds, by their exact class name (a
# subclass such as Conv2DTranspose computes something else).
KINDS = {
    "Conv2D": "conv2d",
    "DepthwiseConv2D": "depthwise_conv2d",
    "Dense": "dense",
    "Add": "add",
    "GlobalAveragePooling2D": "pool",
    "GlobalMaxPooling2D": "pool",
    "AveragePooling2D": "pool",
    "MaxPooling2D": "pool",
}
# Kinds whose every channel is computed alone: the cost follows the input
# channels only (a depthwise convolution's output is `depth_multiplier` x them).
CHANNEL_WISE = ("depthwise_conv2d", "add", "pool")


class LatencyTableError(EdgekerasError, ValueError):
    """A latency table file that cannot be used: unreadable, or a field missing or malformed."""


def layer_kind(layer):
    """The table kind of `layer` (one of `KINDS`' values), or None for a layer the table leaves out.

    Args:
        layer: a tf_keras layer.

    Returns:
        "conv2d", "depthwise_conv2d", "dense", "add", "pool" or None.

    Example:

    ```python
    layer_kind(keras.layers.DepthwiseConv2D(3))  # "depthwise_conv2d"
    ```
    """
    return KINDS.get(type(layer).__name__)


def layer_widths(model):
    """`{layer name: (input channels, output channels)}` of the layers a table holds.

    Args:
        model: a flat functional tf_keras model.

    Returns:
        A dict in layer order.

    Raises:
        ValueError: `model` holds a nested model (flatten it first).

    Example:

    ```python
    layer_widths(model)["block_1_expand"]  # (24, 144)
    ```
    """
    widths = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Argument `model` must be a flat functional model; layer {layer.name!r} is a nested model. "
                "Build the model flat (e.g. call keras.applications with `input_tensor=`)."
            )
        if layer_kind(layer) is None:
            continue
        input_shape = layer.input_shape[0] if isinstance(layer.input_shape, list) else layer.input_shape
        widths[layer.name] = (int(input_shape[-1]), int(layer.output_shape[-1]))
    return widths


def slimmed_widths(groups, widths, base):
    """The layer widths of a model whose channel groups keep `widths[group]` channels.

    Args:
        groups: `ChannelGroup`s of the model.
        widths: `{group name: kept channels}`; groups not named keep all.
        base: `{layer name: (in, out)}` of the dense model (`layer_widths`).

    Returns:
        A new `{layer name: (in, out)}`: a group's producers output its kept
        channels, its consumers take them, its pass-through layers do both
        (a depthwise convolution outputs `depth_multiplier` x them).

    Raises:
        ValueError: a name in `widths` that is no group, or a kept count
            outside [1, the group's size].

    Example:

    ```python
    slimmed_widths(groups, {"block_1_expand": 48}, layer_widths(model))
    ```
    """
    by_name = {group.name: group for group in groups}
    unknown = sorted(set(widths) - set(by_name))
    if unknown:
        raise ValueError(f"Argument `widths` names no channel group: {unknown}. Groups: {sorted(by_name)}")
    result = dict(base)
    for name, kept in widths.items():
        group = by_name[name]
        if isinstance(kept, bool) or not isinstance(kept, int) or not 1 <= kept <= group.size:
            raise ValueError(
                f"Argument `widths` must keep between 1 and {group.size} channels of group {name!r}. "
                f"Received: widths[{name!r}]={kept!r}"
            )
        for layer in group.producers:
            if layer in result:
                result[layer] = (result[layer][0], kept)
        for layer in group.consumers:
            if layer in result:
                result[layer] = (kept, result[layer][1])
        for layer in group.passthrough:
            if layer in result:
                full_in, full_out = base[layer]
                result[layer] = (kept, kept * full_out // full_in)
    return result


def _interpolate(points, width):
    """Piecewise-linear `ms` at `width` through sorted `[[width, ms], ...]`, extended linearly past the ends."""
    if len(points) == 1:
        return points[0][1]
    index = 1
    while index < len(points) - 1 and points[index][0] < width:
        index += 1
    (w0, t0), (w1, t1) = points[index - 1], points[index]
    return t0 + (t1 - t0) * (width - w0) / (w1 - w0)


@dataclasses.dataclass
class LayerCost:
    """What one layer costs as a function of its input and output channels.

    Attributes:
        kind: one of `KINDS`' values.
        width: `(in, out)`, the layer's channels in the dense model.
        by_in: `[(in channels, ms)]` sorted, the output at its full width.
        by_out: `[(out channels, ms)]` sorted, the input at its full width
            (one point for a channel-wise kind or a fixed output).
        corner: `(in, out, ms)` with both narrowed, or None: it sets the
            term that grows with (in - full in) x (out - full out), exact for
            a cost bilinear in the two (a convolution's multiply count).
    """

    kind: str
    width: tuple
    by_in: list
    by_out: list
    corner: tuple = None

    def cost(self, channels_in, channels_out):
        """Predicted milliseconds with `channels_in` inputs and `channels_out` outputs (never below 0)."""
        full_in, full_out = self.width
        by_in = _interpolate(self.by_in, channels_in)
        if self.kind in CHANNEL_WISE or len(self.by_out) == 1:
            return max(by_in, 0.0)
        if len(self.by_in) == 1:
            return max(_interpolate(self.by_out, channels_out), 0.0)
        full = _interpolate(self.by_in, full_in)
        value = by_in + _interpolate(self.by_out, channels_out) - full
        if self.corner is not None:
            corner_in, corner_out, corner_ms = self.corner
            excess = corner_ms - (_interpolate(self.by_in, corner_in) + _interpolate(self.by_out, corner_out) - full)
            value += excess * (channels_in - full_in) * (channels_out - full_out) / ((corner_in - full_in) * (corner_out - full_out))
        return max(value, 0.0)

    def to_dict(self):
        """The JSON form (see the module docstring)."""
        return {
            "kind": self.kind,
            "width": list(self.width),
            "by_in": [list(point) for point in self.by_in],
            "by_out": [list(point) for point in self.by_out],
            "corner": None if self.corner is None else list(self.corner),
        }


def _fail(path, field, problem):
    raise LatencyTableError(f"Latency table {path!r}: field `{field}` {problem}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_width(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _points(path, field, value, full):
    if not isinstance(value, list) or not value:
        _fail(path, field, f"must be a non-empty list of [channels, ms] pairs. Received: {value!r}")
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and _is_width(point[0]) and _is_number(point[1]) and point[1] >= 0):
            _fail(path, field, f"must hold [positive int channels, non-negative ms] pairs. Received: {point!r}")
    widths = [point[0] for point in value]
    if widths != sorted(set(widths)):
        _fail(path, field, f"must list strictly increasing channel counts. Received: {widths}")
    if full not in widths:
        _fail(path, field, f"must include the layer's full width {full}. Received: {widths}")
    return [(point[0], float(point[1])) for point in value]


def _layer(path, name, entry):
    prefix = f"layers.{name}"
    if not isinstance(entry, dict):
        _fail(path, prefix, f"must be an object. Received: {entry!r}")
    for key in ("kind", "width", "by_in", "by_out"):
        if key not in entry:
            _fail(path, f"{prefix}.{key}", "is missing")
    if entry["kind"] not in set(KINDS.values()):
        _fail(path, f"{prefix}.kind", f"must be one of {sorted(set(KINDS.values()))}. Received: {entry['kind']!r}")
    width = entry["width"]
    if not (isinstance(width, list) and len(width) == 2 and all(_is_width(w) for w in width)):
        _fail(path, f"{prefix}.width", f"must be [input channels, output channels], positive ints. Received: {width!r}")
    by_in = _points(path, f"{prefix}.by_in", entry["by_in"], width[0])
    by_out = _points(path, f"{prefix}.by_out", entry["by_out"], width[1])
    corner = entry.get("corner")
    if corner is not None:
        valid = isinstance(corner, list) and len(corner) == 3 and all(_is_width(w) for w in corner[:2]) and _is_number(corner[2])
        if not valid or corner[0] == width[0] or corner[1] == width[1]:
            _fail(path, f"{prefix}.corner", f"must be null or [in, out, ms] with in and out below the full width. Received: {corner!r}")
        corner = (corner[0], corner[1], float(corner[2]))
    return LayerCost(entry["kind"], tuple(width), by_in, by_out, corner)


@dataclasses.dataclass
class LatencyTable:
    """Per-layer latency costs of one model, measured at one thread count.

    Attributes:
        layers: `{layer name: LayerCost}`.
        num_threads: LiteRT threads the costs were measured with.
        conversion: the conversion of the measured files ("int8").
        floor_ms: an almost empty file's latency, taken off every cost.
        overhead_ms: milliseconds added once to a prediction (the
            invocation itself; 0 when the dense model was not measured).
        scale: the layers' costs are multiplied by this in a prediction:
            the dense model's measured latency (less `overhead_ms`) over the
            sum of its layers' costs (1 when it was not measured).

    Example:

    ```python
    table = measure_table(model, num_threads=1)
    table.save("table.json")
    assert LatencyTable.load("table.json").predict(model) == table.predict(model)
    ```
    """

    layers: dict
    num_threads: int = 1
    conversion: str = "int8"
    floor_ms: float = 0.0
    overhead_ms: float = 0.0
    scale: float = 1.0

    def to_dict(self):
        """The JSON form (see the module docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_threads": self.num_threads,
            "conversion": self.conversion,
            "floor_ms": self.floor_ms,
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "layers": {name: cost.to_dict() for name, cost in self.layers.items()},
        }

    def save(self, path):
        """Writes the table to `path` as JSON, atomically (through `edgekeras.io`).

        Args:
            path: the JSON file; its directory is created if needed.

        Returns:
            `path` as a string.

        Raises:
            DiskFullError: no space left; any previous file is intact.

        Example:

        ```python
        measure_table(model).save("tables/mobilenet_v2_96.json")
        ```
        """
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        """Reads a table written by `save` (or by hand from `edgekeras bench` figures).

        Args:
            path: the JSON file.

        Returns:
            A `LatencyTable`.

        Raises:
            LatencyTableError: the file is unreadable, not JSON, of another
                format or version, or a field is missing or malformed; the
                message names the file and the field.

        Example:

        ```python
        table = LatencyTable.load("table.json")
        ```
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as error:
            raise LatencyTableError(f"Latency table {path!r} cannot be read as JSON: {error}") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            _fail(path, "format", f"must be {FORMAT!r}. Received: {found!r}")
        if data.get("version") != VERSION:
            _fail(path, "version", f"must be {VERSION} (this edgekeras reads version {VERSION}). Received: {data.get('version')!r}")
        threads = data.get("num_threads")
        if not _is_width(threads):
            _fail(path, "num_threads", f"must be a positive integer. Received: {threads!r}")
        for field in ("floor_ms", "overhead_ms"):
            if not _is_number(data.get(field)):
                _fail(path, field, f"must be a number of milliseconds. Received: {data.get(field)!r}")
        scale = data.get("scale", 1.0)
        if not _is_number(scale) or scale <= 0:
            _fail(path, "scale", f"must be a positive number. Received: {scale!r}")
        if not isinstance(data.get("conversion"), str):
            _fail(path, "conversion", f"must be a conversion name. Received: {data.get('conversion')!r}")
        layers = data.get("layers")
        if not isinstance(layers, dict) or not layers:
            _fail(path, "layers", f"must be a non-empty object of layer costs. Received: {layers!r}")
        costs = {name: _layer(path, name, entry) for name, entry in layers.items()}
        return cls(costs, threads, data["conversion"], float(data["floor_ms"]), float(data["overhead_ms"]), float(scale))

    def dense_widths(self):
        """`{layer name: (in, out)}` of the model the table was measured on."""
        return {name: cost.width for name, cost in self.layers.items()}

    def layer_cost(self, name, channels_in, channels_out):
        """Milliseconds of layer `name` at the given widths, before `scale` (see `LayerCost.cost`)."""
        return self.layers[name].cost(channels_in, channels_out)

    def predict(self, model_or_layer_widths=None, widths=None, *, groups=None):
        """Predicted batch-1 latency, in milliseconds, of the model or of a slimming of it.

        Args:
            model_or_layer_widths: a (slimmed) tf_keras model with the table's
                layer names, or `{layer name: (in, out)}`; None: the table's
                own model.
            widths: `{group name: kept channels}` applied on top (needs `groups`).
            groups: the model's `ChannelGroup`s, naming the layers each group's
                channels run through.

        Returns:
            `overhead_ms` + `scale` x the sum of the layers' interpolated costs.

        Raises:
            ValueError: the layers differ from the table's, or `widths`
                without `groups`.

        Example:

        ```python
        ratio = table.predict(None, {"Conv_1": 640}, groups=groups) / table.predict()
        ```
        """
        if model_or_layer_widths is None:
            base = self.dense_widths()
        elif isinstance(model_or_layer_widths, dict):
            base = dict(model_or_layer_widths)
        else:
            base = layer_widths(model_or_layer_widths)
        if set(base) != set(self.layers):
            missing, extra = sorted(set(self.layers) - set(base)), sorted(set(base) - set(self.layers))
            raise ValueError(
                f"Argument `model_or_layer_widths` must have the table's layers. Missing: {missing[:5]}, "
                f"not in the table: {extra[:5]} (a table is measured per model; measure one for this model)"
            )
        if widths:
            if groups is None:
                raise ValueError("Argument `groups` is needed to apply `widths` (which layers each group runs through).")
            base = slimmed_widths(groups, widths, base)
        return self.overhead_ms + self.scale * sum(self.layers[name].cost(*base[name]) for name in self.layers)
