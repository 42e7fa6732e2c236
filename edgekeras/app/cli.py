"""The `edgekeras` command line (also `python -m edgekeras`).

Each subcommand is a function `<name>(args)` of `edgekeras.app.commands`,
registered in `_parser()`. Errors edgekeras raises for the user
(`EdgekerasError`: a bad config, missing data or weights, a refused export)
print one clear line and exit with status 2; anything else is a bug and keeps
its traceback.

The commands module (and with it TensorFlow) is loaded only once the arguments
parse, so `edgekeras --help` and usage errors answer at once. TensorFlow's
native start-up lines (oneDNN notes, CUDA probing on a CPU machine, absl's
pre-initialisation warning) say nothing a user can act on, so they are hidden
unless `--verbose`: its C++ log level is raised to errors-only and file
descriptor 2 is parked in a temporary file while TensorFlow loads (those lines
are written before the log level applies); when the import itself fails, the
parked output is replayed.
"""

import argparse
import contextlib
import importlib
import logging
import os
import sys
import tempfile

from edgekeras.choices import ARCHITECTURES, NORMALIZATIONS
from edgekeras.errors import EdgekerasError

__all__ = ["main"]

# Where the subcommands live; imported after parsing (see the module docstring).
COMMANDS_MODULE = "edgekeras.app.commands"
# The device-side commands need no TensorFlow (edgekeras.runtime only).
DEVICE_COMMANDS_MODULE = "edgekeras.app.device"
# Nor does writing a starting config.
INIT_MODULE = "edgekeras.app.init_config"
# What `pip install "edgekeras[train]"` adds to the base (device-side) install.
TRAINING_PACKAGES = (
    "tensorflow", "tf_keras", "tensorflow_model_optimization", "keras_tuner", "tensorflow_datasets", "tensorboard",
    "sklearn", "matplotlib", "tqdm",
)


def _at_least(minimum, kind=int):
    """An argparse type: a number >= `minimum`, so a bad value is a usage error, not a traceback."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number >= {minimum}; received {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}; received {text!r}")
        return value

    return parse


def _add_data_arguments(parser):
    parser.add_argument("--dataset", default="cifar10", help="TFDS dataset name (default: cifar10)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with prepared TFDS data (default: $TFDS_DATA_DIR, then TFDS' default)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="never download; fail with a clear error if the data is not prepared",
    )
    parser.add_argument(
        "--weights",
        default=os.environ.get("EDGEKERAS_WEIGHTS", "imagenet"),
        help='MobileNetV2 weights: "imagenet", "none" or a local .h5 path '
        "(default: $EDGEKERAS_WEIGHTS, else imagenet)",
    )


@contextlib.contextmanager
def _native_stderr_parked():
    """Sends what native code writes to stderr into a temporary file; replays it on an exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            parked.seek(0)
            sys.stderr.write(parked.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _load_commands(module, verbose):
    if module != COMMANDS_MODULE:
        return importlib.import_module(module)
    if verbose:
        return importlib.import_module(module)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _native_stderr_parked():
        commands = importlib.import_module(module)
    # The converter's Python-side notes (e.g. "Please consider providing the
    # trackable_obj argument") concern TensorFlow's internals, not the user's run.
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return commands


def _parser():
    parser = argparse.ArgumentParser(
        prog="edgekeras",
        description="Pruning, quantization-aware training and TFLite export inside model.fit.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's native start-up and info lines; for `run`, every log entry "
        "(per-layer sparsity/<layer> too) on the epoch lines",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", parents=[common], help="train the seed's reference model and print its test accuracy"
    )
    _add_data_arguments(train)
    train.add_argument("--image-size", type=_at_least(32), default=160)
    train.add_argument("--epochs", type=_at_least(1), default=1)
    train.add_argument("--batch-size", type=_at_least(1), default=64)
    train.add_argument("--learning-rate", type=_at_least(1e-12, float), default=1e-3)
    train.add_argument("--max-train-examples", type=_at_least(1), default=None, help="train on the first N examples only")
    train.add_argument(
        "--validation-size", type=_at_least(0), default=5000, help="examples carved from the end of the training split"
    )
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler="train")

    run = commands.add_parser(
        "run", parents=[common], help="train, prune, quantize, export, evaluate and report as one TOML config says"
    )
    run.add_argument("--config", required=True, help="the TOML config, e.g. configs/demo.toml")
    run.add_argument("--name", default=None, help="override run.name (the run directory's name)")
    run.add_argument("--output-dir", default=None, help="override run.output_dir (default in configs: runs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run directory's contents and start over (default: resume an interrupted run of the "
        "same config; a finished one is left as it is)",
    )
    run.set_defaults(handler="run")

    tune = commands.add_parser(
        "tune", parents=[common], help="search sparsity, learning rate and QAT epochs with keras-tuner, scored on the .tflite"
    )
    tune.add_argument("--config", required=True, help="the TOML config, e.g. configs/tune.toml")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming the project")
    tune.add_argument("--top", type=_at_least(1), default=None, help="rows of the final table (default: tune.top)")
    tune.set_defaults(handler="tune")
    _add_init_command(commands)
    _add_device_commands(commands)
    return parser


