"""Latency-allocated vs uniform slimming at one latency target: which keeps more accuracy? (issue #34 item 4)

A MobileNetV2 (keras.applications' layers, `--alpha`, `--image-size`, a
10-class head; random weights trained from scratch, or `--weights` ImageNet
no-top weights fine-tuned) is trained on a CIFAR-10 subset (the offline copy
in ../shared/data/tfds, upscaled). Its per-layer latency table is measured
with LiteRT on this machine (`measure_table`, int8, batch 1, `--threads`),
and for `--target` (a fraction of the dense int8 file's predicted latency)
slimmings are made from the trained weights:

- `allocated_<score>` for each of `--scores` (`allocated` when it is just
  the default `bn`): `allocate(groups, channel_importance(model, score),
  table, target)`, NetAdapt-style widths per channel group; `taylor` is
  estimated on the first `--taylor-batches` training batches;
- `uniform`: `uniform_at_latency(groups, table, target)`, the widest single
  fraction of every group predicted to meet the target (with
  `--match-uniform` the allocations aim at the latency it reaches: with
  small groups a uniform step is coarse and can stop well under the target).

Each keeps its groups' most important channels (`apply_widths`, the score it
was allocated with; `uniform` the first of `--scores`), is shrunk (`shrink`),
its BatchNormalization statistics re-estimated on `--recalibrate` training
batches, evaluated right away ("one-shot") and fine-tuned for the same
`--finetune-epochs` with the same data order and learning rate
(`--bn-momentum` while training: keras.applications' 0.999, which ImageNet
weights keep, leaves the moving statistics of a few epochs stale; random
weights get 0.9 from `build_transfer_model`). Reported per model: float validation
accuracy, the int8 file's validation accuracy (post-training quantization,
`--calibration` training images), the table's predicted latency ratio to the
dense model and the measured one: the int8 files (float I/O, as deployed)
timed in one process in alternating rounds (`alternating_medians`,
`--rounds`).

The defaults are the first, random-init configuration (4 minutes on the project's 2-core CPU; at
0.6 of the dense latency the `bn` allocation was not more accurate than uniform, +0.4 / -2.2 pp over
two seeds). The configuration that matters, ImageNet weights fine-tuned (about 7 minutes; figures in
benchmarks/README.md):

    python benchmarks/channel_allocation.py --weights ../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5 \
        --alpha 1.0 --image-size 64 --train 8000 --test 4000 --epochs 2 --rate 5e-4 --finetune-epochs 3 \
        --finetune-rate 5e-4 --bn-momentum 0.9 --recalibrate 20 --scores taylor,bn --target 0.6 --seed 0 \
        --json benchmarks/results/channels/channel_allocation_imagenet_t0.6_seed0.json
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edgekeras.channels import (  # noqa: E402
    LatencyTable, allocate, alternating_medians, apply_widths, channel_importance, find_groups, measure_table, shrink, uniform_at_latency,
)
from edgekeras.compat import keras  # noqa: E402
from edgekeras.litert import TFLiteModel, convert  # noqa: E402
from edgekeras.models import build_transfer_model, clone_with_weights  # noqa: E402

# The offline data copy beside the checkout; $EDGEKERAS_SHARED_DATA points a worktree elsewhere at it.
DATA_DIR = os.path.join(os.environ.get("EDGEKERAS_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data"), "tfds")
ROUND_TO = 16  # shrink's default: the CPU's int8 kernels step every 16 channels (channel_rounding.py)


def load(train_count, test_count, size, data_dir):
    """uint8 images resized to `size` (kept small in memory; scaled to [-1, 1] per batch) and labels."""
    import tensorflow_datasets as tfds

    train, test = tfds.load("cifar10", split=["train", "test"], data_dir=data_dir, download=False, as_supervised=True)

    def arrays(dataset, count):
        dataset = dataset.take(count).map(lambda x, y: (tf.cast(tf.image.resize(x, (size, size)), tf.uint8), y)).batch(500)
        images, labels = zip(*tfds.as_numpy(dataset))
        return np.concatenate(images), np.concatenate(labels)

    return arrays(train, train_count), arrays(test, test_count)


def batches(data, batch_size, seed=None):
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if seed is not None:
        dataset = dataset.shuffle(len(data[0]), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32) / 127.5 - 1.0, y)).prefetch(2)


def train(model, data, epochs, rate, batch_size, seed):
    """`epochs` of Adam at `rate`, cosine-decayed; the same seed gives the same batches."""
    keras.utils.set_random_seed(seed)
    if epochs == 0:
        return
    steps = epochs * -(-len(data[0]) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(rate, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(batches(data, batch_size, seed), epochs=epochs, verbose=2)


def set_momentum(model, momentum):
    """keras.applications' MobileNetV2 keeps moving statistics with momentum 0.999: too slow for a few epochs."""
    if momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = momentum


