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


def tree_rss_bytes(pid):
    """Resident set of `pid` and its descendants, in bytes (0 once it has exited)."""
    total = 0
    for member in _children(pid):
        try:
            with open(f"/proc/{member}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(config, output_dir, interval):
    """Runs one config and returns {config, peak_gib, peak_stage, wall_s, returncode, stages}."""
    command = [
        sys.executable, "-m", "edgekeras", "run", "--config", config, "--overwrite", "--no-progress",
        "--output-dir", output_dir,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = {"stage": "data_and_model", "peak": 0, "peak_stage": None, "done": []}

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
        rss = tree_rss_bytes(process.pid)
        if rss > state["peak"]:
            state["peak"], state["peak_stage"] = rss, state["stage"]
        time.sleep(interval)
    reader.join(timeout=10)
    return {
        "config": config,
        "returncode": process.returncode,
        "peak_gib": round(state["peak"] / 2**30, 3),
        "peak_stage": state["peak_stage"],
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
    print("\n| config | peak RSS GiB | stage at the peak | wall time | goal | met |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result['config']} | {result['peak_gib']:.2f} | {result['peak_stage']} | {result['wall_s'] / 60:.1f} min | "
            f"{result.get('goal_gib', '-')} | {result.get('met', '-')} |"
        )
    write_json(args.json, {"machine": machine_info(), "results": results})
    return 0 if all(result["returncode"] == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
