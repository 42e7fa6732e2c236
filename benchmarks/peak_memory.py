"""Peak memory of `edgekeras run` per config, and which stage reached it.

Each config runs as its own `edgekeras run --config X --overwrite` process
(so one run's allocations cannot hide another's); a sampler reads the
resident set of that process and its children from /proc every `--interval`
seconds and records the peak, the stage running at that moment (from the
run's `[edgekeras run] <stage>: ... s` lines) and the wall time. Linux only
(/proc). The goals of issue #16: default ≤ 6 GiB, demo ≤ 3 GiB.

Run (about 6 minutes for the demo, 1.5 hours for the default recipe on 2 cores):

    python benchmarks/peak_memory.py --config configs/demo.toml --json runs/bench/peak_memory_demo.json
    python benchmarks/peak_memory.py --config configs/demo.toml configs/default.toml --goal-gib 3 6
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time

from machine import machine_info, write_json

STAGE_DONE = re.compile(r"^\[edgekeras run\] (\w+): [\d.]+ s$")


def _children(pid):
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found.extend(_children(int(child)))
    except OSError:
        pass
    return found


def tree_memory_bytes(pid):
    """`(resident, anonymous)` bytes of `pid` and its descendants ((0, 0) once it has exited).

    Resident is what `/usr/bin/time -v` reports as its maximum; it includes
    file-backed pages, such as a memory-mapped activation cache, which the
    kernel can drop under pressure. Anonymous (resident minus shared) is what
    the process itself allocated and cannot give back without freeing it.
    """
    resident = anonymous = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for member in _children(pid):
        try:
            with open(f"/proc/{member}/statm") as statm:
                fields = statm.read().split()
            resident += int(fields[1]) * page
            anonymous += (int(fields[1]) - int(fields[2])) * page
        except (OSError, IndexError, ValueError):
            continue
    return resident, anonymous


def measure(config, output_dir, interval):
    """Runs one config; returns {config, peak_gib, peak_stage, peak_anonymous_gib, stage_peaks_gib, wall_s, ...}."""
    command = [
        sys.executable, "-m", "edgekeras", "run", "--config", config, "--overwrite", "--no-progress",
        "--output-dir", output_dir,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = {"stage": "data_and_model", "peak": 0, "peak_stage": None, "peak_anonymous": 0, "done": []}
    stage_peaks = {}

    def follow_output():
        for line in process.stdout:
            sys.stdout.write(line)
            match = STAGE_DONE.match(line.strip())
            if match:
                state["done"].append(match.group(1))
                state["stage"] = f"after {match.group(1)}"

    reader = threading.Thread(target=follow_output, daemon=True)
    reader.start()
    while process.poll() is None:
        rss, anonymous = tree_memory_bytes(process.pid)
        stage = state["stage"]
        if rss > state["peak"]:
            state["peak"], state["peak_stage"] = rss, stage
        state["peak_anonymous"] = max(state["peak_anonymous"], anonymous)
        stage_peaks[stage] = max(stage_peaks.get(stage, 0), rss)
        time.sleep(interval)
    reader.join(timeout=10)
    return {
        "config": config,
        "returncode": process.returncode,
        "peak_gib": round(state["peak"] / 2**30, 3),
        "peak_stage": state["peak_stage"],
        "peak_anonymous_gib": round(state["peak_anonymous"] / 2**30, 3),
        "stage_peaks_gib": {stage: round(peak / 2**30, 3) for stage, peak in stage_peaks.items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "stages": state["done"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="configs to run, one process each")
    parser.add_argument("--goal-gib", type=float, nargs="*", default=[], help="a goal per config, in GiB")
    parser.add_argument("--output-dir", default="runs/bench/peak_memory", help="where the runs write")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.goal_gib and len(args.goal_gib) != len(args.config):
        parser.error(f"--goal-gib needs one value per config ({len(args.config)}); received {len(args.goal_gib)}")
    results = []
    for index, config in enumerate(args.config):
        result = measure(config, args.output_dir, args.interval)
        if args.goal_gib:
            result["goal_gib"] = args.goal_gib[index]
            result["met"] = result["returncode"] == 0 and result["peak_gib"] <= args.goal_gib[index]
        results.append(result)
    print("\n| config | peak RSS GiB | stage at the peak | peak anonymous GiB | wall time | goal | met |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result['config']} | {result['peak_gib']:.2f} | {result['peak_stage']} | "
            f"{result['peak_anonymous_gib']:.2f} | {result['wall_s'] / 60:.1f} min | "
            f"{result.get('goal_gib', '-')} | {result.get('met', '-')} |"
        )
    for result in results:
        print(f"\n{result['config']}: peak RSS per stage (GiB, 'after X' = while the stage after X ran)")
        for stage, peak in result["stage_peaks_gib"].items():
            print(f"  {stage}: {peak:.2f}")
    write_json(args.json, {"machine": machine_info(), "results": results})
    return 0 if all(result["returncode"] == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
