"""The seed notebook's recipe, re-implemented plainly, vs `edgekeras run` on the same subset.

Two pipelines produce the seed's three deliverables (float32, dynamic-range
int8 and pruned float32 .tflite files) from the same CIFAR-10 images with the
same hyperparameters (those of `configs/seed.toml`), and every file is scored
on the same test images:

- `seed`: what the notebook did, written the plain way. `tfds.load` of
  `train[:N]` / `test[:M]`, resize to `--image-size` and scale to [-1, 1] in
  `tf.data`; `tf_keras.Sequential([MobileNetV2(include_top=False,
  weights=<local .h5>) frozen, GlobalAveragePooling2D, Dense softmax])`;
  `model.fit`; `tf.lite.TFLiteConverter.from_keras_model` without
  optimization (float32) and with `Optimize.DEFAULT` (dynamic-range int8);
  TFMOT `prune_low_magnitude` of the whole model with a `PolynomialDecay`
  schedule and `UpdatePruningStep` (the frozen base is pruned too: TFMOT
  updates the masks of every wrapped layer called in training mode),
  `strip_pruning`, conversion of the pruned model; then each .tflite evaluated by an `ai_edge_litert` Interpreter with
  default settings, one image per `invoke`.
- `edgekeras`: `edgekeras.app.pipeline.run(config, overwrite=True)` on a config
  generated from `configs/seed.toml` (`load_config` + `dataclasses.replace` +
  `config_to_toml`, written beside the results) with the same subset, epochs,
  image size and weights, and the same three deliverables
  (`export.conversions = ["float32", "dynamic_int8"]`,
  `export.pruned_conversions = ["float32"]`). QAT is off by default
  (`qat.epochs = 0`, the seed had none); `--qat` keeps the config's QAT, which
  adds the `qat_int8` and `pqat_int8` files to edgekeras' side only. No
  validation split by default (`data.validation_size = 0`, as the seed), so
  both train on exactly `train[:N]`.

Differences that stay, because they are what edgekeras changes: edgekeras
runs the frozen base once over the training images (through LiteRT) and
trains the head on those activations instead of a Keras forward pass of the
whole network every epoch; it prunes only layers it fine-tunes (from
`prune.trainable_from` on, trained on activations cached at that cut; the seed
prunes its frozen base, which it cannot recover from); it converts through one
concrete function instead of `from_keras_model`'s SavedModel round trip,
verifies each file in LiteRT, and evaluates with batched multi-threaded LiteRT
(its evaluate stage also times 50 batch-1 invocations per file and thread
count, as every run does).

The pipelines run one after the other in one process, in an order alternated
each round (`--rounds`, default 1: seed first). The table reports each stage's
wall time (median and min-max over rounds), the ratio seed / edgekeras, and the
accuracy, size and sparsity of each deployed file.

Run:

    python benchmarks/seed_recipe.py --train-examples 5000 --test-examples 2000 --epochs 1 --prune-epochs 1 \
        --json runs/bench/seed_recipe.json
"""

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

from edgekeras.app.config import config_to_toml, load_config  # noqa: E402
from edgekeras.litert import file_sizes, tflite_sparsity  # noqa: E402
from edgekeras.io import atomic_write_text  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)

DEFAULT_WEIGHTS = os.environ.get("EDGEKERAS_WEIGHTS") or os.path.join(
    SHARED, "weights", "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"
)
DEFAULT_DATA_DIR = os.environ.get("TFDS_DATA_DIR") or os.path.join(SHARED, "tfds")
PIPELINES = ("seed", "edgekeras")
# (deliverable, seed file stem, edgekeras variant name)
DELIVERABLES = [
    ("float32", "float32", "float32"),
    ("dynamic-range int8 (the seed's quantized)", "dynamic_int8", "dynamic_int8"),
    ("pruned float32", "pruned_float32", "pruned_float32"),
]


