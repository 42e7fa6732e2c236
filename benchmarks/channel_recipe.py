"""The demo's [channels] settings: one trained float model slimmed by `edgekeras run`'s slim stage, per setting.

Builds the run context of `configs/demo.toml` (its data: 96 px CIFAR-10, the
held-out validation images, the test split), loads a trained float model of
that config (`--float-model`, e.g. `runs/demo/models/float.h5` of a finished
`make demo`), then for the [channels] table given as JSON runs the stage as
`edgekeras run` would (`check_slimming`, then `slim`), converts the dense and
the slimmed model to int8 as the run exports them, scores both files on the
whole test split with LiteRT and times them in one process, alternating
(`alternating_medians`, 200 rounds, one thread). One line per setting, and
`--json` appends the figures to a results file.

Run (one setting per call; each takes 2-4 minutes on 2 cores):

    python benchmarks/channel_recipe.py --float-model runs/demo/models/float.h5 \\
        --channels '{"remove_fraction": 0.3, "steps_per_epoch": 150}' --name uniform30 \\
        --json benchmarks/results/channels/channel_recipe.json

The settings measured for `configs/demo.toml` and what they gave are in
benchmarks/README.md (`channel_recipe.py`).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgekeras.app import pipeline, stages  # noqa: E402
from edgekeras.app.config import parse_config, read_toml  # noqa: E402
from edgekeras.channels import alternating_medians  # noqa: E402
from edgekeras.io import atomic_write_json, read_json  # noqa: E402
from edgekeras.litert import evaluate_accuracy, export_tflite  # noqa: E402
from edgekeras.models import load_model  # noqa: E402


def _context(channels, name, output_dir, config_path):
    values = read_toml(config_path)
    values["run"].update(name=name, output_dir=output_dir)
    values["channels"] = {"enabled": True, **channels}
    context = pipeline._start(parse_config(values, source=config_path), False, True)
    stages.data_and_model(context)
    return context


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-model", required=True, help="a trained float model of the config (.h5 / .keras)")
    parser.add_argument("--channels", required=True, help="the [channels] keys as JSON (enabled is set)")
    parser.add_argument("--name", required=True, help="the setting's name (its run directory)")
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--output-dir", default="runs/bench/channel_recipe")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", help="append the figures to this JSON file")
    args = parser.parse_args(argv)
    channels = json.loads(args.channels)
    context = _context(channels, args.name, args.output_dir, args.config)
    context.models["float"] = load_model(args.float_model)
    started = time.perf_counter()
    settings = dict(representative_data=context.data.validation, io_dtype="float32")
    stages.check_slimming(context, context.models["float"], settings)
    checked = time.perf_counter()
    stages.slim(context)
    slimmed = time.perf_counter()
    files = {}
    for label, model in (("dense", context.models["float"]), ("slim", context.models["slim"])):
        result = export_tflite(
            model, context.path("tflite", f"{label}_int8.tflite"), "int8", representative_data=context.data.validation,
            representative_examples=context.config.export.representative_examples, verify_data=context.data.validation,
            verify_examples=64, float_layers=context.config.export.int8_float_layers, name=label,
        )
        files[label] = result.path
    accuracy = {label: evaluate_accuracy(path, context.data.test, num_threads=2, progress=False).accuracy
                for label, path in files.items()}
    dense_ms, slim_ms = alternating_medians([files["dense"], files["slim"]], num_threads=1, rounds=args.rounds)
    row = {
        "name": args.name, "channels": channels, "check_s": round(checked - started, 1),
        "slim_s": round(slimmed - checked, 1), "dense_int8_accuracy": accuracy["dense"],
        "slim_int8_accuracy": accuracy["slim"], "dense_int8_ms": round(float(dense_ms), 4),
        "slim_int8_ms": round(float(slim_ms), 4), "speed_up": round(float(dense_ms / slim_ms), 3),
        "widths": read_json(context.path("channels", "widths.json")),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "widths"}), flush=True)
    if args.json:
        rows = read_json(args.json, default=[])
        atomic_write_json(args.json, [r for r in rows if r["name"] != args.name] + [row])


if __name__ == "__main__":
    main()
