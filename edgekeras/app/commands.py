"""What each `edgekeras` subcommand does, one function per command.

`edgekeras.app.cli` parses the arguments and calls `<command>(args)` here;
each returns the process exit status.
"""

import dataclasses
import time

from edgekeras.app import pipeline
from edgekeras.app import tune as tune_driver
from edgekeras.app.config import load_config
from edgekeras.compat import keras
from edgekeras.data import load_image_data
from edgekeras.memory import keep_freed_heap_for_reuse
from edgekeras.models import build_transfer_model
from edgekeras.tuning import format_results, pareto_front

__all__ = ["run", "train", "tune"]


def train(args):
    """Trains the seed's reference model and prints its test accuracy."""
    keep_freed_heap_for_reuse()
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


def run(args):
    """Runs the whole recipe of a TOML config and prints the report table."""
    keep_freed_heap_for_reuse()
    config = load_config(args.config)
    overrides = {key: value for key, value in (("name", args.name), ("output_dir", args.output_dir)) if value}
    if overrides:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, **overrides))
    start = time.perf_counter()
    result = pipeline.run(
        config, progress=False if args.no_progress else None, overwrite=args.overwrite, verbose=args.verbose
    )
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


def tune(args):
    """Runs a hyperparameter search from a TOML config and prints the best trials."""
    keep_freed_heap_for_reuse()
    config = tune_driver.load_tune_config(args.config)
    start = time.perf_counter()
    tuner = tune_driver.tune(config, overwrite=True if args.overwrite else None)
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
