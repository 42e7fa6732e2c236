"""The comparison report: schema, table, Pareto plot, TensorBoard, atomic files."""

import json
import os

import pytest

from edgekeras.app.report import (
    VariantResult,
    build_report,
    format_table,
    pareto_front,
    plot_pareto,
    validate_report,
    write_report,
)


def variant(name, role, accuracy, gzip_bytes, **overrides):
    fields = dict(
        name=name,
        role=role,
        file=f"{name}.tflite",
        accuracy=accuracy,
        size_bytes=gzip_bytes + 100,
        gzip_bytes=gzip_bytes,
        sparsity=0.0,
        latency_ms=2.0,
        latency={1: {"median_ms": 2.0, "p90_ms": 2.5, "runs": 50}, 2: {"median_ms": 1.2, "p90_ms": 1.4, "runs": 50}},
        verification={"examples": 64, "top1_agreement": 0.97, "max_abs_diff": 0.01},
    )
    fields.update(overrides)
    return VariantResult(**fields)


def seed_variants():
    return [
        variant("float32", "original", 0.9, 8000),
        variant("int8", "quantized", 0.895, 2100),
        variant("pruned_float32", "pruned", 0.89, 3000, sparsity=0.75),
        variant("pqat_int8", "pruned_quantized", 0.885, 900, sparsity=0.74),
        variant("float16", "other", 0.9, 4100),
        variant("dynamic_int8", "other", 0.88, 2500),
    ]


def test_report_has_the_issue_schema():
    report = build_report(seed_variants(), dataset="cifar10", split="test", examples=10000, run="demo")
    assert (report["dataset"], report["split"], report["examples"], report["run"]) == ("cifar10", "test", 10000, "demo")
    required = {"name", "role", "file", "accuracy", "size_bytes", "gzip_bytes", "sparsity", "latency_ms"}
    assert all(required <= set(v) for v in report["variants"])
    assert [v["role"] for v in report["variants"]].count("other") == 2


def test_table_has_delta_against_float_and_both_thread_counts():
    table = format_table(build_report(seed_variants(), dataset="cifar10", split="test", examples=10))
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 6
    assert "Δ vs float" in lines[0] and "latency 1 thr" in lines[0] and "latency 2 thr" in lines[0]
    assert lines[0].endswith("| sparsity | agreement | max abs diff |")
    assert "| int8 | quantized | 89.50 % | -0.50 pp |" in table
    assert "| float32 | original | 90.00 % | 0.00 pp |" in table
    assert "2.00 / 2.50 | 1.20 / 1.40 | 75.0 % | 97.0% | 0.01 |" in table


def test_alternating_latencies_give_each_file_its_speed_up_over_the_dense_int8_file():
    rows = [
        variant("float32", "original", 0.9, 8000, alternating_ms=3.0),
        variant("int8", "quantized", 0.895, 2100, alternating_ms=1.5),
        variant("slim_int8", "other", 0.89, 1100, alternating_ms=0.75),
        variant("float16", "other", 0.9, 4100),
    ]
    table = format_table(build_report(rows, dataset="cifar10", split="test", examples=10))
    assert "| speed-up vs int8 (1 thr, alternating) |" in table.splitlines()[0]
    speed_ups = [line.split(" | ")[8] for line in table.splitlines()[2:]]
    assert speed_ups == ["0.50×", "1.00×", "2.00×", "–"]
    without_int8 = format_table(build_report(rows[:1] + rows[2:], dataset="cifar10", split="test", examples=10))
    assert "speed-up vs float32" in without_int8 and "4.00×" in without_int8


def test_pareto_front_drops_dominated_variants():
    report = build_report(seed_variants(), dataset="d", split="test", examples=10)
    # dynamic_int8 and pruned_float32 are bigger and worse than int8; float32
    # is as accurate as float16 but bigger.
    assert pareto_front(report["variants"]) == ["int8", "pqat_int8", "float16"]


