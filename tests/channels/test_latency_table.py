"""The per-layer latency table: measured with LiteRT, interpolated, saved, loaded and validated."""

import json

import numpy as np
import pytest

from edgekeras.channels import ChannelGroup
from edgekeras.channels.latency import LatencyTable, LatencyTableError, LayerCost, layer_widths, slimmed_widths
from edgekeras.channels.measure import grid_widths, measure_table, table_from_bench, write_layer_files
from edgekeras.compat import keras
from edgekeras.io import atomic_write_json
from edgekeras.runtime import benchmark


def tiny_inverted_residual(blocks=3, size=8):
    """A stem, `blocks` identical inverted-residual blocks (8 -> 16 -> 8, residual Add) and a 3-class head."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, 2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU(6.0, name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(x))
    for index in range(blocks):
        prefix = f"b{index}_"
        h = keras.layers.Conv2D(16, 1, use_bias=False, name=prefix + "expand")(x)
        h = keras.layers.ReLU(6.0, name=prefix + "expand_relu")(h)
        h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=prefix + "depthwise")(h)
        h = keras.layers.Conv2D(8, 1, use_bias=False, name=prefix + "project")(h)
        x = keras.layers.Add(name=prefix + "add")([x, h])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def tiny_groups(blocks=3):
    groups = [
        ChannelGroup(
            f"b{i}_expand", 16, (f"b{i}_expand",), (f"b{i}_expand_relu", f"b{i}_depthwise"), (f"b{i}_project",)
        )
        for i in range(blocks)
    ]
    residual = ("stem_bn", "stem_relu") + tuple(f"b{i}_add" for i in range(blocks)) + ("pool",)
    consumers = tuple(f"b{i}_expand" for i in range(blocks)) + ("logits",)
    producers = ("stem",) + tuple(f"b{i}_project" for i in range(blocks))
    return groups + [ChannelGroup("stem", 8, producers, residual, consumers, prunable=False)]


def hand_table():
    return LatencyTable(
        {
            "expand": LayerCost("conv2d", (8, 32), [(8, 0.5)], [(8, 0.2), (16, 0.3), (32, 0.5)]),
            "depthwise": LayerCost("depthwise_conv2d", (32, 32), [(8, 0.1), (32, 0.4)], [(32, 0.4)]),
            "project": LayerCost("conv2d", (32, 8), [(8, 0.15), (32, 0.3)], [(8, 0.3)]),
        },
        num_threads=1,
        floor_ms=0.01,
        overhead_ms=0.1,
        scale=2.0,
    )


HAND_GROUPS = [ChannelGroup("expand", 32, ("expand",), ("depthwise",), ("project",))]


@pytest.fixture(scope="module")
def measured():
    model = tiny_inverted_residual()
    return model, measure_table(model, groups=tiny_groups(), points=2, rounds=2, warmup=0, burst=1, calibrate=True)


def test_measured_table_covers_every_costed_layer(measured):
    model, table = measured
    assert list(table.layers) == list(layer_widths(model))
    assert {cost.kind for cost in table.layers.values()} == {"conv2d", "depthwise_conv2d", "add", "pool", "dense"}
    expand = table.layers["b0_expand"]
    # Only the expand group is prunable: the expand conv varies its output, the project its input.
    assert [w for w, _ in expand.by_in] == [8] and [w for w, _ in expand.by_out] == [8, 16]
    assert [w for w, _ in table.layers["b0_project"].by_in] == [8, 16]
    assert [w for w, _ in table.layers["b0_add"].by_in] == [8]
    # Identical blocks are measured once.
    assert table.layers["b1_expand"] == table.layers["b0_expand"] == table.layers["b2_expand"]
    assert all(ms >= 0 for cost in table.layers.values() for _, ms in cost.by_in + cost.by_out)
    assert table.floor_ms > 0 and table.overhead_ms >= table.floor_ms and table.scale > 0


def test_measured_table_predicts_the_dense_model(measured):
    model, table = measured
    assert table.predict(model) == pytest.approx(table.predict())
    slim = table.predict(model, {"b0_expand": 8}, groups=tiny_groups())
    assert np.isfinite(slim) and slim <= table.predict() + 1e-12


def test_save_load_round_trip(measured, tmp_path):
    _, table = measured
    path = table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(path)
    assert loaded == table
    assert loaded.predict(None, {"b1_expand": 8}, groups=tiny_groups()) == table.predict(None, {"b1_expand": 8}, groups=tiny_groups())


def test_table_from_device_bench_results(tmp_path):
    # What a user does on a TF-free device: `edgekeras bench FILE --json` for every file written.
    model = tiny_inverted_residual(blocks=2)
    paths = write_layer_files(model, tmp_path, groups=tiny_groups(blocks=2), points=2)
    assert paths[-1].endswith("plan.json") and paths[0].endswith("floor.tflite") and paths[-2].endswith("model.tflite")
    for path in paths[:-1]:
        atomic_write_json(path[: -len(".tflite")] + ".json", benchmark(path, threads=(1,), runs=3, warmup=1).to_dict())
    table = table_from_bench(tmp_path, num_threads=1)
    assert list(table.layers) == list(layer_widths(model))
    assert [w for w, _ in table.layers["b0_project"].by_in] == [8, 16]
    assert table.predict(model) > 0
    (tmp_path / "layer_0001.json").unlink()
    with pytest.raises(LatencyTableError, match=r"layer_0001\.json' is missing or has no `latency\.1\.median_ms`"):
        table_from_bench(tmp_path, num_threads=1)


def test_bilinear_costs_are_recovered_exactly():
    def cost(ci, co):
        return 0.01 + 0.002 * ci + 0.001 * co + 0.0005 * ci * co

    layer = LayerCost(
        "conv2d", (32, 64),
        [(w, cost(w, 64)) for w in (8, 16, 32)],
        [(w, cost(32, w)) for w in (8, 32, 64)],
        (16, 32, cost(16, 32)),
    )
    for ci, co in ((24, 40), (8, 8), (12, 60), (4, 4)):
        assert layer.cost(ci, co) == pytest.approx(cost(ci, co))


def test_channel_wise_costs_interpolate_and_extrapolate_linearly():
    layer = LayerCost("depthwise_conv2d", (32, 32), [(8, 0.1), (32, 0.4)], [(32, 0.4)])
    assert layer.cost(20, 20) == pytest.approx(0.25)
    assert layer.cost(4, 4) == pytest.approx(0.05)
    assert LayerCost("add", (32, 32), [(8, 0.1), (16, 0.1), (32, 0.4)], [(32, 0.4)]).cost(1, 1) == 0.1


def test_predict_sums_scaled_layer_costs_and_overhead():
    table = hand_table()
    assert table.predict() == pytest.approx(0.1 + 2 * (0.5 + 0.4 + 0.3))
    # expand keeps 16: its output, the depthwise and the project's input narrow.
    assert table.predict(None, {"expand": 16}, groups=HAND_GROUPS) == pytest.approx(0.1 + 2 * (0.3 + 0.2 + 0.2))


def test_slimmed_widths_of_mobilenet_v2_blocks():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    base = layer_widths(model)
    assert base["block_1_expand"] == (16, 96) and "block_1_pad" not in base
    group = ChannelGroup(
        "block_1_expand", 96, ("block_1_expand",),
        ("block_1_expand_BN", "block_1_expand_relu", "block_1_pad", "block_1_depthwise", "block_1_depthwise_BN", "block_1_depthwise_relu"),
        ("block_1_project",),
    )
    widths = slimmed_widths([group], {"block_1_expand": 48}, base)
    assert widths["block_1_expand"] == (16, 48) and widths["block_1_project"] == (48, 24)
    assert widths["block_1_depthwise"] == (48, 48)
    assert widths["block_2_expand"] == base["block_2_expand"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.predict(None, {"expand": 16}), "`groups` is needed"),
        (lambda t: t.predict({"expand": (8, 32)}), "must have the table's layers"),
        (lambda t: t.predict(None, {"nothing": 16}, groups=HAND_GROUPS), "names no channel group"),
        (lambda t: t.predict(None, {"expand": 33}, groups=HAND_GROUPS), "between 1 and 32 channels"),
    ],
)
def test_predict_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(hand_table())


def test_nested_models_are_refused():
    inner = keras.Sequential([keras.layers.Dense(4)], name="inner")
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="layer 'inner' is a nested model"):
        layer_widths(keras.Model(inputs, inner(inputs)))


def test_grid_widths():
    assert grid_widths(96, 4, 8) == [8, 40, 64, 96]
    assert grid_widths(20, 2, 8) == [8, 20]
    assert grid_widths(6, 4, 8) == [6]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"points": 1}, "`points` must be at least 2"), ({"rounds": 0}, "`rounds` must be a positive integer"),
     ({"warmup": -1}, "`warmup` must be a non-negative integer"), ({"num_threads": 0}, "num_threads")],
)
def test_measure_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_table(tiny_inverted_residual(blocks=1), **kwargs)


def _broken(data, path, key):
    """Applies one breakage to the JSON form of `hand_table()`."""
    layer = data["layers"]["expand"]
    if key == "not_json":
        path.write_text("{not json")
        return
    edits = {
        "format": lambda: data.update(format="something-else"),
        "version": lambda: data.update(version=2),
        "num_threads": lambda: data.update(num_threads=0),
        "overhead_ms": lambda: data.update(overhead_ms="fast"),
        "scale": lambda: data.update(scale=0),
        "conversion": lambda: data.update(conversion=8),
        "layers": lambda: data.update(layers={}),
        "entry": lambda: data["layers"].update(expand=[1, 2]),
        "missing": lambda: layer.pop("by_out"),
        "kind": lambda: layer.update(kind="conv3d"),
        "width": lambda: layer.update(width=[8]),
        "points": lambda: layer.update(by_out=[]),
        "pair": lambda: layer.update(by_out=[[8, -1.0], [32, 0.5]]),
        "order": lambda: layer.update(by_out=[[16, 0.3], [8, 0.2], [32, 0.5]]),
        "full": lambda: layer.update(by_out=[[8, 0.2], [16, 0.3]]),
        "corner": lambda: layer.update(corner=[8, 32, 0.1]),
    }
    edits[key]()
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "key, match",
    [
        ("not_json", "cannot be read as JSON"),
        ("format", "field `format` must be 'edgekeras-latency-table'"),
        ("version", "field `version` must be 1"),
        ("num_threads", "field `num_threads` must be a positive integer"),
        ("overhead_ms", "field `overhead_ms` must be a number"),
        ("scale", "field `scale` must be a positive number"),
        ("conversion", "field `conversion` must be a conversion name"),
        ("layers", "field `layers` must be a non-empty object"),
        ("entry", r"field `layers\.expand` must be an object"),
        ("missing", r"field `layers\.expand\.by_out` is missing"),
        ("kind", r"field `layers\.expand\.kind` must be one of"),
        ("width", r"field `layers\.expand\.width` must be \[input channels, output channels\]"),
        ("points", r"field `layers\.expand\.by_out` must be a non-empty list"),
        ("pair", r"field `layers\.expand\.by_out` must hold \[positive int channels, non-negative ms\]"),
        ("order", r"field `layers\.expand\.by_out` must list strictly increasing"),
        ("full", r"field `layers\.expand\.by_out` must include the layer's full width 32"),
        ("corner", r"field `layers\.expand\.corner` must be null or \[in, out, ms\]"),
    ],
)
def test_load_validation_names_file_and_field(tmp_path, key, match):
    path = tmp_path / "table.json"
    _broken(hand_table().to_dict(), path, key)
    with pytest.raises(LatencyTableError, match=match) as error:
        LatencyTable.load(path)
    assert str(path) in str(error.value)
