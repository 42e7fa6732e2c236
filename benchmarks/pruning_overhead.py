"""Steady-state epoch time: dense fit vs edgekeras pruning fit vs TFMOT wrappers.

Three variants train the same model (the seed's MobileNetV2 transfer model,
every layer trainable, random init) on the same synthetic batches:

- `dense`: plain `model.fit`.
- `edgekeras`: `model.fit(..., callbacks=[MagnitudePruning(schedule)])`.
- `tfmot`: `tfmot.sparsity.keras.prune_low_magnitude(model, schedule)` with
  `UpdatePruningStep`.

Both pruning variants use the same PolynomialDecay schedule (0 -> 75 %,
masks recomputed every `--frequency` steps) and prune the same layers. Each
variant is built and warmed up once (tracing excluded); then rounds run one
`fit` per variant, in an order rotated each round (A B C, B C A, C A B, ...), so
that drifts of a shared machine hit all variants alike. Epoch times are taken
between `on_epoch_begin` and `on_epoch_end`. The table reports the median and
the spread (min-max) of the epoch times, and the ratio of medians to dense.

Run:

    python benchmarks/pruning_overhead.py --rounds 5 --steps 20 --json runs/pruning_overhead.json
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

from edgekeras import keras  # noqa: E402
from edgekeras.callbacks import MagnitudePruning  # noqa: E402
from machine import write_json  # noqa: E402  (benchmarks/machine.py)
from edgekeras.models import build_transfer_model  # noqa: E402
from edgekeras.schedules import PolynomialDecay  # noqa: E402
from edgekeras.sparsity import overall_sparsity  # noqa: E402

VARIANTS = ("dense", "edgekeras", "tfmot")


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def build(args):
    return build_transfer_model(
        10, args.image_size, alpha=args.alpha, weights=None, trainable_from=0, name="bench"
    )


def schedule(args):
    total = args.steps * args.epochs_per_fit * (args.rounds + 1)
    end_step = max(args.frequency, (total // 2) // args.frequency * args.frequency)
    return PolynomialDecay(0.0, 0.75, begin_step=0, end_step=end_step, frequency=args.frequency)


def make_variant(name, args, data):
    model = build(args)
    callbacks = []
    if name == "edgekeras":
        callbacks.append(MagnitudePruning(schedule(args)))
    elif name == "tfmot":
        model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule(args))
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    timer = EpochTimer()
    model.fit(data, epochs=1, callbacks=[*callbacks, timer], verbose=0)  # warm-up: tracing
    timer.times.clear()
    return {"model": model, "callbacks": callbacks, "timer": timer}


def measured_sparsity(name, model):
    if name == "tfmot":
        model = tfmot.sparsity.keras.strip_pruning(model)
    return overall_sparsity(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fits per variant after warm-up")
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch")
    parser.add_argument("--epochs-per-fit", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--frequency", type=int, default=10, help="mask update period in steps")
    parser.add_argument("--json", default="runs/pruning_overhead.json", help="where to write the results")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "epochs_per_fit", "batch_size", "frequency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer. Received: {getattr(args, name)}")

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.steps * args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.integers(0, 10, len(images))
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size).cache()

    variants = {}
    for name in VARIANTS:
        print(f"building and warming up {name} ...", flush=True)
        variants[name] = make_variant(name, args, data)

    for round_index in range(args.rounds):
        order = VARIANTS[round_index % 3:] + VARIANTS[: round_index % 3]
        for name in order:
            variant = variants[name]
            variant["model"].fit(
                data,
                epochs=args.epochs_per_fit,
                callbacks=[*variant["callbacks"], variant["timer"]],
                verbose=0,
            )
        print(f"round {round_index + 1}/{args.rounds} done ({' '.join(order)})", flush=True)

    dense_median = statistics.median(variants["dense"]["timer"].times)
    results = {}
    for name in VARIANTS:
        times = variants[name]["timer"].times
        median = statistics.median(times)
        results[name] = {
            "epoch_seconds": times,
            "median_s": median,
            "min_s": min(times),
            "max_s": max(times),
            "ratio_to_dense": median / dense_median,
            "final_sparsity": measured_sparsity(name, variants[name]["model"]),
        }

    print()
    print(f"{'variant':<10} {'median s/epoch':>15} {'spread (min-max)':>20} {'x dense':>8} {'sparsity':>9}")
    for name, row in results.items():
        spread = f"{row['min_s']:.3f}-{row['max_s']:.3f}"
        print(
            f"{name:<10} {row['median_s']:>15.3f} {spread:>20} {row['ratio_to_dense']:>8.3f} "
            f"{row['final_sparsity']:>9.3f}"
        )
    print(f"\nedgekeras pruning / dense = {results['edgekeras']['ratio_to_dense']:.3f}x (goal <= 1.15x); "
          f"TFMOT wrappers / dense = {results['tfmot']['ratio_to_dense']:.3f}x")

    report = {
        "benchmark": "pruning_overhead",
        "settings": vars(args),
        "epochs_measured_per_variant": args.rounds * args.epochs_per_fit,
        "model": f"MobileNetV2 transfer (alpha={args.alpha}, {args.image_size}px, all layers trainable)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__},
        "results": results,
    }
    return write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
