"""Fault injection: SIGKILL a real `edgekeras run` at every phase boundary and at random points.

For each fault the script starts `edgekeras run` on a small CIFAR-10 config in
a fresh run directory, kills it with SIGKILL when its output reaches a phase
boundary (or after a random delay), starts the same command again and checks:

- the resumed run exits with status 0;
- `edgekeras.app.pipeline.verify_run_dir` finds nothing wrong (state finished, every
  .tflite matches its checksum and loads in LiteRT, report.json valid, no
  temporary file anywhere);
- the report lists the same variants, roles and files as an uninterrupted
  reference run, and the accuracies match it (exactly when the kill came
  after training; a kill inside an epoch re-runs that epoch with another
  shuffle, so its numbers may move a little: the largest difference is shown);
- a third start is a no-op ("nothing to do") and changes no file.

With `--tune`, `edgekeras tune` (a 3-trial search on a CIFAR-10 subset) is
also killed between trials and inside one, then resumed: every trial must end
with a result and a loadable .tflite, and no finished trial may run again.

The config is `configs/demo.toml` cut down (1,500 CIFAR-10 images at 48 px),
so one run takes about a minute on a 2-core CPU. The fast cases live in
`tests/app/test_faults.py`.

Run (needs ../shared/data or TFDS_DATA_DIR / EDGEKERAS_WEIGHTS):

    python benchmarks/fault_injection.py --random 3 --tune --json runs/bench/fault_injection.json
"""

import argparse
import dataclasses
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)

from edgekeras.app.config import config_to_toml, load_config  # noqa: E402
from edgekeras.io import atomic_write_json  # noqa: E402
from edgekeras.app.pipeline import verify_run_dir  # noqa: E402

# (name, text in the run's output at which it is killed)
BOUNDARIES = [
    ("during caching", "caching the activations"),
    ("after caching", "cache_features:"),
    ("after float epoch 1", "Epoch 2/"),
    ("during pruning", "Epoch 4/"),
    ("before QAT", "QAT of the qat model"),
    ("before PQAT", "QAT of the pqat model"),
    ("after training", "save_models:"),
    ("after the first export", "exported float32"),
    ("after export", "export:"),
    ("after the first evaluation", "evaluated float32"),
    ("after the report", "report:"),
]


def small_config(output_dir, data_dir, weights):
    config = load_config(os.path.join(ROOT, "configs", "demo.toml"))
    return dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, name="reference", output_dir=output_dir),
        data=dataclasses.replace(
            config.data, data_dir=data_dir, download=False, image_size=48, max_train_examples=1500,
            validation_size=300,
        ),
        model=dataclasses.replace(config.model, weights=weights),
        train=dataclasses.replace(config.train, epochs=2),
        prune=dataclasses.replace(config.prune, epochs=2),
        qat=dataclasses.replace(config.qat, steps_per_epoch=5),
        export=dataclasses.replace(
            config.export, conversions=("float32", "int8"), pruned_conversions=("float32", "int8"),
            representative_examples=64, verify_examples=64,
        ),
        evaluate=dataclasses.replace(
            config.evaluate, max_examples=500, latency_runs=50, warmup=2, latency_threads=(1,), progress=False,
        ),
    )


TUNE_CONFIG = """
[data]
dataset = "cifar10"
data_dir = "{data_dir}"
download = false
image_size = 48
batch_size = 64
validation_size = 300
max_train_examples = 1500

[model]
weights = "{weights}"
trainable_from = "block_16_expand"

[tune]
oracle = "random"
max_trials = 3
seed = 0
directory = "{workdir}"
project_name = "tune"
float_epochs = 1
prune_epochs = 1
conversion = "int8"
cache_features = true
eval_threads = 2
latency_threads = 1

[tune.space]
learning_rate = {{ min = 1e-4, max = 1e-2 }}
final_sparsity = {{ min = 0.3, max = 0.9, step = 0.05 }}
qat_epochs = 0
"""


