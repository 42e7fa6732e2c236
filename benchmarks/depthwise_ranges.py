"""Depthwise weight ranges in QAT: TFMOT's one range per kernel vs one per output channel.

TFMOT 0.8.1 fake-quantizes a DepthwiseConv2D kernel with a single range
(its per-axis quantizer reads the kernel's last axis, the depth multiplier);
TFLite's int8 depthwise kernel holds one scale per output channel, and the
converter takes the QAT model's ranges as those scales. edgekeras gives each
output channel its own range (`edgekeras/depthwise_quantizer.py`). This
script makes both QAT copies of a run's trained float model (`models/float.h5`,
with the run's `qat.skip_layers` left in float and its image size), calibrates their activation ranges on the same 16 validation batches
(no training step, so the weights are the float model's in both), converts
each to int8, and measures on the next validation images: the Keras QAT
model's accuracy, its int8 file's accuracy, and their top-1 agreement.

Run (after `make demo`, whose run directory is the default):

    TFDS_DATA_DIR=../shared/data/tfds python benchmarks/depthwise_ranges.py --run-dir runs/demo \
        --json runs/depthwise_ranges.json
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_registry as default_registry,
)

from edgekeras import keras, quantize_configs  # noqa: E402
from edgekeras.app.config import load_config  # noqa: E402
from edgekeras.app.factories import load_data  # noqa: E402
from edgekeras.litert import convert  # noqa: E402
from edgekeras.models import load_model  # noqa: E402
from edgekeras.quantization import calibrate_activation_ranges, quantize_model  # noqa: E402
from edgekeras.runtime import TFLiteModel  # noqa: E402
from machine import machine_info, write_json  # noqa: E402  (benchmarks/machine.py)


@contextlib.contextmanager
def tfmot_depthwise_ranges():
    """While active, new QAT copies get TFMOT's own DepthwiseConv2D config (one range per kernel)."""
    per_channel = quantize_configs.DepthwiseQuantizeConfig
    quantize_configs.DepthwiseQuantizeConfig = lambda: default_registry.Default8BitConvQuantizeConfig(
        ["depthwise_kernel"], ["activation"], False,
    )
    try:
        yield
    finally:
        quantize_configs.DepthwiseQuantizeConfig = per_channel


def measure(model, skip_layers, calibration, images, labels, per_channel):
    started = time.perf_counter()
    with contextlib.nullcontext() if per_channel else tfmot_depthwise_ranges():
        quantized, _ = quantize_model(model, quantize_skip=skip_layers)
    calibrate_activation_ranges(quantized, calibration, steps=len(calibration))
    keras_top1 = quantized.predict(images, batch_size=64, verbose=0).argmax(1)
    file_top1 = TFLiteModel(convert(quantized, "int8")).predict(images).argmax(1)
    return {
        "depthwise_ranges": "per output channel (edgekeras)" if per_channel else "one per kernel (TFMOT)",
        "keras_accuracy": float(np.mean(keras_top1 == labels)),
        "file_accuracy": float(np.mean(file_top1 == labels)),
        "agreement": float(np.mean(keras_top1 == file_top1)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def load_run(parser, run_dir, calibration_batches, examples):
    """`(config, float model, calibration batches, images, labels)` of a finished run: batches of 32
    validation images, the first `calibration_batches` for calibration, the next `examples` images to measure."""
    model_path = os.path.join(run_dir, "models", "float.h5")
    if not os.path.exists(model_path):
        parser.error(f"Argument `--run-dir` holds no models/float.h5. Received: --run-dir={run_dir!r}; "
                     "run `make demo` first, or name a finished run.")
    config = load_config(os.path.join(run_dir, "config.toml"))
    data = load_data(dataclasses.replace(config.data, batch_size=32), config.run.seed, config.model)
    if data.validation is None:
        parser.error(f"The run in --run-dir={run_dir!r} has no validation split (data.validation_size = 0).")
    batches = list(data.validation.take(calibration_batches + -(-examples // 32)))
    calibration = [images for images, _ in batches[:calibration_batches]]
    images = np.concatenate([images.numpy() for images, _ in batches[calibration_batches:]])[:examples]
    labels = np.concatenate([labels.numpy() for _, labels in batches[calibration_batches:]])[:examples]
    return config, load_model(model_path), calibration, images, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo", help="a finished run (config.toml, models/float.h5)")
    parser.add_argument("--calibration-batches", type=int, default=16, help="batches of 32 validation images")
    parser.add_argument("--examples", type=int, default=2048, help="validation images measured (after calibration)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: calibration runs in training mode, dropout included")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    config, model, calibration, images, labels = load_run(parser, args.run_dir, args.calibration_batches, args.examples)
    float_accuracy = float(np.mean(model.predict(images, batch_size=64, verbose=0).argmax(1) == labels))
    rows = [measure(model, config.qat.skip_layers, calibration, images, labels, per_channel) for per_channel in (False, True)]
    result = {
        "machine": machine_info(), "run_dir": args.run_dir, "image_size": config.data.image_size,
        "examples": int(len(labels)), "float_accuracy": float_accuracy, "rows": rows,
    }
    result["table"] = markdown_table(result)
    print("\n" + result["table"])
    write_json(args.json, result)
    return 0


def markdown_table(result):
    """The table for benchmarks/README.md (`readme_tables.py` publishes the JSON's `table` field)."""
    lines = [
        "| depthwise ranges | QAT Keras model | its int8 file | top-1 agreement |",
        "|---|---|---|---|",
        f"| float Keras model (reference) | {result['float_accuracy']:.2%} | – | – |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['depthwise_ranges']} | {row['keras_accuracy']:.2%} | {row['file_accuracy']:.2%} | {row['agreement']:.2%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
