"""QAT ablation on a proxy of the default recipe: what each quantization-aware training choice is worth.

The proxy (minutes per row on a 2-core CPU) is the one of `pruning_ablation.py`:
CIFAR-10 at 96 px, the first 10,000 training images (2,000 held out for
validation), MobileNetV2 with ImageNet weights fine-tuned from `block_12_expand`
on cached activations, 3 float epochs at Adam 3e-4 cosine. A copy of the float
model is then pruned once with the pruning ablation's `recipe` row (3 epochs,
80 % of the 1x1 convolutions, global allocation, distillation). That gives the
two models `edgekeras run` quantizes: the float one (-> `qat_int8`) and the
pruned one (-> `pqat_int8`, prune-preserving scheme).

Their post-training twins are the float and pruned models exported to
post-training int8 (`int8` and `pruned_int8` of a run: 256 calibration images,
the first depthwise layer kept in float); the float32 files are reported as
reference. Every row then starts from the float weights, and separately from the
pruned ones, and runs one QAT phase with `EdgeTrainer` on the whole model with
full images (no cached activations: the quantized network is the whole network),
exactly as `edgekeras run`'s qat stage does; the QAT model is exported to int8
(the QAT file carries its own ranges) and evaluated with LiteRT on the first
`--test-examples` test images. Top-1 agreement is the export's verification:
the Keras QAT model against its .tflite file, on the first `--verify-examples`
test images.

Rows: the recipe (`recipe`: ranges calibrated on 16 batches before training,
the stem and the first depthwise layer with their BatchNorms and ReLU6s left in
float, distillation from the model being quantized at weight 0.5 and
temperature 4, frozen layers kept frozen, constant Adam 1e-5, 200 steps of 64
images), then one change at a time: no calibration (TFMOT's [-6, 6] start
ranges), no distillation (labels only), no skipped layers (the stem and the
first depthwise group quantized too), the whole network trainable (every layer,
BatchNorm included, in training mode), a 10x larger rate (1e-4), a quarter
of the steps (50), the rate decaying to 0 over the steps by a cosine
(`[qat] lr_schedule = "cosine"`) from 1e-4 and from 3e-4, a constant 3e-5, and
a constant 1e-5 over twice the steps. Rows are numbered in this order from 0
(`--rows`).

`--split validation` scores and verifies every file on the held-out validation
images instead of test images, for choosing a setting (the post-training
files calibrate on 256 of those validation images).

`--run-dir` replaces the proxy by a finished `edgekeras run` (e.g. the default
recipe's): its models/float.h5 and models/pruned.h5 are the models quantized,
its own int8 and pruned_int8 files are the post-training twins, and every row
runs the run's [qat] settings (skip layers, distillation, optimizer, steps: its
`qat.steps_per_epoch` x `qat.epochs`, or `--qat-steps` x `qat.epochs` where that
is 0; the training images of its [data] section) with only the row's changes; rows that
name no learning rate take the run's. `--models float` leaves out the pruned
model (half the time).

Run (writes the JSON and prints the Markdown table for benchmarks/README.md):

    TFDS_DATA_DIR=../shared/data/tfds EDGEKERAS_WEIGHTS=../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5 \
        python benchmarks/qat_ablation.py --json runs/qat_ablation.json

On the default recipe's own models (after `make run CONFIG=configs/default.toml`):

    TFDS_DATA_DIR=../shared/data/tfds python benchmarks/qat_ablation.py --run-dir runs/default \
        --split validation --test-examples 5000 --rows 9,10,7 --json runs/qat_default.json
"""

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edgekeras import keras  # noqa: E402
from edgekeras.app.config import load_config  # noqa: E402
from edgekeras.app.factories import load_data  # noqa: E402
from edgekeras.distillation import Distillation  # noqa: E402
from edgekeras.io import read_json  # noqa: E402
from edgekeras.litert import evaluate_tflite, export_tflite  # noqa: E402
from edgekeras.models import clone_with_weights, load_model  # noqa: E402
from edgekeras.trainers import EdgeTrainer, phase_optimizer  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)
from pruning_ablation import ROWS as PRUNE_ROWS  # noqa: E402  (benchmarks/pruning_ablation.py)
from pruning_ablation import cached_data, prune_row, train_float  # noqa: E402

