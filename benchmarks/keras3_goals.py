"""The Keras 3 goal table of issue #33: the demo on Keras 3 beside the tf_keras demo, same machine.

Runs `configs/demo.toml` and `configs/demo_keras3.toml` (the same recipe with
`model.keras = "keras3"`) one after the other, each as its own
`edgekeras run --overwrite` process sampled by `peak_memory.measure` (wall time
and peak resident memory of the process tree), then reads both reports and the
Keras 3 run's .tflite files and checks:

- float32 within 0.5 pp of the tf_keras demo's float32;
- int8 (post-training) within 0.5 pp of its own float32;
- pruned_float32 at >= 55 % whole-file sparsity, within 1.5 pp of float32 (or above);
- qat_int8 >= int8 and pqat_int8 >= pruned_int8, within the seed noise (`--noise-pp`,
  the tf_keras demo's measured spread: `results/ablations/seed_noise_demo.json`);
- the QAT int8 files have the operator list of the post-training int8 file of the same float (or
  pruned) model with the same layers in float (the run's `qat.skip_layers` that have weights; the
  run's own int8 file keeps only `export.int8_float_layers` in float, so its list differs by design);
- wall time and peak RSS at most 1.25x the tf_keras demo's.

`--reuse` skips the runs and reads the run directories and the memory JSON an
earlier call wrote (to re-render the table).

Run (about 25 minutes on 2 cores):

    TFDS_DATA_DIR=../shared/data/tfds EDGEKERAS_WEIGHTS=../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5 \
        python benchmarks/keras3_goals.py --json benchmarks/results/keras3_goals.json
"""

import argparse
import json
import os
import sys

from machine import machine_info, write_json
from peak_memory import measure

CONFIGS = {"tf_keras": "configs/demo.toml", "keras3": "configs/demo_keras3.toml"}
RUN_NAMES = {"tf_keras": "demo", "keras3": "demo_keras3"}


def op_list(path):
    """The builtin operator names of a .tflite file, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    return [op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()]


def post_training_ops(run_dir, source):
    """The op list of the post-training int8 file of a run's saved `source` model, its QAT skip run in float."""
    from edgekeras.app.config import load_config
    from edgekeras.app.factories import load_data
    from edgekeras.litert import convert
    from edgekeras.models import load_model

    config = load_config(os.path.join(run_dir, "config.toml"))
    model = load_model(os.path.join(run_dir, "models", f"{source}.keras"))
    # Only layers with a kernel own an op of their own; their BatchNorm and activation are fused into it.
    float_layers = [name for name in config.qat.skip_layers if hasattr(model.get_layer(name), "kernel")]
    data = load_data(config.data, seed=config.run.seed, model=config.model)
    content = convert(model, "int8", representative_data=data.train, representative_examples=256, float_layers=float_layers)
    path = os.path.join(run_dir, f"post_training_{source}_like_qat.tflite")
    with open(path, "wb") as handle:
        handle.write(content)
    return op_list(path)


def _accuracy(report):
    return {variant["name"]: 100 * variant["accuracy"] for variant in report["variants"]}


def _row(figure, value, goal, met):
    return {"figure": figure, "value": value, "goal": goal, "met": bool(met)}