def edgekeras_config(args, workdir):
    """configs/seed.toml with this benchmark's subset, written as TOML and loaded back."""
    config = load_config(args.base_config)
    qat = config.qat if args.qat else dataclasses.replace(config.qat, epochs=0)
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, name="edgekeras", output_dir=workdir, seed=args.seed),
        data=dataclasses.replace(
            config.data, data_dir=args.data_dir, download=False, image_size=args.image_size,
            batch_size=args.batch_size, validation_size=args.validation_examples,
            max_train_examples=args.train_examples,
        ),
        model=dataclasses.replace(config.model, weights=args.weights),
        train=dataclasses.replace(config.train, epochs=args.epochs),
        prune=dataclasses.replace(config.prune, epochs=args.prune_epochs),
        qat=qat,
        export=dataclasses.replace(config.export, conversions=("float32", "dynamic_int8"), pruned_conversions=("float32",)),
        evaluate=dataclasses.replace(config.evaluate, max_examples=args.test_examples, progress=False),
        report=dataclasses.replace(
            config.report, original="float32", quantized="dynamic_int8", pruned="pruned_float32",
            pruned_quantized="pqat_int8" if args.qat and qat.epochs and qat.quantize_pruned else "",
        ),
    )
    path = os.path.join(workdir, "edgekeras.toml")
    atomic_write_text(path, config_to_toml(config, header=f"benchmarks/seed_recipe.py: {args.base_config} on the benchmark's subset"))
    return load_config(path)


# ---------------------------------------------------------------- the seed recipe


