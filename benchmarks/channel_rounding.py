"""Which multiple should a shrunk model's channel counts be rounded to? Measured on this CPU.

`edgekeras.channels.shrink` keeps a multiple of `round_to` channels per group
(zero channels are put back to reach it, which changes no prediction). The
int8 kernels (XNNPACK) process channels in SIMD-wide tiles, so a width just
above a tile boundary can cost as much as the next boundary. This script
measures it: a stack of MobileNetV2 inverted-residual blocks (expand 1x1,
depthwise 3x3, project 1x1, residual Add) at `--size` px whose expand width
takes every value in `--widths`, each converted to a full-int8 file through
`edgekeras.litert.convert`, all run in one LiteRT process at batch 1 on one
thread, alternated for `--rounds` rounds (median). Then, for each candidate
`round_to` R, the mean latency over the widths when each width w is rounded
up to the next multiple of R: the smallest mean is the best default (a
larger R never costs accuracy, only possibly latency).

Run:

    python benchmarks/channel_rounding.py --widths $(seq 17 80) --rounds 300 --candidates 1 2 4 8 16 \
        --json benchmarks/results/channels/channel_rounding.json

Result (2026-12-07, this 2-core x86 CPU with AVX-512, shared with other jobs,
48 px, 24-channel blocks, 300 rounds; `results/channels/channel_rounding.json`):
a staircase, flat within each run of 16 widths and one step up past each
multiple of 16:

| expand width | int8 median (ms) |
|---|---|
| 17-32 | 0.304-0.321 |
| 33-48 | 0.378-0.402 |
| 49-64 | 0.454-0.476 |
| 65-80 | 0.535-0.550 |

| round_to | mean latency of the widths 17-80, each rounded up | vs round_to=1 |
|---|---|---|
| 1 | 0.4278 ms | 1.000 |
| 2 | 0.4268 ms | 0.998 |
| 4 | 0.4249 ms | 0.993 |
| 8 | 0.4224 ms | 0.987 |
| 16 | 0.4245 ms | 0.992 |

Every rounding up to 16 costs the same latency (within the ~1 % noise): a
rounded width lands on the step its kept count is already on. So
`DEFAULT_ROUND_TO = 16`: no slower than finer rounding, up to 15 channels
more kept for accuracy. (A first run over 33-64 at 200 rounds, with more load
on the machine, showed the same step at 48 -> 49.)
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402

from edgekeras.compat import keras  # noqa: E402
from edgekeras.litert import convert  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


def blocks(width, size, channels=24, count=4):
    """Inverted-residual blocks with `width` expand channels (random weights: latency only)."""
    inputs = keras.Input((size, size, channels))
    x = inputs
    for _ in range(count):
        h = keras.layers.Conv2D(width, 1, use_bias=False)(x)
        h = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(h))
        h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(h))
        h = keras.layers.BatchNormalization()(keras.layers.Conv2D(channels, 1, use_bias=False)(h))
        x = keras.layers.Add()([x, h])
    return keras.Model(inputs, x)


def measure(widths, size, rounds):
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (16, size, size, 24)).astype("float32")
    runners = {}
    for width in widths:
        runner = Interpreter(model_content=convert(blocks(width, size), "int8", representative_data=calibration), num_threads=1)
        runner.allocate_tensors()
        runners[width] = runner
    # Timed as edgekeras.litert.measure_latency does: set the input, invoke.
    x = calibration[:1]
    for runner in runners.values():
        for _ in range(20):
            runner.set_tensor(runner.get_input_details()[0]["index"], x)
            runner.invoke()
    times = {width: [] for width in widths}
    for round_index in range(rounds):
        order = widths[round_index % len(widths):] + widths[: round_index % len(widths)]
        for width in order:
            runner = runners[width]
            runner.set_tensor(runner.get_input_details()[0]["index"], x)
            start = time.perf_counter()
            runner.invoke()
            times[width].append(time.perf_counter() - start)
    return {width: float(np.median(values)) * 1e3 for width, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=list(range(33, 65)))
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    latency = measure(args.widths, args.size, args.rounds)
    print("| expand width | int8 median (ms) |\n|---|---|")
    for width, value in latency.items():
        print(f"| {width} | {value:.4f} |")
    measured = set(latency)
    print("\n| round_to | mean latency over the widths, each rounded up (ms) | vs round_to=1 |\n|---|---|---|")
    means = {}
    for candidate in args.candidates:
        rounded = [math.ceil(w / candidate) * candidate for w in args.widths]
        if not all(w in measured for w in rounded):
            continue  # a rounded width outside the measured range
        means[candidate] = float(np.mean([latency[w] for w in rounded]))
        print(f"| {candidate} | {means[candidate]:.4f} | {means[candidate] / means[1]:.3f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"size": args.size, "rounds": args.rounds, "latency_ms": latency, "mean_rounded_ms": means}, handle, indent=1)


if __name__ == "__main__":
    main()