def _add_init_command(commands):
    init = commands.add_parser(
        "init", help="write a complete, commented starting config for `edgekeras run`",
        description="Writes every section and key of an `edgekeras run` config, each with what it does; the "
        "values are the defaults except the model and the images chosen here. It passes validation as written.",
    )
    init.add_argument("config", help="the .toml file to write, e.g. configs/mine.toml")
    model = init.add_mutually_exclusive_group()
    model.add_argument("--architecture", choices=ARCHITECTURES, default=None, help="a backbone (default: mobilenet_v2)")
    model.add_argument("--factory", default=None, help='a function of yours returning the model, "module:function"')
    model.add_argument("--model-file", default=None, help="a trained model of yours (.h5, .keras or SavedModel)")
    images = init.add_mutually_exclusive_group()
    images.add_argument("--dataset", default=None, help="a TFDS image-classification dataset (default: cifar10)")
    images.add_argument("--images", default=None, help="a directory with one sub-folder of images per class")
    init.add_argument("--test-images", default=None, help="with --images: a directory of test images, same layout")
    init.add_argument(
        "--normalization", choices=NORMALIZATIONS, default=None,
        help="how your model expects its pixels scaled (needed with --factory or --model-file)",
    )
    init.add_argument("--name", default=None, help="run.name (default: the config file's name)")
    init.add_argument("--output-dir", default="runs", help="run.output_dir (default: runs)")
    init.add_argument("--force", action="store_true", help="overwrite the config file if it exists")
    init.set_defaults(handler="init", module=INIT_MODULE, verbose=False)


def _add_device_commands(commands):
    device = {"module": DEVICE_COMMANDS_MODULE, "verbose": False}
    bench = commands.add_parser("bench", help="latency percentiles and memory of a .tflite file (no TensorFlow needed)")
    bench.add_argument("model", help="the .tflite file")
    bench.add_argument("--threads", type=_at_least(1), nargs="+", default=[1], help="thread counts to time (default: 1)")
    bench.add_argument("--runs", type=_at_least(1), default=100, help="timed batch-1 runs per thread count")
    bench.add_argument("--warmup", type=_at_least(0), default=10, help="untimed runs first")
    bench.add_argument("--json", default=None, help="also write the result to this JSON file")
    bench.set_defaults(handler="bench", **device)

    evaluate = commands.add_parser(
        "evaluate", help="top-1 accuracy of a .tflite file on a folder of labelled images (no TensorFlow needed)"
    )
    evaluate.add_argument("model", help="the .tflite file (a single-input image classifier)")
    evaluate.add_argument("--images", required=True, help="a folder with one sub-folder of images per class")
    evaluate.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="minus_one_to_one",
        help="pixel scaling the model was trained with (the run's config.toml says; default: minus_one_to_one, MobileNetV2)",
    )
    evaluate.add_argument(
        "--class-names", default=None, help="the model's classes in id order, comma-separated (default: sorted folders)"
    )
    evaluate.add_argument("--batch-size", type=_at_least(1), default=32)
    evaluate.add_argument("--threads", type=_at_least(1), default=None, help="interpreter threads (default: LiteRT's)")
    evaluate.add_argument("--json", default=None, help="also write the result to this JSON file")
    evaluate.set_defaults(handler="evaluate", **device)

    c_array = commands.add_parser("c-array", help="write a .tflite file as a C header for TensorFlow Lite Micro")
    c_array.add_argument("model", help="the .tflite file")
    c_array.add_argument("--output", default=None, help="the header to write (default: <model>_data.h)")
    c_array.add_argument("--name", default=None, help="the array's C identifier (default: from the header's name)")
    c_array.set_defaults(handler="c_array", **device)


def main(argv=None):
    """Runs the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        commands = _load_commands(getattr(args, "module", COMMANDS_MODULE), args.verbose)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAINING_PACKAGES:
            raise
        print(
            f"edgekeras {args.command}: error: this install has the device side only (bench, evaluate, c-array); "
            f"`{args.command}` needs {error.name}. Install the training side: pip install \"edgekeras[train]\"",
            file=sys.stderr,
        )
        return 2
    try:
        return getattr(commands, args.handler)(args)
    except EdgekerasError as error:
        print(f"edgekeras {args.command}: error: {error}", file=sys.stderr)
        return 2
