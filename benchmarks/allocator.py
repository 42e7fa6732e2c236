"""Training-step time and page faults under glibc malloc settings.

On this project's 2-core CPU the default recipe's reference run of
2026-12-03 spent 47 % of its CPU time in the kernel, page-faulting about
half a million times per training step: glibc returns the large buffers
TensorFlow frees every step to the kernel (unmapping them, or trimming the
heap), and every 4 KiB page of the next step's buffers faults again. Which
of the two happens depends on the heap's layout, so the same feed can fault
300 times more in one process than in another. Variants, each in its own
process (glibc reads `GLIBC_TUNABLES` at start-up; `edgekeras` applies the
same settings with `mallopt`, whose trim threshold stops at 2 GiB):

- `default`: glibc's defaults (dynamic mmap threshold, trimming at 2x it).
- `keep_heap`: no `mmap` per block and no trimming at `free`
  (`M_MMAP_MAX=0`, `M_TRIM_THRESHOLD` at its maximum); freed memory goes
  back to the kernel only at `return_freed_heap` (`malloc_trim`), between
  stages.
- `keep_heap_2_arenas`, `keep_heap_1_arena`: the same with glibc's arenas
  capped (by default up to 8 per core, one per thread, each keeping its own
  freed blocks). `keep_heap_1_arena` is what
  `edgekeras.memory.keep_freed_heap_for_reuse` sets.

`--phase train` (the default) trains the default recipe's fine-tuned part
(MobileNetV2 blocks 6-16 and the head at 128 px, fed 16x16x32 activations
from a memory-mapped cache through `edgekeras.features.array_dataset`,
batch 64, Adam, BatchNorm frozen); `--phase qat` trains the whole network
made quantization-aware by `edgekeras.quantization.quantize_model`, fed
images from memory (the demo recipe's peak: `--image-size 96
--trainable-from block_16_expand`). One warm-up epoch, one measured epoch.
Processes alternate (A B, B A, ...) so that drifts of a shared machine hit
all alike.

Run:

    python benchmarks/allocator.py --rounds 3 --steps 20 --json runs/allocator.json
    python benchmarks/allocator.py --phase qat --image-size 96 --trainable-from block_16_expand \
        --rounds 2 --steps 10 --json runs/allocator_qat.json
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_KEEP_HEAP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
VARIANTS = {
    "default": "",
    "keep_heap": _KEEP_HEAP,
    "keep_heap_2_arenas": _KEEP_HEAP + ":glibc.malloc.arena_max=2",
    "keep_heap_1_arena": _KEEP_HEAP + ":glibc.malloc.arena_max=1",
}


def child(args):
    """Trains for one warm-up and one measured epoch of `args.steps` steps; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from edgekeras import keras
    from edgekeras.features import array_dataset
    from edgekeras.models import build_transfer_model
    from edgekeras.models.graph import split_model
    from edgekeras.quantization import quantize_model

    tf.keras.utils.set_random_seed(0)
    model = build_transfer_model(10, args.image_size, weights=None, trainable_from=args.trainable_from, dropout=0.2)
    rows = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    if args.phase == "qat":
        # The whole network, quantization-aware, fed images from memory: the
        # stage at the demo recipe's peak.
        top, _ = quantize_model(model)
        inputs = rng.uniform(-1, 1, (rows, *top.input_shape[1:])).astype(np.float32)
        data = tf.data.Dataset.from_tensor_slices((inputs, rng.integers(0, 10, rows))).batch(args.batch_size)
    else:
        _, top, _ = split_model(model)
        path = os.path.join(tempfile.mkdtemp(), "features.npy")
        np.save(path, rng.standard_normal((rows, *top.input_shape[1:])).astype(np.float32))
        data = array_dataset(np.load(path, mmap_mode="r"), rng.integers(0, 10, rows), args.batch_size, shuffle_seed=0)
    top.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    times = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self._start)

    top.fit(data, epochs=1, verbose=0)  # tracing, first allocations
    before = resource.getrusage(resource.RUSAGE_SELF)
    top.fit(data, epochs=1, verbose=0, callbacks=[StepTimer()])
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "median_step_s": statistics.median(times),
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / len(times),
        "system_s_per_step": (after.ru_stime - before.ru_stime) / len(times),
        "user_s_per_step": (after.ru_utime - before.ru_utime) / len(times),
        "peak_rss_gib": after.ru_maxrss / 2**20,
    }))


def run_variant(name, args):
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if VARIANTS[name]:
        env["GLIBC_TUNABLES"] = VARIANTS[name]
    command = [
        sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
        "--trainable-from", args.trainable_from, "--phase", args.phase,
    ]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--trainable-from", default="block_6_expand")
    parser.add_argument("--phase", choices=("train", "qat"), default="train",
                        help="train: the fine-tuned part on cached activations; qat: the whole network, quantization-aware")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", default="")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import machine_info, write_json

    names = list(args.variants)
    runs = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            result = run_variant(name, args)
            runs[name].append(result)
            print(f"round {round_index + 1} {name}: {result['median_step_s']:.3f} s/step, "
                  f"{result['minor_faults_per_step']:.0f} faults/step, system {result['system_s_per_step']:.3f} s/step",
                  flush=True)

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    base = median(names[0], "median_step_s")
    summary = {}
    print("\n| variant | median s/step | spread of process medians | × first | minor faults/step "
          "| system CPU s/step | user CPU s/step | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        steps = [r["median_step_s"] for r in runs[name]]
        summary[name] = {
            "glibc_tunables": VARIANTS[name],
            "median_step_s": median(name, "median_step_s"),
            "ratio": median(name, "median_step_s") / base,
            "minor_faults_per_step": median(name, "minor_faults_per_step"),
            "system_s_per_step": median(name, "system_s_per_step"),
            "user_s_per_step": median(name, "user_s_per_step"),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs[name]),
            "runs": runs[name],
        }
        row = summary[name]
        print(f"| {name} | {row['median_step_s']:.3f} | {min(steps):.3f}–{max(steps):.3f} | {row['ratio']:.3f} "
              f"| {row['minor_faults_per_step']:.0f} | {row['system_s_per_step']:.3f} | {row['user_s_per_step']:.3f} "
              f"| {row['peak_rss_gib']:.2f} |")
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "variants": summary})


if __name__ == "__main__":
    main()