def goal_rows(reports, run_dirs, measured, noise_pp):
    """The goal table's rows from both reports, the Keras 3 run's files and the two measurements."""
    tf_acc, k3_acc = _accuracy(reports["tf_keras"]), _accuracy(reports["keras3"])
    by_name = {variant["name"]: variant for variant in reports["keras3"]["variants"]}
    pruned_int8 = "pruned_int8" if "pruned_int8" in k3_acc else "pruned_float32"
    rows = [
        _row("float32 vs tf_keras float32", f"{k3_acc['float32']:.2f} vs {tf_acc['float32']:.2f} %",
             "within 0.5 pp", abs(k3_acc["float32"] - tf_acc["float32"]) <= 0.5),
        _row("int8 vs its float32", f"{k3_acc['int8']:.2f} vs {k3_acc['float32']:.2f} %",
             "within 0.5 pp", abs(k3_acc["int8"] - k3_acc["float32"]) <= 0.5),
        _row("pruned_float32: sparsity, accuracy",
             f"{100 * by_name['pruned_float32']['sparsity']:.1f} %, {k3_acc['pruned_float32']:.2f} %",
             ">= 55 %, within 1.5 pp of float32 or above",
             by_name["pruned_float32"]["sparsity"] >= 0.55 and k3_acc["pruned_float32"] >= k3_acc["float32"] - 1.5),
        _row("qat_int8 vs int8", f"{k3_acc['qat_int8']:.2f} vs {k3_acc['int8']:.2f} %",
             f">= (noise {noise_pp} pp)", k3_acc["qat_int8"] >= k3_acc["int8"] - noise_pp),
        _row(f"pqat_int8 vs {pruned_int8}", f"{k3_acc['pqat_int8']:.2f} vs {k3_acc[pruned_int8]:.2f} %",
             f">= (noise {noise_pp} pp)", k3_acc["pqat_int8"] >= k3_acc[pruned_int8] - noise_pp),
    ]
    files = {name: os.path.join(run_dirs["keras3"], variant["file"]) for name, variant in by_name.items()}
    for qat, source in (("qat_int8", "float"), ("pqat_int8", "pruned")):
        if qat in files:
            same = op_list(files[qat]) == post_training_ops(run_dirs["keras3"], source)
            rows.append(_row(f"{qat} ops vs post-training int8 of the {source} model", "identical" if same else "differ",
                             "identical", same))
    for key, label in (("wall_s", "wall time"), ("peak_gib", "peak RSS")):
        ratio = measured["keras3"][key] / measured["tf_keras"][key]
        unit = "s" if key == "wall_s" else "GiB"
        rows.append(_row(f"{label} (Keras 3 / tf_keras)",
                         f"{measured['keras3'][key]} / {measured['tf_keras'][key]} {unit} = {ratio:.2f}x",
                         "<= 1.25x", ratio <= 1.25))
    return rows


def markdown(rows, reports):
    lines = ["| figure | Keras 3 demo | goal | met |", "|---|---|---|---|"]
    lines += [f"| {r['figure']} | {r['value']} | {r['goal']} | {'yes' if r['met'] else 'no'} |" for r in rows]
    examples = reports["keras3"]["examples"]
    lines.append("")
    lines.append(f"Accuracies: the deployed .tflite files on the {examples:,} images of the test split.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/bench/keras3_goals", help="where both runs write")
    parser.add_argument("--noise-pp", type=float, default=0.2,
                        help="seed noise the QAT goals allow (the tf_keras demo's: std 0.07 and 0.16 pp)")
    parser.add_argument("--reuse", action="store_true", help="read the earlier runs instead of running them")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    memory_path = os.path.join(args.output_dir, "measured.json")
    if args.reuse:
        with open(memory_path) as handle:
            measured = json.load(handle)
    else:
        measured = {}
        for keras_name, config in CONFIGS.items():
            measured[keras_name] = measure(config, args.output_dir, interval=0.5)
            if measured[keras_name]["returncode"] != 0:
                sys.exit(f"{config} failed (exit {measured[keras_name]['returncode']})")
        write_json(memory_path, measured)
    run_dirs = {name: os.path.join(args.output_dir, RUN_NAMES[name]) for name in CONFIGS}
    reports = {}
    for name, run_dir in run_dirs.items():
        with open(os.path.join(run_dir, "report.json")) as handle:
            reports[name] = json.load(handle)
    rows = goal_rows(reports, run_dirs, measured, args.noise_pp)
    table = markdown(rows, reports)
    print(table)
    if args.json:
        write_json(args.json, {"machine": machine_info(), "measured": measured, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