def launch(config_path, name, *, kill_at=None, kill_after=None, timeout=1800, command=None):
    """Runs `edgekeras run` (or `command`); kills it with SIGKILL at a text or after a delay.

    Returns `(status, killed_after_seconds or None, output)`.
    """
    environment = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    command = command or [
        sys.executable, "-m", "edgekeras", "run", "--config", config_path, "--name", name, "--no-progress"
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    if kill_after is not None:
        timer = threading.Timer(kill_after, lambda: process.poll() is None and process.send_signal(signal.SIGKILL))
        timer.start()
    lines = []
    killed = None
    for line in process.stdout:
        lines.append(line)
        if kill_at is not None and kill_at in line and killed is None:
            process.send_signal(signal.SIGKILL)
            killed = time.perf_counter() - started
    status = process.wait(timeout=timeout)
    if kill_after is not None:
        timer.cancel()
        if status == -signal.SIGKILL:
            killed = kill_after
    return status, killed, "".join(lines)


def snapshot(run_dir):
    return {
        os.path.relpath(os.path.join(root, n), run_dir): os.stat(os.path.join(root, n)).st_mtime_ns
        for root, _, names in os.walk(run_dir) for n in names
    }


def summary(run_dir):
    with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    return {v["name"]: (v["role"], v["file"], v["accuracy"]) for v in report["variants"]}


def tune_faults(workdir, data_dir, weights):
    """Kills `edgekeras tune` inside a trial and between trials; returns result rows."""
    from edgekeras.litert import TFLiteModel
    from edgekeras.tuning import load_results

    path = os.path.join(workdir, "tune.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(TUNE_CONFIG.format(data_dir=data_dir, weights=weights, workdir=workdir))
    command = [sys.executable, "-m", "edgekeras", "tune", "--config", path]
    project = os.path.join(workdir, "tune")
    rows = []
    for name, kill in (("tune: inside trial 1", "Running Trial #2"), ("tune: between trials 1 and 2", "trial 1: ")):
        status, killed, _ = launch(path, None, kill_at=kill, command=command)
        row = {"fault": name, "killed": killed is not None and status == -signal.SIGKILL, "killed_after_s": killed}
        finished = {r.trial_id: os.stat(os.path.join(project, f"trial_{r.trial_id}", "model.tflite")).st_mtime_ns
                    for r in load_results(project)}
        rows.append(row)
        if not row["killed"]:
            row.update(survived=None, problems=[f"not injected: the search ended first (status {status})"])
    resume_start = time.perf_counter()
    status, _, output = launch(path, None, command=command)
    problems = [] if status == 0 else [f"resume exited with {status}: {output[-500:]}"]
    results = load_results(project)
    if sorted(r.trial_id for r in results) != ["0", "1", "2"]:
        problems.append(f"trials after resuming: {sorted(r.trial_id for r in results)}")
    for result in results:
        tflite = os.path.join(project, f"trial_{result.trial_id}", "model.tflite")
        try:
            TFLiteModel(tflite, num_threads=1)
        except (OSError, ValueError) as error:
            problems.append(f"{tflite}: {error}")
        if result.trial_id in finished and os.stat(tflite).st_mtime_ns != finished[result.trial_id]:
            problems.append(f"finished trial {result.trial_id} ran again")
    for row in rows:
        if "survived" not in row:
            row.update(resume_s=round(time.perf_counter() - resume_start, 1), survived=not problems, problems=problems)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=int, default=3, help="random kill points besides the boundaries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="boundary names to inject (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR") or os.path.join(SHARED, "tfds"))
    parser.add_argument(
        "--weights",
        default=os.environ.get("EDGEKERAS_WEIGHTS")
        or os.path.join(SHARED, "weights", "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"),
    )
    parser.add_argument("--tune", action="store_true", help="also kill and resume `edgekeras tune`")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="edgekeras_faults_")
    config_path = os.path.join(workdir, "faults.toml")
    os.makedirs(workdir, exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(config_to_toml(small_config(workdir, args.data_dir, args.weights)))

    start = time.perf_counter()
    status, _, output = launch(config_path, "reference")
    reference_seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f"the reference run failed:\n{output[-3000:]}")
    reference = summary(os.path.join(workdir, "reference"))
    print(f"reference run: {reference_seconds:.0f} s, {len(reference)} variants", flush=True)

    rng = random.Random(args.seed)
    faults = [(name, dict(kill_at=text)) for name, text in BOUNDARIES if args.only is None or name in args.only]
    faults += [
        (f"random at {delay:.0f} s", dict(kill_after=delay))
        for delay in sorted(rng.uniform(5.0, reference_seconds * 0.95) for _ in range(args.random))
    ]
    rows = []
    for index, (name, kill) in enumerate(faults):
        run_name = f"fault{index:02d}"
        run_dir = os.path.join(workdir, run_name)
        status, killed, _ = launch(config_path, run_name, **kill)
        row = {"fault": name, "killed": killed is not None and status == -signal.SIGKILL, "killed_after_s": killed}
        if not row["killed"]:
            # A random delay can outlast a run on a machine quicker than the reference's: no fault.
            row.update(survived=None, problems=[f"not injected: the run ended first (status {status})"])
            rows.append(row)
            print(row, flush=True)
            continue
        resume_start = time.perf_counter()
        status, _, output = launch(config_path, run_name)
        row["resume_s"] = round(time.perf_counter() - resume_start, 1)
        problems = [] if status == 0 else [f"resume exited with {status}: {output[-500:]}"]
        if status == 0:
            problems += verify_run_dir(run_dir)
            resumed = summary(run_dir)
            if {k: v[:2] for k, v in resumed.items()} != {k: v[:2] for k, v in reference.items()}:
                problems.append("variants, roles or files differ from the reference run")
            row["max_accuracy_diff"] = max(abs(resumed[k][2] - reference[k][2]) for k in reference if k in resumed)
            before = snapshot(run_dir)
            again_status, _, again = launch(config_path, run_name)
            row["noop"] = again_status == 0 and "nothing to do" in again and snapshot(run_dir) == before
            if not row["noop"]:
                problems.append("a third start was not a no-op")
        row.update(survived=not problems, problems=problems)
        rows.append(row)
        print({k: row[k] for k in row if k != "problems"}, problems or "", flush=True)

    if args.tune:
        tune_rows = tune_faults(workdir, args.data_dir, args.weights)
        for row in tune_rows:
            print({k: row[k] for k in row if k != "problems"}, row["problems"] or "", flush=True)
        rows += tune_rows

    injected = [row for row in rows if row["killed"]]
    survived = sum(bool(row["survived"]) for row in injected)
    print()
    print("| fault | killed after (s) | resume (s) | verified | max Δ accuracy vs reference | re-run no-op |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        killed = f"{row['killed_after_s']:.1f}" if row.get("killed_after_s") is not None else "-"
        diff = f"{row['max_accuracy_diff']:.4f}" if "max_accuracy_diff" in row else "-"
        print(
            f"| {row['fault']} | {killed} | {row.get('resume_s', '-')} | "
            f"{'-' if row['survived'] is None else 'yes' if row['survived'] else 'NO: ' + '; '.join(row['problems'])[:200]}"
            f" | {diff} | "
            f"{'yes' if row.get('noop') else 'no'} |"
        )
    print(f"\nfaults injected: {len(injected)}, survived: {survived} (reference run {reference_seconds:.0f} s; {workdir})")
    if args.json:
        atomic_write_json(args.json, {
            "date": time.strftime("%Y-%m-%d"), "platform": platform.platform(), "cpus": os.cpu_count(),
            "reference_seconds": round(reference_seconds, 1), "faults": rows,
            "injected": len(injected), "survived": survived,
        })
    return 0 if survived == len(injected) else 1


if __name__ == "__main__":
    sys.exit(main())
