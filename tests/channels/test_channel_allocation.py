"""Allocation of kept channels by a latency table (NetAdapt-style) and the uniform baseline."""

import numpy as np
import pytest

from edgekeras.channels import ChannelGroup
from edgekeras.channels.allocation import allocate, uniform, uniform_at_latency
from edgekeras.channels.latency import LatencyTable, LayerCost, layer_widths
from edgekeras.compat import keras


def linear_cost(kind, width, per_in, per_out, step=8):
    """A layer whose cost grows linearly with each axis it has, measured every `step` channels."""
    full_in, full_out = width
    by_in = [(w, per_in * w) for w in sorted({*range(step, full_in, step), full_in})]
    by_out = [(full_out, per_in * full_in)]
    if kind == "conv2d":
        by_in = [(full_in, per_out * full_out)]
        by_out = [(w, per_out * w) for w in sorted({*range(step, full_out, step), full_out})]
    return LayerCost(kind, width, by_in, by_out)


def two_group_table(cost_a=1.0, cost_b=0.1):
    """Group "a": 64 channels costing `cost_a` ms each; group "b": 64 costing `cost_b` each; a fixed 10 ms layer."""
    return LatencyTable(
        {
            "a": linear_cost("conv2d", (8, 64), 0, cost_a),
            "b": linear_cost("conv2d", (8, 64), 0, cost_b),
            "fixed": LayerCost("conv2d", (8, 8), [(8, 10.0)], [(8, 10.0)]),
        }
    )


GROUPS = [
    ChannelGroup("a", 64, ("a",), (), ()),
    ChannelGroup("b", 64, ("b",), (), ()),
    ChannelGroup("fixed", 8, ("fixed",), (), (), prunable=False),
]
EQUAL = {"a": np.ones(64), "b": np.ones(64)}


def test_prefers_expensive_low_importance_channels():
    table = two_group_table()
    widths = allocate(GROUPS, {"a": np.full(64, 0.5), "b": np.full(64, 2.0)}, table, 0.7, round_to=8)
    assert widths["a"] < 64 and widths["b"] == 64
    assert table.predict(None, widths, groups=GROUPS) <= 0.7 * table.predict() + 1e-9


def test_target_is_met_on_a_calibrated_table():
    # overhead_ms and scale, as a measured table has them: the greedy steps stop at the target, not before.
    table = two_group_table()
    table.overhead_ms, table.scale = 5.0, 3.0
    widths = allocate(GROUPS, {"a": np.full(64, 0.5), "b": np.full(64, 2.0)}, table, 0.7, round_to=8)
    assert table.predict(None, widths, groups=GROUPS) <= 0.7 * table.predict()
    assert table.predict(None, {**widths, "a": widths["a"] + 8}, groups=GROUPS) > 0.7 * table.predict()


def test_importance_outweighs_cheap_latency():
    # "a" saves 10x the latency per channel, but its channels matter 1000x more.
    table = two_group_table()
    widths = allocate(GROUPS, {"a": np.full(64, 1000.0), "b": np.full(64, 1.0)}, table, 0.95, round_to=8)
    assert widths["a"] == 64 and widths["b"] < 64


def test_least_important_channels_of_a_group_go_first():
    table = two_group_table(cost_a=1.0, cost_b=1.0)
    scores = {"a": np.concatenate([np.zeros(8), np.ones(56)]), "b": np.ones(64)}
    assert allocate(GROUPS, scores, table, 0.99, round_to=8) == {"a": 56, "b": 64, "fixed": 8}


def test_unprunable_group_keeps_every_channel():
    table = two_group_table(cost_a=0.1, cost_b=0.1)
    groups = [ChannelGroup("a", 64, ("a",), (), ()), ChannelGroup("b", 64, ("b",), (), (), prunable=False), GROUPS[2]]
    widths = allocate(groups, {"a": np.ones(64)}, table, 0.9)
    assert widths["b"] == 64 and widths["fixed"] == 8 and widths["a"] < 64


@pytest.mark.parametrize("round_to", [4, 8, 16])
def test_kept_counts_are_multiples_of_round_to(round_to):
    widths = allocate(GROUPS, EQUAL, two_group_table(), 0.5, round_to=round_to)
    assert all(widths[name] % round_to == 0 for name in ("a", "b"))