def recalibrate(model, data, count, batch_size):
    """Re-estimates every BatchNormalization's moving statistics: their mean over `count` training batches.

    Removing channels changes what the later layers see; the dense model's
    moving statistics no longer fit it (one-shot accuracy at chance).
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for step, (images, _) in enumerate(batches(data, batch_size).take(count)):
        for layer in norms:
            layer.momentum = step / (step + 1)  # the running mean of the batches' statistics
        model(images, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def accuracy(model, data):
    predictions = model.predict(batches(data, 250), verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == data[1]))


def int8_file(model, data, count):
    images = data[0][:count].astype("float32") / 127.5 - 1.0
    return convert(model, "int8", representative_data=images, representative_examples=count)


def int8_accuracy(content, data):
    runner = TFLiteModel(content, num_threads=2)
    images = data[0].astype("float32") / 127.5 - 1.0
    return float(np.mean(np.argmax(runner.predict(images, batch_size=50), axis=-1) == data[1]))


def slimmed(dense, widths, importance, test, train_data, args):
    source = clone_with_weights(dense)
    apply_widths(source, widths, importance)
    slim = shrink(source, round_to=ROUND_TO)
    set_momentum(slim, args.bn_momentum)
    if args.recalibrate:
        recalibrate(slim, train_data, args.recalibrate, args.batch_size)
    return slim, accuracy(slim, test)


def importances(dense, train_data, args):
    """`{score: channel_importance(dense, score)}`; `"taylor"` on the first `--taylor-batches` training batches."""
    found = {}
    for score in args.scores:
        data = batches(train_data, args.batch_size).take(args.taylor_batches) if score == "taylor" else None
        found[score] = channel_importance(dense, score, data=data, loss="sparse_categorical_crossentropy")
    return found


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--weights", default=None, help="ImageNet no-top .h5 weights of this alpha (default: random, trained from scratch)")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5, help="dense training epochs")
    parser.add_argument("--rate", type=float, default=2e-3, help="dense training learning rate")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.6, help="predicted int8 latency, fraction of the dense model's")
    parser.add_argument(
        "--match-uniform", action="store_true",
        help="allocate for the predicted latency the uniform slimming reaches instead of --target",
    )
    parser.add_argument("--min-fraction", type=float, default=0.1, help="allocate's least kept fraction per group")
    parser.add_argument(
        "--scores", type=lambda text: text.split(","), default=["bn"],
        help="comma-separated channel_importance scores, one allocated model each (bn, gamma, l2, taylor)",
    )
    parser.add_argument("--taylor-batches", type=int, default=16, help="training batches the taylor score is estimated on")
    parser.add_argument(
        "--bn-momentum", type=float, default=None,
        help="BatchNormalization momentum while training (default: the model's, 0.9 from random weights, 0.999 with --weights)",
    )
    parser.add_argument("--recalibrate", type=int, default=0, help="training batches the slimmed models' BN statistics are re-estimated on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200, help="alternating timing rounds (3 timed invocations each)")
    parser.add_argument("--calibration", type=int, default=256, help="int8 calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--dense-weights", default=None, help="an .h5 file: the dense weights are saved there, or read if it exists")
    parser.add_argument("--table", default=None, help="a .json file: the latency table is saved there, or read if it exists")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def main():
    args = parse()
    started = time.perf_counter()
    train_data, test_data = load(args.train, args.test, args.image_size, args.data_dir)
    keras.utils.set_random_seed(args.seed)
    dense = build_transfer_model(
        10, args.image_size, alpha=args.alpha, weights=args.weights, trainable_from="auto" if args.weights is None else 0,
        train_batchnorm=True,
    )
    set_momentum(dense, args.bn_momentum)
    if args.dense_weights and os.path.exists(args.dense_weights):
        dense.load_weights(args.dense_weights)
    else:
        train(dense, train_data, args.epochs, args.rate, args.batch_size, args.seed)
        if args.dense_weights:
            dense.save_weights(args.dense_weights)
    groups = find_groups(dense)
    clock = time.perf_counter()
    if args.table and os.path.exists(args.table):
        table = LatencyTable.load(args.table)
    else:
        table = measure_table(dense, groups=groups, num_threads=args.threads, points=4, round_to=ROUND_TO)
        if args.table:
            table.save(args.table)
    table_seconds = time.perf_counter() - clock
    scores = importances(dense, train_data, args)
    widths = {"uniform": uniform_at_latency(groups, table, args.target, round_to=ROUND_TO)}
    # Coarse groups (alpha 0.35, multiples of 16) can leave uniform well under the target: match it instead.
    target = table.predict(None, widths["uniform"], groups=groups) / table.predict() if args.match_uniform else args.target
    ranking = {"uniform": scores[args.scores[0]]}  # uniform keeps the first score's best channels
    for score, importance in scores.items():
        name = "allocated" if args.scores == ["bn"] else f"allocated_{score}"
        widths[name] = allocate(groups, importance, table, target, round_to=ROUND_TO, min_fraction=args.min_fraction)
        ranking[name] = importance
    models, rows = {"dense": dense}, {"dense": {"variant": "dense", "float_accuracy": accuracy(dense, test_data)}}
    for name, kept in widths.items():
        models[name], one_shot = slimmed(dense, kept, ranking[name], test_data, train_data, args)
        train(models[name], train_data, args.finetune_epochs, args.finetune_rate, args.batch_size, args.seed + 1)
        rows[name] = {"variant": name, "one_shot_accuracy": one_shot, "float_accuracy": accuracy(models[name], test_data)}
    files = {name: int8_file(model, train_data, args.calibration) for name, model in models.items()}
    milliseconds = dict(zip(files, alternating_medians(list(files.values()), args.threads, rounds=args.rounds, warmup=10)))
    prunable = [group for group in groups if group.prunable]
    for name, row in rows.items():
        kept = widths.get(name, {group.name: group.size for group in groups})
        row.update(
            int8_accuracy=int8_accuracy(files[name], test_data),
            predicted_ratio=table.predict(None, kept, groups=groups) / table.predict(),
            measured_ms=float(milliseconds[name]),
            measured_ratio=float(milliseconds[name] / milliseconds["dense"]),
            channels_kept=int(sum(kept[group.name] for group in prunable)),
            parameters=int(models[name].count_params()),
            size_bytes=len(files[name]),
        )
    report(args, rows, widths, groups, table_seconds, time.perf_counter() - started)


def report(args, rows, widths, groups, table_seconds, seconds):
    print(f"table measured in {table_seconds:.1f} s; whole run {seconds / 60:.1f} min")
    print("| model | channels kept | predicted × dense | measured × dense (ms) | one-shot | float accuracy | int8 accuracy |")
    print("|---|---|---|---|---|---|---|")
    for row in rows.values():
        one_shot = f"{row['one_shot_accuracy']:.4f}" if "one_shot_accuracy" in row else ""
        print(
            f"| {row['variant']} | {row['channels_kept']} | {row['predicted_ratio']:.3f} | {row['measured_ratio']:.3f} "
            f"({row['measured_ms']:.3f}) | {one_shot} | {row['float_accuracy']:.4f} | {row['int8_accuracy']:.4f} |"
        )
    prunable = [group.name for group in groups if group.prunable]
    print(f"widths ({' / '.join(widths)} / dense):")
    for name in prunable:
        size = next(group.size for group in groups if group.name == name)
        print(f"  {name}: {' / '.join(str(kept[name]) for kept in widths.values())} / {size}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        result = {
            "args": vars(args), "table_seconds": table_seconds, "seconds": seconds, "table": list(rows.values()),
            "widths": {name: {group: widths[name][group] for group in prunable} for name in widths},
            "group_sizes": {group.name: group.size for group in groups if group.prunable},
        }
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