def test_write_report_files_and_tensorboard(tmp_path):
    import tensorflow as tf

    report = build_report(seed_variants(), dataset="cifar10", split="test", examples=10)
    paths = write_report(report, tmp_path / "run", tensorboard_dir=tmp_path / "logs")
    assert json.loads(open(paths["json"]).read()) == json.loads(json.dumps(report))
    assert json.loads(open(paths["json"]).read())["variants"][0]["latency"]["1"]["p90_ms"] == 2.5
    markdown = open(paths["markdown"]).read()
    assert markdown.count("\n| ") == 7 and "cifar10" in markdown
    assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    tags = set()
    for event_file in (tmp_path / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"report/int8/accuracy", "report/pqat_int8/gzip_bytes", "report/float32/latency_ms", "report/pareto"} <= tags
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["pareto.png", "report.json", "report.md"]


def test_plot_is_a_png_without_latency_per_thread():
    rows = [variant("a", "original", 0.5, 10, latency={}), variant("b", "other", 0.4, 5, latency={})]
    report = build_report(rows, dataset="d", split="test", examples=1)
    assert plot_pareto(report).startswith(b"\x89PNG")
    assert "| a | original | 50.00 % | 0.00 pp |" in format_table(report)


def test_invalid_report_writes_nothing(tmp_path):
    report = build_report(seed_variants(), dataset="cifar10", split="test", examples=10)
    report["variants"][0]["accuracy"] = 90.0  # a percentage instead of a fraction
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        write_report(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _mutated(mutate):
    report = build_report(seed_variants(), dataset="cifar10", split="test", examples=10)
    mutate(report)
    return report


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.pop("dataset"), "missing key 'dataset'"),
        (lambda r: r.update(examples="10"), "'examples' must be int"),
        (lambda r: r.update(examples=0), "'examples' must be positive"),
        (lambda r: r["variants"][1].pop("gzip_bytes"), r"variants\[1\] is missing 'gzip_bytes'"),
        (lambda r: r["variants"][1].update(size_bytes=1.5), r"variants\[1\].size_bytes must be int"),
        (lambda r: r["variants"][1].update(role="teacher"), r"variants\[1\].role must be one of"),
        (lambda r: r["variants"][2].update(role="quantized"), "role 'quantized' is held by both 'int8' and 'pruned_float32'"),
        (lambda r: r["variants"][2].update(name="int8"), "duplicate variant name 'int8'"),
        (lambda r: r["variants"][2].update(sparsity=75.0), r"sparsity must be in \[0, 1\]"),
        (lambda r: r["variants"][2].update(gzip_bytes=0), "gzip_bytes must be positive"),
        (lambda r: r["variants"][2].update(latency_ms=-1.0), "latency_ms must be >= 0"),
        (lambda r: r["variants"].append("row"), r"variants\[6\] must be a dict"),
    ],
)
def test_validation_errors(mutate, match):
    with pytest.raises(ValueError, match=match):
        validate_report(_mutated(mutate))


def test_validate_rejects_non_dict():
    with pytest.raises(ValueError, match="expected a dict"):
        validate_report([])


def chosen_report(**quantized):
    choice = {"chosen": "int8", "split": "validation", "examples": 5000, "accuracy": {"int8": 0.903, "qat_int8": 0.901}}
    choice.update(quantized)
    return build_report(
        seed_variants(), dataset="cifar10", split="test", examples=10,
        role_choices={"quantized": choice, "pruned_quantized": {"chosen": "pqat_int8", "accuracy": {}}},
    )


