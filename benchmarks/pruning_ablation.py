"""Pruning ablation on a proxy of the default recipe: what each pruning choice is worth.

The proxy (minutes per row on a 2-core CPU): CIFAR-10 at 96 px, the first
10,000 training images (2,000 held out for validation), MobileNetV2 with
ImageNet weights fine-tuned from `block_12_expand` on cached activations
(blocks 12-16, Conv_1 and the classifier: 79 % of the weights), 3 float
epochs at Adam 3e-4 cosine. The float model is trained once; every row then
starts from its weights and runs one pruning phase (3 epochs, target 80 % of
the pruned layers) with `EdgeTrainer`, exactly as `edgekeras run` does. Each
row's full model is exported to .tflite (float32 and post-training int8, the
report's `pruned` and `pruned_quantized` files) and evaluated with LiteRT on
the first `--test-examples` test images; sparsity is read from the float32
file (zeros among all its conv/dense weights, frozen ones included).

Rows: the recipe the shipped configs use (`recipe`: 1x1 convolutions, global
allocation, distillation from the float model, Adam 5e-4 cosine with warm-up,
ramp over half the phase), then one change at a time: uniform allocation,
every layer (3x3 depthwise included), no distillation, a 10x smaller rate,
a longer ramp (80 % of the phase), and the 2026-11 recipe (`old`: every layer,
uniform, constant 5e-5, ramp 2/3, no distillation).

Run (writes the JSON and prints the Markdown table for benchmarks/README.md):

    TFDS_DATA_DIR=../shared/data/tfds EDGEKERAS_WEIGHTS=../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5 \
        python benchmarks/pruning_ablation.py --json runs/pruning_ablation.json
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edgekeras import features, keras  # noqa: E402
from edgekeras.data import load_image_data  # noqa: E402
from edgekeras.distillation import Distillation, pack_labels, teacher_outputs  # noqa: E402
from edgekeras.litert import evaluate_tflite, export_tflite  # noqa: E402
from edgekeras.models import build_transfer_model, split_model  # noqa: E402
from edgekeras.schedules import polynomial_ramp  # noqa: E402
from edgekeras.trainers import EdgeTrainer, phase_optimizer  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    policy: str = "pointwise"
    allocation: str = "global"
    distill: bool = True
    learning_rate: float = 5e-4
    cosine: bool = True
    ramp: float = 0.5


ROWS = (
    Row("recipe"),
    Row("uniform allocation", allocation="uniform"),
    Row("all layers (3x3 depthwise too)", policy="all"),
    Row("no distillation", distill=False),
    Row("learning rate 5e-5", learning_rate=5e-5),
    Row("ramp over 80 %", ramp=0.8),
    Row("old recipe (2026-11)", policy="all", allocation="uniform", distill=False, learning_rate=5e-5, cosine=False,
        ramp=2 / 3),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-examples", type=int, default=10000)
    parser.add_argument("--validation-examples", type=int, default=2000)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--trainable-from", default="block_12_expand")
    parser.add_argument("--float-epochs", type=int, default=3)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--target-sparsity", type=float, default=0.8)
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    parser.add_argument("--weights", default=os.environ.get("EDGEKERAS_WEIGHTS", "imagenet"))
    parser.add_argument("--seed", type=int, default=0, help="random seed (weight init, dropout, shuffling)")
    parser.add_argument("--json", default="runs/pruning_ablation.json")
    return parser.parse_args(argv)


def cached_data(args):
    """The float-trained model, its top, and the cached train/validation activations."""
    data = load_image_data(
        "cifar10", image_size=args.image_size, batch_size=64, validation_size=args.validation_examples,
        max_train_examples=args.train_examples, augment=False, seed=0,
    )
    model = build_transfer_model(
        data.num_classes, args.image_size, weights=args.weights, trainable_from=args.trainable_from, dropout=0.2,
    )
    prefix, top, _ = split_model(model)
    train = features.cache_features(prefix, data.train, progress=False)
    validation = features.cache_features(prefix, data.validation, progress=False)
    return data, model, top, train, validation


def train_float(args, top, train, validation):
    """Trains the float `top` once; returns its weights and the float phase's last epoch logs."""
    steps = int(np.ceil(len(train[0]) / 64))
    optimizer = phase_optimizer({"float": 3e-4, "prune": 1e-4, "qat": 1e-5}, decay_steps={"float": steps * args.float_epochs})
    trainer = EdgeTrainer(top, optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    trainer.fit(features.array_dataset(*train, 64, shuffle_seed=0), validation_data=features.array_dataset(*validation, 64),
                float_epochs=args.float_epochs, verbose=2)
    return top.get_weights(), trainer.summary()["final_logs"]["float"]


def prune_row(args, row, top, float_weights, train, validation):
    """Runs one row's pruning phase on `top` (left holding the pruned weights); returns its seconds and logs."""
    top.set_weights(float_weights)
    steps = int(np.ceil(len(train[0]) / 64)) * args.prune_epochs
    labels = train[1]
    if row.distill:
        labels = pack_labels(train[1], teacher_outputs(top, train[0]))  # the float model is the teacher
    optimizer = phase_optimizer(
        {"float": 1e-4, "prune": row.learning_rate, "qat": 1e-5},
        decay_steps={"prune": steps} if row.cosine else None, warmup_steps={"prune": steps // 20} if row.cosine else None,
    )
    trainer = EdgeTrainer(
        top, optimizer, "sparse_categorical_crossentropy", ["accuracy"], prune_policy=row.policy,
        prune_allocation=row.allocation, distillation=Distillation(phases=("prune",)) if row.distill else None,
    )
    start = time.perf_counter()
    trainer.fit(
        features.array_dataset(train[0], labels, 64, shuffle_seed=1),
        validation_data=features.array_dataset(*validation, 64),
        prune=polynomial_ramp(steps, args.target_sparsity, end=row.ramp, mask_updates=10),
        prune_epochs=args.prune_epochs, conversions=(), verbose=2,
    )
    return time.perf_counter() - start, trainer.summary()["final_logs"]["prune"]


def evaluate_row(args, model, data, directory):
    results = {}
    for conversion in ("float32", "int8"):
        path = os.path.join(directory, f"pruned_{conversion}.tflite")
        export_tflite(model, path, conversion, representative_data=data.validation, representative_examples=256,
                      verify_data=data.validation, verify_examples=64, min_agreement=0.0,
                      float_layers=("expanded_conv_depthwise",) if conversion == "int8" else ())
        evaluation = evaluate_tflite(path, data.test, max_examples=args.test_examples, latency_threads=(),
                                     progress=False)
        results[conversion] = evaluation
    return results


def markdown(rows):
    lines = [
        "| row | whole-file sparsity | pruned float32 | pruned int8 | val accuracy (Keras) | pruning phase |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['row']} | {row['sparsity']:.1%} | {row['pruned_float32']:.2%} | {row['pruned_int8']:.2%} | "
            f"{row['val_accuracy']:.2%} | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else list(ROWS)
    start = time.perf_counter()
    data, model, top, train, validation = cached_data(args)
    float_weights, float_logs = train_float(args, top, train, validation)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        evaluation = evaluate_row(args, model, data, directory)
        float_row = {"row": "float (before pruning)", "sparsity": evaluation["float32"].sparsity,
                     "pruned_float32": evaluation["float32"].accuracy, "pruned_int8": evaluation["int8"].accuracy,
                     "val_accuracy": float_logs.get("val_accuracy", float("nan")), "seconds": 0.0}
        print(markdown([float_row]), flush=True)
        for row in chosen:
            seconds, logs = prune_row(args, row, top, float_weights, train, validation)
            evaluation = evaluate_row(args, model, data, directory)
            results.append({
                "row": row.name, "settings": dataclasses.asdict(row), "seconds": seconds,
                "sparsity": evaluation["float32"].sparsity, "pruned_float32": evaluation["float32"].accuracy,
                "pruned_int8": evaluation["int8"].accuracy, "val_accuracy": logs.get("val_accuracy", float("nan")),
            })
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
            # Written after every row (atomically): an interrupted run keeps what it measured.
            _write(args, float_row, results, start, complete=len(results) == len(chosen))
    print(markdown([float_row, *results]))
    return 0


def _write(args, float_row, results, start, complete):
    write_json(args.json, {
        "machine": machine_info(), "arguments": vars(args), "float": float_row, "rows": results,
        "seconds": time.perf_counter() - start, "complete": complete, "table": markdown([float_row, *results]),
    })


if __name__ == "__main__":
    sys.exit(main())
