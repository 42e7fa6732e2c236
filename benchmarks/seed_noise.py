"""Seed-to-seed noise of a recipe: the accuracy gaps its goals compare, over several `run.seed` values.

Issue #13 asks for qat_int8 >= int8 and pqat_int8 >= pruned_int8 "within the
noise you measure by rerunning"; issue #12 for pruned files within a gap of the
float one. Reruns with the same `run.seed` are bit-identical on this CPU, so the
noise that matters is the seed's: the classifier's initial weights, dropout, the
order of the training batches and the QAT batches. The data splits do not move
with the seed.

Each seed runs the config as its own `edgekeras run` process, from a copy of
the config with `run.seed` and `run.name` (`<name>_seed<N>`) replaced, written
beside the runs in `--output-dir`. A finished run of the same seed is reused
(`edgekeras run` leaves a finished run as it is, and resumes an interrupted one),
so a benchmark that was stopped goes on where it stopped. From each run's
`report.json` it reads the test accuracy of every file and prints, per seed and
as mean, sample standard deviation, min and max over the seeds, the gaps:
qat_int8 - int8, pqat_int8 - pruned_int8, pruned_float32 - float32 and the
pruned_quantized role's file - float32 (the role is chosen on validation).

Run (about 15-20 minutes per seed for the demo on 2 cores):

    TFDS_DATA_DIR=../shared/data/tfds EDGEKERAS_WEIGHTS=../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5 \
        python benchmarks/seed_noise.py --config configs/demo.toml --seeds 0 1 2 --json runs/bench/seed_noise_demo.json
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from edgekeras.app.config import config_to_toml, load_config  # noqa: E402
from edgekeras.io import atomic_write_text  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)

# (label, minuend variant or role, subtrahend variant); a role is written "role:<name>".
GAPS = (
    ("qat_int8 - int8", "qat_int8", "int8"),
    ("pqat_int8 - pruned_int8", "pqat_int8", "pruned_int8"),
    ("pruned_float32 - float32", "pruned_float32", "float32"),
    ("pruned_quantized role - float32", "role:pruned_quantized", "float32"),
)


def seed_config(base_config, seed, output_dir):
    """Writes `base_config` with `run.seed = seed` to `output_dir`; returns its path and run directory."""
    config = load_config(base_config)
    name = f"{config.run.name}_seed{seed}"
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, name=name, output_dir=output_dir, seed=seed))
    path = os.path.join(output_dir, f"{name}.toml")
    atomic_write_text(path, config_to_toml(config, header=f"benchmarks/seed_noise.py: {base_config} with run.seed = {seed}"))
    return path, os.path.join(output_dir, name)


def run_seed(config_path, run_dir):
    """Runs (or resumes, or reuses) one seed's `edgekeras run`; returns its report."""
    report_path = os.path.join(run_dir, "report.json")
    if not os.path.isfile(report_path):
        command = [sys.executable, "-m", "edgekeras", "run", "--config", config_path, "--no-progress"]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    with open(report_path) as report:
        return json.load(report)


def accuracies(report):
    """`{variant: test accuracy}` plus `role:<role>` entries for the files the roles point at."""
    found = {}
    for variant in report["variants"]:
        found[variant["name"]] = variant["accuracy"]
        if variant.get("role") not in (None, "", "other"):
            found[f"role:{variant['role']}"] = variant["accuracy"]
    return found


def gaps(found):
    """`{label: gap in percentage points}` for each of GAPS whose two files the run has."""
    return {label: round(100 * (found[a] - found[b]), 2) for label, a, b in GAPS if a in found and b in found}


def summary(per_seed):
    """`{label: {mean, std, min, max, seeds}}` over the seeds that have each gap (std needs two)."""
    rows = {}
    for label, _, _ in GAPS:
        values = [seed_gaps[label] for seed_gaps in per_seed.values() if label in seed_gaps]
        if values:
            rows[label] = {
                "mean": round(statistics.mean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                "min": min(values), "max": max(values), "seeds": len(values),
            }
    return rows


def markdown(per_seed, stats):
    labels = [label for label, _, _ in GAPS if label in stats]
    seeds = list(per_seed)
    lines = [
        "| gap (pp, test split) | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | std | min | max |",
        "|---|" + "---|" * (len(seeds) + 4),
    ]
    for label in labels:
        cells = [f"{per_seed[seed][label]:+.2f}" if label in per_seed[seed] else "–" for seed in seeds]
        row = stats[label]
        std = "–" if row["std"] is None else f"{row['std']:.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['mean']:+.2f} | {std} | {row['min']:+.2f} | {row['max']:+.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default=os.path.join("runs", "seed_noise"))
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error(f"Argument `--seeds` needs at least two different seeds to measure noise. Received: --seeds {args.seeds}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    per_seed, files, walls = {}, {}, {}
    for seed in dict.fromkeys(args.seeds):
        config_path, run_dir = seed_config(args.config, seed, os.path.abspath(args.output_dir))
        report = run_seed(config_path, run_dir)
        files[seed] = accuracies(report)
        walls[seed] = report["timings"]["total"]
        per_seed[seed] = gaps(files[seed])
        print(f"seed {seed}: " + ", ".join(f"{label} {gap:+.2f} pp" for label, gap in per_seed[seed].items()), flush=True)
    stats = summary(per_seed)
    table = markdown(per_seed, stats)
    print(table)
    write_json(args.json, {
        "machine": machine_info(), "config": os.path.relpath(args.config, ROOT), "seeds": list(per_seed),
        "accuracies": {str(seed): found for seed, found in files.items()},
        "gaps_pp": {str(seed): seed_gaps for seed, seed_gaps in per_seed.items()},
        "summary": stats, "run_wall_s": {str(seed): wall for seed, wall in walls.items()}, "table": table,
    })


if __name__ == "__main__":
    main()
