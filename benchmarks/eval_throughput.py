"""Evaluation throughput: edgekeras' batched LiteRT evaluation vs Keras predict vs a per-image loop.

One MobileNetV2 transfer classifier (`edgekeras.models.build_transfer_model`,
ImageNet base frozen, its softmax head trained briefly on `--train-examples`
CIFAR-10 training images so that accuracies mean something) is exported to
float32 and int8 .tflite files with `edgekeras.litert.export_tflite`, and the
first `--examples` CIFAR-10 test images are classified five ways:

- `edgekeras_float32`, `edgekeras_int8`: `edgekeras.litert.TFLiteModel(...,
  num_threads=--threads).predict(images, batch_size=--batch-size)`, the
  batched, multi-threaded LiteRT path `evaluate_tflite` / `evaluate_accuracy`
  use (one allocation at the batch size, the last short batch padded).
- `keras_predict`: the Keras model's `model.predict(images, batch_size=...)`
  (TensorFlow's own thread pools, i.e. every core).
- `naive_float32`, `naive_int8`: the seed notebook's loop on the same files:
  an `ai_edge_litert` Interpreter with default settings (`num_threads=None`,
  which LiteRT's Python wrapper runs with 1 thread), `set_tensor` / `invoke` /
  `get_tensor` one image at a time.

The images are decoded, resized to `--image-size` and scaled to [-1, 1] once,
before any timing, into one float32 array that every variant reads, so
preprocessing is excluded from all of them alike. Each variant is built and
warmed up once (allocation, XNNPACK weight packing, Keras tracing excluded);
then rounds classify all the images once per variant, in an order rotated each
round (A B C D E, B C D E A, ...), so that drifts of a shared machine hit all
variants alike. The table reports the median and the spread (min-max) of
images/s, the ratio to the seed's per-image float32 loop, top-1 accuracy and
top-1 agreement with `keras_predict` (edgekeras and the naive loop run the same
file, so they must agree exactly). Goal: edgekeras >= 300 images/s on 2 threads.

Run:

    python benchmarks/eval_throughput.py --examples 2000 --threads 2 --rounds 5 --json runs/bench/eval_throughput.json
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)  # this checkout's edgekeras, not whichever one is installed

import numpy as np  # noqa: E402

from edgekeras import keras  # noqa: E402
from edgekeras.data import load_image_data  # noqa: E402
from edgekeras.litert import TFLiteModel  # noqa: E402
from edgekeras.litert import export_tflite  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)
from edgekeras.models import build_transfer_model  # noqa: E402

VARIANTS = ("edgekeras_float32", "edgekeras_int8", "keras_predict", "naive_float32", "naive_int8")
GOAL_IMAGES_PER_S = 300.0
DEFAULT_WEIGHTS = os.environ.get("EDGEKERAS_WEIGHTS") or os.path.join(
    SHARED, "weights", "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"
)
DEFAULT_DATA_DIR = os.environ.get("TFDS_DATA_DIR") or os.path.join(SHARED, "tfds")


def take(dataset, count):
    """The first `count` (images, labels) of a batched dataset, as numpy arrays."""
    images, labels, total = [], [], 0
    for batch_images, batch_labels in dataset.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
        total += len(batch_images)
        if total >= count:
            break
    if total < count:
        raise SystemExit(f"the split holds only {total} images, fewer than the {count} asked for")
    return np.concatenate(images)[:count].astype(np.float32), np.concatenate(labels)[:count]


class NaiveLoop:
    """The seed notebook's evaluation: one image per invoke, default interpreter settings."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        if self.input["dtype"] != np.float32:
            raise SystemExit(f"{path} takes {self.input['dtype']} input; export it with io_dtype='float32'")

    def predict(self, images):
        outputs = []
        for index in range(len(images)):
            self.interpreter.set_tensor(self.input["index"], images[index : index + 1])
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(self.output["index"])[0].copy())
        return np.stack(outputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="CIFAR-10 test images classified per pass")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64, help="batch of edgekeras' LiteRT path and of model.predict")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads of the edgekeras variants")
    parser.add_argument("--naive-threads", type=int, default=None,
                        help="num_threads of the per-image loop (default: LiteRT's default, as the seed)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per variant after warm-up")
    parser.add_argument("--train-examples", type=int, default=1000,
                        help="training images the head is fitted on for one epoch first (0: untrained head)")
    parser.add_argument("--calibration-examples", type=int, default=256, help="training images for int8 calibration")
    parser.add_argument("--int8-float-layers", nargs="*", default=["expanded_conv_depthwise"],
                        help="layers the int8 file keeps in float, as configs/seed.toml (none: fully int8)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="MobileNetV2 no-top .h5 ('imagenet' downloads)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="TFDS data dir holding cifar10/")
    parser.add_argument("--workdir", default=None, help="where the .tflite files go (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="runs/bench/eval_throughput.json", help="where to write the results ('' for nowhere)")
    args = parser.parse_args(argv)
    for name in ("examples", "image_size", "batch_size", "threads", "rounds", "calibration_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer. Received: {getattr(args, name)}")
    if args.train_examples < 0 or (args.naive_threads is not None and args.naive_threads < 1):
        parser.error("--train-examples must be >= 0 and --naive-threads >= 1")

    keras.utils.set_random_seed(args.seed)
    data = load_image_data(
        "cifar10", data_dir=args.data_dir, download=False, image_size=args.image_size, batch_size=args.batch_size,
        validation_size=0, max_train_examples=max(args.train_examples, args.calibration_examples), seed=args.seed,
    )
    print(f"decoding and resizing {args.examples} test images to {args.image_size} px ...", flush=True)
    images, labels = take(data.test, args.examples)
    calibration, _ = take(data.train, args.calibration_examples)
    print(f"test images: {images.shape} float32 in [{images.min():.2f}, {images.max():.2f}] "
          f"({images.nbytes / 2**20:.0f} MiB), materialized before timing", flush=True)

    model = build_transfer_model(data.num_classes, args.image_size, weights=args.weights)
    if args.train_examples:
        print(f"training the head on {data.num_train} images for one epoch ...", flush=True)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.train, epochs=1, verbose=2)

    workdir_context = tempfile.TemporaryDirectory(prefix="eval_throughput_") if args.workdir is None else None
    workdir = args.workdir or workdir_context.name
    files = {}
    for conversion in ("float32", "int8"):
        exported = export_tflite(
            model, os.path.join(workdir, f"{conversion}.tflite"), conversion,
            representative_data=calibration if conversion == "int8" else None,
            representative_examples=args.calibration_examples,
            verify_data=images[: args.batch_size], verify_examples=args.batch_size,
            float_layers=args.int8_float_layers if conversion == "int8" else (),
        )
        files[conversion] = exported.path
        print(f"exported {exported.path}: {exported.size_bytes / 2**20:.2f} MiB, top-1 agreement with Keras "
              f"{exported.verification.top1_agreement:.1%} on {exported.verification.examples} images", flush=True)

    lite = {c: TFLiteModel(files[c], num_threads=args.threads) for c in ("float32", "int8")}
    naive = {c: NaiveLoop(files[c], num_threads=args.naive_threads) for c in ("float32", "int8")}
    runners = {
        "edgekeras_float32": lambda: lite["float32"].predict(images, batch_size=args.batch_size),
        "edgekeras_int8": lambda: lite["int8"].predict(images, batch_size=args.batch_size),
        "keras_predict": lambda: model.predict(images, batch_size=args.batch_size, verbose=0),
        "naive_float32": lambda: naive["float32"].predict(images),
        "naive_int8": lambda: naive["int8"].predict(images),
    }

    # Warm-up, untimed: LiteRT allocation and XNNPACK weight packing, Keras'
    # tracing of predict for a full and the last short batch.
    warm = images[: args.batch_size + len(images) % args.batch_size]
    model.predict(warm, batch_size=args.batch_size, verbose=0)
    for conversion in ("float32", "int8"):
        lite[conversion].predict(warm, batch_size=args.batch_size)
        naive[conversion].predict(warm[:8])
    print("variants built and warmed up", flush=True)

    seconds = {name: [] for name in VARIANTS}
    outputs = {}
    for round_index in range(args.rounds):
        shift = round_index % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for name in order:
            start = time.perf_counter()
            result = runners[name]()
            seconds[name].append(time.perf_counter() - start)
            outputs[name] = np.asarray(result).reshape(len(images), -1)
        print(f"round {round_index + 1}/{args.rounds} done ({' '.join(order)}): "
              + ", ".join(f"{n} {len(images) / seconds[n][-1]:.0f}/s" for n in order), flush=True)

    predictions = {name: outputs[name].argmax(axis=1) for name in VARIANTS}
    baseline = statistics.median(len(images) / s for s in seconds["naive_float32"])
    results = {}
    for name in VARIANTS:
        rates = [len(images) / s for s in seconds[name]]
        median = statistics.median(rates)
        results[name] = {
            "seconds": seconds[name],
            "images_per_s": rates,
            "median_images_per_s": median,
            "min_images_per_s": min(rates),
            "max_images_per_s": max(rates),
            "ratio_to_naive_float32": median / baseline,
            "accuracy": float(np.mean(predictions[name] == labels)),
            "agreement_with_keras": float(np.mean(predictions[name] == predictions["keras_predict"])),
            "threads": args.threads if name.startswith("edgekeras_") else (
                args.naive_threads if name.startswith("naive_") else "TensorFlow default"),
        }
    same_file = {c: float(np.mean(predictions[f"edgekeras_{c}"] == predictions[f"naive_{c}"])) for c in ("float32", "int8")}

    def threads_label(name):
        if name.startswith("edgekeras_"):
            return str(args.threads)
        if name.startswith("naive_"):
            return str(args.naive_threads) if args.naive_threads else "default (1)"
        return f"TF ({os.cpu_count()} cores)"

    print()
    print(f"{len(images)} CIFAR-10 test images at {args.image_size} px, {args.rounds} timed passes per variant "
          f"(head trained on {data.num_train if args.train_examples else 0} images)")
    print()
    print("| variant | threads | median images/s | spread (min–max) | × naive float32 | accuracy | agreement with Keras |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {threads_label(name)} | {row['median_images_per_s']:.1f} | "
            f"{row['min_images_per_s']:.1f}–{row['max_images_per_s']:.1f} | {row['ratio_to_naive_float32']:.2f} | "
            f"{row['accuracy']:.2%} | {row['agreement_with_keras']:.2%} |"
        )
    print()
    print("Same file, batched vs per-image: top-1 agreement "
          + ", ".join(f"{c} {same_file[c]:.2%}" for c in same_file))
    for conversion in ("float32", "int8"):
        rate = results[f"edgekeras_{conversion}"]["median_images_per_s"]
        print(f"edgekeras {conversion}: {rate:.0f} images/s on {args.threads} threads "
              f"(goal >= {GOAL_IMAGES_PER_S:.0f}: {'met' if rate >= GOAL_IMAGES_PER_S else 'NOT met'})")

    report = {
        "benchmark": "eval_throughput",
        "settings": vars(args),
        "model": f"MobileNetV2 transfer (alpha=1.0, {args.image_size}px, base frozen), "
                 f"head trained on {data.num_train if args.train_examples else 0} images",
        "machine": machine_info(),
        "goal_images_per_s": GOAL_IMAGES_PER_S,
        "same_file_agreement": same_file,
        "results": results,
    }
    if workdir_context is not None:
        workdir_context.cleanup()
    return write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
