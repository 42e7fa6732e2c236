"""The `edgekeras` command line (also `python -m edgekeras`).

Each subcommand is a function `_cmd_<name>(args)` registered in `_parser()`;
user errors (bad arguments, missing data or weights) print one clear line and
exit with status 2 instead of a stack trace.
"""

import argparse
import os
import sys
import time

__all__ = ["main"]


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


def _cmd_train(args):
    """Trains the seed's reference model and prints its test accuracy."""
    from edgekeras.compat import keras
    from edgekeras.data import load_image_data
    from edgekeras.models import build_transfer_model

    data = load_image_data(
        args.dataset,
        data_dir=args.data_dir,
        download=not args.no_download,
        image_size=args.image_size,
        batch_size=args.batch_size,
        validation_size=args.validation_size,
        max_train_examples=args.max_train_examples,
        seed=args.seed,
    )
    weights = None if args.weights.lower() == "none" else args.weights
    model = build_transfer_model(data.num_classes, args.image_size, weights=weights)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(
        f"Training {model.name} on {data.num_train} {data.name} images at "
        f"{args.image_size}px for {args.epochs} epoch(s)"
    )
    start = time.perf_counter()
    model.fit(data.train, validation_data=data.validation, epochs=args.epochs, verbose=2)
    train_seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(data.test, verbose=0)
    print(
        f"test accuracy: {accuracy:.4f} on {data.num_test} {data.name} test images "
        f"(loss {loss:.4f}; training took {train_seconds:.0f} s)"
    )
    return 0


def _cmd_run(args):
    """Runs the whole recipe of a TOML config and prints the report table."""
    import dataclasses

    from edgekeras.config import load_config
    from edgekeras.export import ExportError
    from edgekeras.run import run

    config = load_config(args.config)
    overrides = {key: value for key, value in (("name", args.name), ("output_dir", args.output_dir)) if value}
    if overrides:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, **overrides))
    start = time.perf_counter()
    try:
        result = run(config, progress=False if args.no_progress else None, overwrite=args.overwrite)
    except ExportError as error:
        print(f"edgekeras run: error: {error}", file=sys.stderr)
        return 2
    if result.report is None:
        print(f"edgekeras run: worker done after training; the chief writes {result.run_dir}")
        return 0
    print()
    print(result.table, end="")
    print(
        f"\nrun directory: {result.run_dir} (report.md, report.json, pareto.png, tflite/, models/, logs/); "
        f"wall time {time.perf_counter() - start:.0f} s"
    )
    return 0


def _cmd_tune(args):
    """Runs a hyperparameter search from a TOML config and prints the best trials."""
    from edgekeras.tuning import format_results, load_tune_config, pareto_front, tune

    config = load_tune_config(args.config)
    start = time.perf_counter()
    tuner = tune(config, overwrite=True if args.overwrite else None)
    if tuner.distributed_role == "worker":
        print(f"edgekeras tune: worker {tuner.tuner_id} done; results in {tuner.project_dir}")
        return 0
    results = tuner.results()
    front = pareto_front(results)
    print()
    print(format_results(results, top=args.top or config.tune.top, front=front))
    print(
        f"\n{len(results)} finished trial(s) in {tuner.project_dir} (results.json; trial_*/model.tflite; "
        f"TensorBoard: tensorboard --logdir {tuner.log_dir}); Pareto front (accuracy vs gzip size): "
        f"{', '.join(r.trial_id for r in front) or '-'}; wall time {time.perf_counter() - start:.0f} s"
    )
    return 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="edgekeras",
        description="Pruning, quantization-aware training and TFLite export inside model.fit.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the seed's reference model and print its test accuracy")
    _add_data_arguments(train)
    train.add_argument("--image-size", type=int, default=160)
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--max-train-examples", type=int, default=None, help="train on the first N examples only")
    train.add_argument(
        "--validation-size", type=int, default=5000, help="examples carved from the end of the training split"
    )
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_cmd_train)

    run = commands.add_parser(
        "run", help="train, prune, quantize, export, evaluate and report as one TOML config says"
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
    run.set_defaults(handler=_cmd_run)

    tune = commands.add_parser(
        "tune", help="search sparsity, learning rate and QAT epochs with keras-tuner, scored on the .tflite"
    )
    tune.add_argument("--config", required=True, help="the TOML config, e.g. configs/tune.toml")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming the project")
    tune.add_argument("--top", type=int, default=None, help="rows of the final table (default: tune.top)")
    tune.set_defaults(handler=_cmd_tune)
    return parser


def main(argv=None):
    """Runs the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    from edgekeras.data import DataNotFoundError
    from edgekeras.io import DiskFullError
    from edgekeras.models import WeightsError

    try:
        return args.handler(args)
    except (DataNotFoundError, WeightsError, DiskFullError, ValueError, TypeError) as error:
        print(f"edgekeras {args.command}: error: {error}", file=sys.stderr)
        return 2