def test_sizes_off_the_multiple_step_down_to_it():
    table = LatencyTable({"c": linear_cost("conv2d", (8, 20), 0, 1.0, step=4)})
    widths = allocate([ChannelGroup("c", 20, ("c",), (), ())], {"c": np.ones(20)}, table, 0.9, round_to=8)
    assert widths == {"c": 16}


def test_min_fraction_bounds_every_group():
    table = two_group_table()
    widths = allocate(GROUPS, EQUAL, table, 0.35, min_fraction=0.25)
    assert widths["a"] == 16 and widths["b"] >= 16
    with pytest.raises(ValueError, match="cannot be reached"):
        allocate(GROUPS, EQUAL, table, 0.3, min_fraction=0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_latency": 0.0}, r"`target_latency` must be in \(0, 1\]"),
        ({"target_latency": 1.5}, r"`target_latency` must be in \(0, 1\]"),
        ({"round_to": 0}, "`round_to` must be a positive integer"),
        ({"min_fraction": 1.2}, r"`min_fraction` must be in \[0, 1\]"),
        ({"importance": {"a": np.ones(64)}}, "must score every prunable group. Missing: 'b'"),
        ({"importance": {"a": np.ones(63), "b": np.ones(64)}}, "64 finite non-negative scores for group 'a'"),
        ({"importance": [1, 2]}, "must be a dict"),
    ],
)
def test_allocate_argument_errors(kwargs, match):
    arguments = {"importance": EQUAL, "target_latency": 0.7, **kwargs}
    importance, target = arguments.pop("importance"), arguments.pop("target_latency")
    with pytest.raises(ValueError, match=match):
        allocate(GROUPS, importance, two_group_table(), target, **arguments)


def test_uniform():
    assert uniform(GROUPS, 0.5, round_to=8) == {"a": 32, "b": 32, "fixed": 8}
    assert uniform(GROUPS, 0.3, round_to=16) == {"a": 16, "b": 16, "fixed": 8}
    assert uniform(GROUPS, 0.01, round_to=8) == {"a": 8, "b": 8, "fixed": 8}
    assert uniform(GROUPS, 0.01) == {"a": 16, "b": 16, "fixed": 8}  # DEFAULT_ROUND_TO, the shrink step's
    for fraction in (0, 1.01):
        with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
            uniform(GROUPS, fraction)


def test_uniform_at_latency_is_the_widest_meeting_the_target():
    table = two_group_table()
    widths = uniform_at_latency(GROUPS, table, 0.6, round_to=8)
    assert widths["a"] == widths["b"]
    assert table.predict(None, widths, groups=GROUPS) <= 0.6 * table.predict()
    wider = {**widths, "a": widths["a"] + 8, "b": widths["b"] + 8}
    assert table.predict(None, wider, groups=GROUPS) > 0.6 * table.predict()


def test_allocation_on_mobilenet_v2_blocks():
    """MobileNetV2's expand groups on a table whose costs follow multiply-accumulates: early blocks go thinner."""
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    base = layer_widths(model)
    groups, layers = [], {}
    for index in range(1, 17):
        prefix = f"block_{index}_"
        size = base[prefix + "expand"][1]
        pixels = model.get_layer(prefix + "expand").output_shape[1] ** 2
        passthrough = (prefix + "pad", prefix + "depthwise")
        groups.append(ChannelGroup(prefix + "expand", size, (prefix + "expand",), passthrough, (prefix + "project",)))
        layers[prefix + "expand"] = linear_cost("conv2d", base[prefix + "expand"], 0, pixels * base[prefix + "expand"][0] * 1e-6)
        layers[prefix + "depthwise"] = linear_cost("depthwise_conv2d", base[prefix + "depthwise"], 9e-6 * pixels, 0)
        layers[prefix + "project"] = linear_cost("conv2d", base[prefix + "project"], 0, 0)
        layers[prefix + "project"].by_in = [(w, pixels * w * base[prefix + "project"][1] * 1e-6) for w in (8, size)]
    table = LatencyTable(layers)
    widths = allocate(groups, {g.name: np.ones(g.size) for g in groups}, table, 0.6, round_to=8)
    assert all(kept % 8 == 0 and kept >= 0.1 * g.size for g, kept in zip(groups, widths.values()))
    assert table.predict(None, widths, groups=groups) <= 0.6 * table.predict() + 1e-9
    fractions = {name: kept / g.size for g, (name, kept) in zip(groups, widths.items())}
    assert fractions["block_1_expand"] < fractions["block_16_expand"]