def seed_pipeline(args, config, workdir):
    """The notebook's recipe, plainly. Returns (timings, files)."""
    timings = {}
    files = {}
    size = args.image_size
    out_dir = os.path.join(workdir, "seed")
    os.makedirs(out_dir, exist_ok=True)
    tf_keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()

    def stage(name, start):
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        print(f"[seed] {name}: {timings[name]:.1f} s", flush=True)

    # 1. data and model
    start = time.perf_counter()

    def preprocess(image, label):
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size))
        return image / 127.5 - 1.0, label

    train_raw, test_raw = tfds.load(
        "cifar10", split=[f"train[:{args.train_examples}]", f"test[:{args.test_examples}]"],
        data_dir=args.data_dir, download=False, as_supervised=True,
    )
    train = (train_raw.shuffle(1000, seed=args.seed).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    test = test_raw.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    base = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=args.weights)
    base.trainable = False
    # Sequential, as the notebook: the base gets fit's training=True, which
    # (frozen) BatchNormalization ignores but TFMOT's wrappers use to update
    # their masks. With `base(x, training=False)` TFMOT would prune the head only.
    model = tf_keras.Sequential([
        base,
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(tf_keras.optimizers.Adam(config.train.learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    stage("data_and_model", start)

    # 2. train
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=2)
    stage("train", start)

    # 3. TFLite: float and dynamic-range quantization
    start = time.perf_counter()
    for name, optimizations in (("float32", []), ("dynamic_int8", [tf.lite.Optimize.DEFAULT])):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = optimizations
        path = os.path.join(out_dir, f"{name}.tflite")
        with open(path, "wb") as handle:
            handle.write(converter.convert())
        files[name] = path
    stage("export", start)

    # 4. prune with TFMOT (the whole model, as the notebook), then strip and convert
    start = time.perf_counter()
    steps = int(np.ceil(args.train_examples / args.batch_size))
    end_step = max(1, int(steps * args.prune_epochs * config.prune.ramp_fraction))
    frequency = max(1, end_step // config.prune.mask_updates)
    end_step = max(frequency, end_step - end_step % frequency)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=config.prune.initial_sparsity, final_sparsity=config.prune.target_sparsity,
        begin_step=0, end_step=end_step, power=config.prune.power, frequency=frequency,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(tf_keras.optimizers.Adam(config.prune.learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(train, epochs=args.prune_epochs, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=2)
    stage("prune", start)

    start = time.perf_counter()
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    path = os.path.join(out_dir, "pruned_float32.tflite")
    with open(path, "wb") as handle:
        handle.write(converter.convert())
    files["pruned_float32"] = path
    stage("export", start)

    # 5. evaluate every .tflite, one image per invoke
    from ai_edge_litert.interpreter import Interpreter

    start = time.perf_counter()
    accuracies = {}
    for name, path in files.items():
        interpreter = Interpreter(model_path=path)
        interpreter.allocate_tensors()
        input_index = interpreter.get_input_details()[0]["index"]
        output_index = interpreter.get_output_details()[0]["index"]
        correct = total = 0
        for image, label in test.as_numpy_iterator():
            interpreter.set_tensor(input_index, image[None, ...])
            interpreter.invoke()
            correct += int(np.argmax(interpreter.get_tensor(output_index)[0]) == label)
            total += 1
        accuracies[name] = correct / total
        print(f"[seed] {name}: accuracy {accuracies[name]:.4f} on {total} test images", flush=True)
    stage("evaluate", start)
    timings["total"] = time.perf_counter() - started
    deliverables = {
        name: {"file": path, "accuracy": accuracies[name], "size_bytes": file_sizes(path)[0],
               "gzip_bytes": file_sizes(path)[1], "sparsity": tflite_sparsity(path)}
        for name, path in files.items()
    }
    return timings, deliverables


# ---------------------------------------------------------------- edgekeras


def edgekeras_pipeline(config):
    from edgekeras.app.pipeline import run

    result = run(config, overwrite=True, progress=False)
    timings = {key: float(value) for key, value in result.timings.items()}
    deliverables = {
        v["name"]: {"file": os.path.join(result.run_dir, v["file"]), "accuracy": v["accuracy"],
                    "size_bytes": v["size_bytes"], "gzip_bytes": v["gzip_bytes"], "sparsity": v["sparsity"]}
        for v in result.report["variants"]
    }
    return timings, deliverables


# ---------------------------------------------------------------- table


def _stage_rows(qat_epochs):
    """(label, seed stages summed, edgekeras stages summed); None = no such stage."""
    return [
        ("data + model", ["data_and_model"], ["data_and_model"]),
        ("float training", ["train"], None),
        ("pruning fit", ["prune"], None),
        ("frozen-base activation cache", None, ["cache_features"]),
        ("training + pruning (edgekeras: one stage, with the cache)", ["train", "prune"], ["cache_features", "train_and_prune"]),
        (f"QAT ({'qat.epochs = %d' % qat_epochs if qat_epochs else 'off: qat.epochs = 0, as the seed'})", None, ["qat"]),
        ("TFLite export (edgekeras: + verification, saving models)", ["export"], ["export", "save_models"]),
        ("evaluate", ["evaluate"], ["evaluate"]),
        ("total", ["total"], ["total"]),
    ]


def _summed(timings, keys):
    return sum(timings.get(key, 0.0) for key in keys)


def _cell(values):
    if values is None:
        return "–", None
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.1f}", median
    return f"{median:.1f} ({min(values):.1f}–{max(values):.1f})", median


def tables(timings, last_seed, last_ek, qat_epochs):
    """The stage and file tables from the pipelines' timings and last files.

    Args:
        timings: {"seed": [stage seconds per round], "edgekeras": [...]}, as the JSON keeps them.
        last_seed: the seed's files of the last round, {file stem: accuracy, sizes, sparsity}.
        last_ek: edgekeras' files of the last round, {variant name: the same fields}.
        qat_epochs: edgekeras' `qat.epochs` (0: QAT off).

    Returns:
        (stage rows, file rows, Markdown text of both tables), so a JSON written
        by this script can be rendered again (`benchmarks/readme_tables.py` reads its `table`).
    """
    stage_table, lines = [], ["| stage | seed recipe s | edgekeras run s | seed / edgekeras |", "|---|---|---|---|"]
    for label, seed_keys, edgekeras_keys in _stage_rows(qat_epochs):
        seed_text, seed_median = _cell(None if seed_keys is None else [_summed(t, seed_keys) for t in timings["seed"]])
        ek_text, ek_median = _cell(None if edgekeras_keys is None else [_summed(t, edgekeras_keys) for t in timings["edgekeras"]])
        ratio = seed_median / ek_median if seed_median is not None and ek_median else None
        lines.append(f"| {label} | {seed_text} | {ek_text} | {'–' if ratio is None else f'{ratio:.2f}'} |")
        stage_table.append({"stage": label, "seed_s": seed_median, "edgekeras_s": ek_median, "seed_over_edgekeras": ratio})

    rows = list(DELIVERABLES) + [(f"{n} (edgekeras only)", None, n) for n in last_ek if n not in {d[2] for d in DELIVERABLES}]
    file_table = []
    lines += [
        "",
        "| deliverable | seed accuracy | edgekeras accuracy | Δ edgekeras − seed | seed size | edgekeras size "
        "| seed sparsity | edgekeras sparsity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, seed_name, ek_name in rows:
        s, e = last_seed.get(seed_name) if seed_name else None, last_ek.get(ek_name)
        delta = f"{(e['accuracy'] - s['accuracy']) * 100:+.2f} pp" if s and e else "–"

        def both(fmt, key):
            return " | ".join("–" if row is None else fmt(row[key]) for row in (s, e))

        lines.append(
            f"| {label} | {both(lambda v: f'{v:.2%}', 'accuracy')} | {delta} | "
            f"{both(lambda v: f'{v / 2**20:.2f} MiB', 'size_bytes')} | {both(lambda v: f'{v:.1%}', 'sparsity')} |"
        )
        file_table.append({"deliverable": label, "seed": s, "edgekeras": e})
    return stage_table, file_table, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=5000, help="train[:N] for both pipelines")
    parser.add_argument("--test-examples", type=int, default=2000, help="test[:M] every file is scored on")
    parser.add_argument("--epochs", type=int, default=1, help="float training epochs")
    parser.add_argument("--prune-epochs", type=int, default=1, help="pruning epochs")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--validation-examples", type=int, default=0,
                        help="edgekeras' data.validation_size (0: none, as the seed; > 0 holds them out of the end of train)")
    parser.add_argument("--qat", action=argparse.BooleanOptionalAction, default=False,
                        help="keep configs/seed.toml's QAT on edgekeras' side (the seed had none)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of both pipelines, order alternated")
    parser.add_argument("--base-config", default=os.path.join(ROOT, "configs", "seed.toml"))
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="MobileNetV2 no-top .h5 ('imagenet' downloads)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="TFDS data dir holding cifar10/")
    parser.add_argument("--workdir", default="runs/bench/seed_recipe", help="where both pipelines write their files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="runs/bench/seed_recipe.json", help="where to write the results ('' for nowhere)")
    args = parser.parse_args(argv)
    for name in ("train_examples", "test_examples", "epochs", "prune_epochs", "image_size", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer. Received: {getattr(args, name)}")
    if args.validation_examples < 0:
        parser.error(f"--validation-examples must be >= 0. Received: {args.validation_examples}")
    if args.weights != "imagenet" and not os.path.isfile(args.weights):
        parser.error(f"--weights must be a MobileNetV2 no-top .h5 file or 'imagenet'. Received: {args.weights!r}")
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)

    config = edgekeras_config(args, args.workdir)
    print(f"edgekeras config: {config.source} (variants {', '.join(config.variant_names())})", flush=True)

    timings = {name: [] for name in PIPELINES}
    deliverables = {}
    for round_index in range(args.rounds):
        order = PIPELINES if round_index % 2 == 0 else PIPELINES[::-1]
        for name in order:
            tf_keras.backend.clear_session()
            gc.collect()
            print(f"\n=== round {round_index + 1}/{args.rounds}: {name} ===", flush=True)
            if name == "seed":
                stage_times, files = seed_pipeline(args, config, args.workdir)
            else:
                stage_times, files = edgekeras_pipeline(config)
            timings[name].append(stage_times)
            deliverables.setdefault(name, []).append(files)

    qat_epochs = config.qat.epochs
    print()
    print(f"Seed recipe vs edgekeras run: CIFAR-10 train[:{args.train_examples}], test[:{args.test_examples}], "
          f"{args.image_size} px, {args.epochs} float + {args.prune_epochs} pruning epoch(s), batch {args.batch_size}, "
          f"{args.rounds} round(s); QAT {'on (qat.epochs = %d, edgekeras only)' % qat_epochs if qat_epochs else 'off (qat.epochs = 0)'}")
    print()
    stage_table, file_table, text = tables(timings, deliverables["seed"][-1], deliverables["edgekeras"][-1], qat_epochs)
    print(text)
    print("Accuracies of the last round. The seed prunes the whole model (frozen base included); edgekeras "
          "prunes only the layers it fine-tunes (prune.trainable_from on). Both use configs/seed.toml's "
          "learning rates and pruning schedule "
          f"({config.prune.initial_sparsity:.0%} -> {config.prune.target_sparsity:.0%}, polynomial, "
          f"{config.prune.mask_updates} mask updates). edgekeras' evaluate stage includes its batch-1 latency "
          f"measurement ({config.evaluate.latency_runs} runs per file at {list(config.evaluate.latency_threads)} threads); "
          "the seed measured none.")

    report = {
        "benchmark": "seed_recipe",
        "settings": vars(args),
        "edgekeras_config": config.source,
        "qat_epochs": qat_epochs,
        "machine": machine_info(),
        "timings": timings,
        "stages": stage_table,
        "deliverables": file_table,
        "deliverables_per_round": deliverables,
        "table": text,
    }
    return write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