def test_report_md_says_which_file_holds_each_auto_role_and_why(tmp_path):
    markdown = open(write_report(chosen_report(), tmp_path)["markdown"]).read()
    assert "- quantized → int8: 90.30 % vs 90.10 % (qat_int8) on 5,000 validation images\n" in markdown
    assert "- pruned_quantized → pqat_int8: the only candidate this run exports (pruned_int8 is not exported)\n" in markdown
    tie = chosen_report(accuracy={"int8": 0.9, "qat_int8": 0.9})
    assert "90.00 % vs 90.00 % (qat_int8) on 5,000 validation images; a tie goes to the post-training file" in (
        open(write_report(tie, tmp_path)["markdown"]).read()
    )
    assert json.loads(open(tmp_path / "report.json").read())["role_choices"]["quantized"]["split"] == "validation"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"split": "test"}, r"role_choices\['quantized'\].split must be 'validation' \(roles are never chosen on the test split\)"),
        ({"chosen": "qat_int8"}, r"role_choices\['quantized'\].chosen is 'qat_int8' but the role is held by 'int8'"),
        ({"accuracy": {"int8": 0.8, "qat_int8": 0.9}}, r"chosen 'int8' is not the most accurate"),
        ({"accuracy": {"int8": 90.3, "qat_int8": 0.9}}, r"accuracy\['int8'\] must be a number in \[0, 1\]"),
        ({"accuracy": {"int8": 0.9}}, r"accuracy must be empty \(one candidate\) or hold every candidate"),
        ({"examples": 0}, r"role_choices\['quantized'\].examples must be a positive int"),
        ({"accuracy": None}, r"role_choices\['quantized'\].accuracy must be a dict"),
    ],
)
def test_role_choices_are_validated(change, match):
    with pytest.raises(ValueError, match=match):
        chosen_report(**change)


def test_role_choices_keys_are_the_auto_roles():
    with pytest.raises(ValueError, match=r"role_choices keys must be 'quantized' or 'pruned_quantized', received 'pruned'"):
        build_report(seed_variants(), dataset="d", split="test", examples=1, role_choices={"pruned": {"chosen": "x"}})
    with pytest.raises(ValueError, match=r"'role_choices' must be a dict"):
        build_report(seed_variants(), dataset="d", split="test", examples=1, role_choices=[])


def _demo_report():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results", "demo", "report.json")
    with open(path) as handle:
        return json.load(handle)


def _crowded_report():
    # Six files within 1 % of each other on both axes, and two far away.
    rows = [variant(f"int8_{i}", "other", 0.80 + 0.0002 * i, 2000 + 5 * i) for i in range(6)]
    rows += [variant("float32", "original", 0.81, 8000), variant("pruned_float32", "pruned", 0.79, 4000)]
    return build_report(rows, dataset="d", split="test", examples=10)


@pytest.mark.parametrize("make_report", [_demo_report, _crowded_report])
def test_plot_names_overlap_neither_each_other_nor_points_nor_the_legend(make_report):
    from matplotlib.text import Text

    from edgekeras.app.plot import pareto_figure

    report = make_report()
    figure = pareto_figure(report)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    names = sorted(v["name"] for v in report["variants"])
    boxes = []
    for axes in figure.axes:
        assert sorted(text.get_text() for text in axes.texts) == names
        points = [collection.get_offsets() for collection in axes.collections]
        markers = [axes.transData.transform(point) for offsets in points for point in offsets]
        frame = axes.get_window_extent(renderer)
        for text in axes.texts:
            box = Text.get_window_extent(text, renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.contains(x, y) for x, y in markers), text.get_text()
            boxes.append((text.get_text(), box))
    for index, (name, box) in enumerate(boxes):
        assert not box.overlaps(legend), name
        for other, other_box in boxes[index + 1:]:
            assert not box.overlaps(other_box), (name, other)


def test_plot_has_a_size_and_a_latency_panel():
    from edgekeras.app.plot import pareto_figure

    figure = pareto_figure(_demo_report())
    assert [axes.get_xlabel() for axes in figure.axes] == ["gzip size (KiB)", "batch-1 latency, 1 thread (ms)"]
    assert [text.get_text() for text in figure.legends[0].get_texts()][-1] == "Pareto front"


@pytest.mark.parametrize("cost, front", [("gzip_bytes", ["int8", "pqat_int8", "float16"]), ("latency_ms", None)])
def test_pareto_front_per_cost(cost, front):
    variants = build_report(seed_variants(), dataset="d", split="test", examples=10)["variants"]
    best = max(variants, key=lambda v: (v["accuracy"], -v[cost]))
    assert best["name"] in pareto_front(variants, cost=cost)
    if front is not None:
        assert pareto_front(variants, cost=cost) == front


def test_pareto_front_bad_cost():
    with pytest.raises(ValueError, match=r"Argument `cost` must be one of gzip_bytes, latency_ms. Received: cost='size'"):
        pareto_front([], cost="size")