# configs/default.toml's [qat] skip_layers: the first depthwise layer group
# (TFMOT quantizes a BatchNorm only together with the conv before it) and the
# stem before it, because the converter quantizes a skipped layer anyway when
# its input and output carry QAT ranges: only a run from the model's input
# stays float in the file.
SKIP_LAYERS = (
    "Conv1", "bn_Conv1", "Conv1_relu",
    "expanded_conv_depthwise", "expanded_conv_depthwise_BN", "expanded_conv_depthwise_relu",
)
# Post-training int8 keeps this layer in float ([export] int8_float_layers);
# ignored for a QAT model, which carries its own ranges.
FLOAT_LAYERS = ("expanded_conv_depthwise",)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    calibration_steps: int = 16
    distill: bool = True
    skip: bool = True
    keep_frozen: bool = True
    learning_rate: float | None = None  # None: the recipe's (the proxy's 1e-5, a --run-dir run's [qat] rate)
    lr_schedule: str = "constant"
    steps_fraction: float = 1.0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What every row changes one thing of: the proxy's QAT settings, or a finished run's [qat] section."""

    skip_layers: tuple = SKIP_LAYERS
    distill_weight: float = 0.5
    temperature: float = 4.0
    learning_rate: float = 1e-5
    optimizer: str = "adam"
    steps: int = 200


ROWS = (
    Row("recipe"),
    Row("no calibration", calibration_steps=0),
    Row("no distillation", distill=False),
    Row("no skipped layers", skip=False),
    Row("whole network trainable (BatchNorm included)", keep_frozen=False),
    Row("learning rate 1e-4", learning_rate=1e-4),
    Row("steps x0.25", steps_fraction=0.25),
    Row("learning rate 1e-4, cosine decay", learning_rate=1e-4, lr_schedule="cosine"),
    Row("learning rate 3e-4, cosine decay", learning_rate=3e-4, lr_schedule="cosine"),
    Row("learning rate 3e-5", learning_rate=3e-5),
    Row("learning rate 1e-5, 2x the steps", learning_rate=1e-5, steps_fraction=2.0),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-examples", type=int, default=10000)
    parser.add_argument("--validation-examples", type=int, default=2000)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="where every file is scored and verified: the first --test-examples images of the "
                             "test split, or the held-out validation images (to choose a setting on)")
    parser.add_argument("--verify-examples", type=int, default=512,
                        help="images of --split the Keras-vs-.tflite agreement is measured on")
    parser.add_argument("--trainable-from", default="block_12_expand")
    parser.add_argument("--float-epochs", type=int, default=3)
    parser.add_argument("--prune-epochs", type=int, default=3)
    parser.add_argument("--target-sparsity", type=float, default=0.8)
    parser.add_argument("--qat-steps", type=int, default=200, help="QAT steps of the recipe (batches of 64)")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    parser.add_argument("--weights", default=os.environ.get("EDGEKERAS_WEIGHTS", "imagenet"))
    parser.add_argument("--run-dir", default=None,
                        help="a finished `edgekeras run` whose models, post-training files and [qat] settings replace the proxy")
    parser.add_argument("--models", choices=("both", "float"), default="both",
                        help="QAT of the float and the pruned model, or of the float one alone")
    parser.add_argument("--seed", type=int, default=0, help="random seed (weight init, dropout, shuffling)")
    parser.add_argument("--json", default="runs/qat_ablation.json")
    args = parser.parse_args(argv)
    if args.run_dir is not None and not os.path.exists(os.path.join(args.run_dir, "models", "float.h5")):
        parser.error(f"Argument `--run-dir` holds no models/float.h5. Received: --run-dir={args.run_dir!r}; "
                     "name the directory of a finished `edgekeras run`.")
    return args


def fixed_test_set(args, data):
    """`data` with its test split (`--split validation`: its validation split) read once into memory.

    The first `--test-examples` images, in batches of 64.

    Every file is evaluated, and every QAT file verified, on these images. Reading
    `data.test` itself again and again does not give them: its in-memory cache
    (`load_image_data(cache=True)`) is never read to the end here, and after a
    partial read by an export's verification (64 of 10,000 images) later passes
    yielded 67 images instead of 128 (tensorflow 2.21, 32 px smoke run).
    """
    images, labels, count = [], [], 0
    for x, y in data.validation if args.split == "validation" else data.test:
        images.append(x.numpy())
        labels.append(y.numpy())
        count += len(labels[-1])
        if count >= args.test_examples:
            break
    x, y = np.concatenate(images)[: args.test_examples], np.concatenate(labels)[: args.test_examples]
    return dataclasses.replace(data, test=tf.data.Dataset.from_tensor_slices((x, y)).batch(64))


def export_and_evaluate(args, model, data, path, conversion):
    """Exports `model` to `path` (as pruning_ablation's `evaluate_row` does) and evaluates it; returns a dict."""
    int8 = conversion == "int8"
    exported = export_tflite(
        model, path, conversion, representative_data=data.validation, representative_examples=256,
        verify_data=data.test if int8 else data.validation,
        verify_examples=min(args.verify_examples, args.test_examples) if int8 else 64, min_agreement=0.0,
        float_layers=FLOAT_LAYERS if int8 else (),
    )
    return scored_file(args, path, data, exported.verification.top1_agreement, exported.verification.max_abs_diff)


def scored_file(args, path, data, agreement, max_abs_diff):
    """The .tflite file at `path` evaluated on the fixed images; returns a dict with its export's verification."""
    evaluation = evaluate_tflite(path, data.test, max_examples=args.test_examples, latency_threads=(), progress=False)
    return {"accuracy": evaluation.accuracy, "examples": evaluation.examples, "sparsity": evaluation.sparsity,
            "size_bytes": evaluation.size_bytes, "agreement": agreement, "max_abs_diff": max_abs_diff}


def qat_model(recipe, row, model, weights, data):
    """One row's QAT of the full `model` started from `weights`; returns (the QAT model, its seconds, final logs)."""
    model.set_weights(weights)
    student = clone_with_weights(model)  # as the qat stage does: `model` keeps the weights the next row starts from
    if not row.keep_frozen:
        # EdgeTrainer has no switch for its frozen-layer guard (KeepFrozen):
        # with every layer trainable there is nothing frozen to hold.
        for layer in student.layers:
            layer.trainable = True
    steps = max(1, round(recipe.steps * row.steps_fraction))
    rate = recipe.learning_rate if row.learning_rate is None else row.learning_rate
    optimizer = phase_optimizer({"float": 1e-4, "prune": 1e-4, "qat": rate}, kind=recipe.optimizer,
                                decay_steps={"qat": steps} if row.lr_schedule == "cosine" else None)
    distill = row.distill and recipe.distill_weight > 0
    trainer = EdgeTrainer(
        student, optimizer, "sparse_categorical_crossentropy", ["accuracy"],
        quantize_skip=recipe.skip_layers if row.skip else (), calibration_steps=row.calibration_steps,
        # The teacher is the model as it enters QAT (its float self).
        distillation=Distillation(temperature=recipe.temperature, weight=recipe.distill_weight, phases=("qat",))
        if distill else None,
    )
    start = time.perf_counter()
    # Repeated: Keras does not restart a finite dataset when steps_per_epoch is shorter than it.
    trainer.fit(data.train.repeat(), qat_epochs=1, steps_per_epoch=steps, conversions=(), verbose=2)
    return trainer.qat_model, time.perf_counter() - start, trainer.summary()["final_logs"]["qat"]


def _pp(value):
    return f"{value * 100:+.1f} pp"


def _accuracy(result):
    return "–" if result is None else f"{result['accuracy']:.2%}"


def _agreement(result):
    return "–" if result is None else f"{result['agreement']:.1%}"


def markdown(twins, rows):
    """The table for benchmarks/README.md; "–" where a model was left out (`--models float`)."""
    lines = [
        "| row | qat_int8 | Δ vs int8 | pqat_int8 | Δ vs pruned int8 | agreement with Keras (qat / pqat) | row |",
        "|---|---|---|---|---|---|---|",
    ]
    if twins is not None:
        lines.append(
            f"| post-training int8 / pruned int8 (float32 {_accuracy(twins['float32'])} / "
            f"{_accuracy(twins.get('pruned_float32'))}) | {_accuracy(twins['int8'])} | – | "
            f"{_accuracy(twins.get('pruned_int8'))} | – | {_agreement(twins['int8'])} / "
            f"{_agreement(twins.get('pruned_int8'))} | {twins['seconds']:.0f} s |"
        )
    for row in rows:
        qat, pqat = row["qat_int8"], row.get("pqat_int8")
        delta_pqat = "–" if pqat is None else _pp(row["delta_pqat"])
        lines.append(
            f"| {row['row']} | {_accuracy(qat)} | {_pp(row['delta_qat'])} | {_accuracy(pqat)} | {delta_pqat} | "
            f"{_agreement(qat)} / {_agreement(pqat)} | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def proxy_models(args):
    """The proxy's `(data, model, float weights, pruned weights, pruning seconds)`, trained here."""
    data, model, top, train, validation = cached_data(args)
    data = fixed_test_set(args, data)
    float_top, _ = train_float(args, top, train, validation)
    float_weights = model.get_weights()  # `model` shares its layers with `top`
    prune_seconds, _ = prune_row(args, PRUNE_ROWS[0], top, float_top, train, validation)
    pruned_weights = model.get_weights()
    del train, validation
    gc.collect()
    return data, model, float_weights, pruned_weights, prune_seconds


def proxy_twins(args, data, model, float_weights, pruned_weights, directory):
    """The proxy models (the pruned one unless left out) exported to float32 and post-training int8 and scored."""
    twins = {}
    for name, weights in (("", float_weights), ("pruned_", pruned_weights)):
        if weights is None:
            continue
        model.set_weights(weights)
        for conversion in ("float32", "int8"):
            twins[name + conversion] = export_and_evaluate(
                args, model, data, os.path.join(directory, f"{name}{conversion}.tflite"), conversion)
    return twins


def run_models(args):
    """A finished run's `(data, float model, float weights, pruned weights or None, recipe)`."""
    config = load_config(os.path.join(args.run_dir, "config.toml"))
    data = fixed_test_set(args, load_data(config.data, config.run.seed, config.model))
    model = load_model(os.path.join(args.run_dir, "models", "float.h5"))
    pruned_path = os.path.join(args.run_dir, "models", "pruned.h5")
    pruned_weights = None
    if args.models == "both" and os.path.exists(pruned_path):
        pruned_weights = load_model(pruned_path).get_weights()
    qat = config.qat
    recipe = Recipe(
        skip_layers=tuple(qat.skip_layers), distill_weight=qat.distill_weight, temperature=qat.temperature,
        learning_rate=qat.learning_rate, optimizer=config.train.optimizer,
        steps=(qat.steps_per_epoch or args.qat_steps) * qat.epochs,
    )
    return data, model, model.get_weights(), pruned_weights, recipe


def run_twins(args, data, pruned):
    """The run's own float32 and post-training int8 files, scored as every row's (agreement: the run's verification)."""
    state = read_json(os.path.join(args.run_dir, "state.json"))
    twins = {}
    for name in ("float32", "int8") + (("pruned_float32", "pruned_int8") if pruned else ()):
        verification = state["exports"][name]["verification"]
        twins[name] = scored_file(args, os.path.join(args.run_dir, "tflite", f"{name}.tflite"), data,
                                  verification["top1_agreement"], verification["max_abs_diff"])
    return twins


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else list(ROWS)
    start = time.perf_counter()
    if args.run_dir is None:
        data, model, float_weights, pruned_weights, prune_seconds = proxy_models(args)
        recipe = Recipe(steps=args.qat_steps)
        if args.models == "float":
            pruned_weights = None
    else:
        data, model, float_weights, pruned_weights, recipe = run_models(args)
        prune_seconds = None
    results = []
    with tempfile.TemporaryDirectory() as directory:
        twins_start = time.perf_counter()
        if args.run_dir is None:
            twins = proxy_twins(args, data, model, float_weights, pruned_weights, directory)
        else:
            twins = run_twins(args, data, pruned_weights is not None)
        twins.update(prune_seconds=prune_seconds, seconds=time.perf_counter() - twins_start)
        print(markdown(twins, []), flush=True)
        _write(args, twins, results, start, complete=not chosen)
        models = [("qat", float_weights, "int8")]
        if pruned_weights is not None:
            models.append(("pqat", pruned_weights, "pruned_int8"))
        for row in chosen:
            row_start = time.perf_counter()
            result = {"row": row.name, "settings": dataclasses.asdict(row)}
            for name, weights, twin in models:
                quantized, seconds, logs = qat_model(recipe, row, model, weights, data)
                result[f"{name}_int8"] = dict(
                    export_and_evaluate(args, quantized, data, os.path.join(directory, f"{name}_int8.tflite"), "int8"),
                    qat_seconds=seconds, train_accuracy=logs.get("accuracy", float("nan")),
                )
                result[f"delta_{name}"] = result[f"{name}_int8"]["accuracy"] - twins[twin]["accuracy"]
                del quantized
                gc.collect()
            result["seconds"] = time.perf_counter() - row_start
            results.append(result)
            print(markdown(None, results[-1:]).splitlines()[-1], flush=True)
            # Written after every row (atomically): an interrupted run keeps what it measured.
            _write(args, twins, results, start, complete=len(results) == len(chosen))
    print(markdown(twins, results))
    return 0


def _write(args, twins, results, start, complete):
    write_json(args.json, {
        "machine": machine_info(), "arguments": vars(args), "post_training": twins, "rows": results,
        "seconds": time.perf_counter() - start, "complete": complete, "table": markdown(twins, results),
    })


if __name__ == "__main__":
    sys.exit(main())
