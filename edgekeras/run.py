"""`edgekeras run --config FILE.toml`: the whole edge recipe as one command.

load data -> build model -> train -> prune -> QAT (and PQAT) -> export every
variant -> evaluate every .tflite on the test split with LiteRT -> report,
all into one run directory:

```
runs/<name>/
  config.toml          the resolved config (every key, defaults included)
  models/              float.h5, pruned.h5, qat.h5, pqat.h5 (Keras models)
  tflite/              one verified .tflite per variant
  logs/                TensorBoard: training curves per phase, report scalars + plot
  report.json, report.md, pareto.png
```

CPU cost is designed in. With `train.cache_features` the model is split at
the first layer that has trainable weights: the frozen prefix runs once over
the training and validation images (through LiteRT/XNNPACK by default, about
4x faster than tf_keras on CPU) and the float and pruning phases train only
the trainable top on the cached activations. The top shares its layers with
the full model, so the full model holds the trained weights afterwards and is
what gets exported. Cached activations are computed without re-augmentation
per epoch (`train.cache_passes` caches several augmented passes).
Quantization-aware training always runs on the whole model with images (the
quantized network is the whole network); `qat.steps_per_epoch` bounds it.

Example:

```python
from edgekeras.config import load_config
from edgekeras.run import run

result = run(load_config("configs/demo.toml"))
print(result.table)
```
"""

import dataclasses
import math
import os
import time

import numpy as np
import tensorflow as tf

from edgekeras.compat import keras
from edgekeras.config import config_to_toml
from edgekeras.data import load_image_data
from edgekeras.distribute import get_strategy, is_chief, shard_by_data, worker_id
from edgekeras.evaluate import TFLiteModel, evaluate_tflite, progress_bar
from edgekeras.export import ExportError, convert, export_tflite
from edgekeras.io import atomic_write_text
from edgekeras.models import build_transfer_model, clone_with_weights
from edgekeras.report import VariantResult, build_report, format_table, write_report

__all__ = ["RunResult", "run", "load_data", "build_model", "split_model", "cache_features", "array_dataset", "resolve_weights"]


@dataclasses.dataclass
class RunResult:
    """What `run` produced.

    Attributes:
        run_dir: the run directory.
        report: the report dict (as in report.json); None on a non-chief worker of a
            multi-worker run, which trains and writes nothing.
        table: the Markdown table (as in report.md).
        timings: seconds per stage.
    """

    run_dir: str
    report: dict
    table: str
    timings: dict


def _log(message):
    print(f"[edgekeras run] {message}", flush=True)


def resolve_weights(weights):
    """Maps the config's `model.weights` to `build_transfer_model`'s argument.

    "imagenet" uses $EDGEKERAS_WEIGHTS when it names a local file (offline
    machines), "none" means random initialization, anything else is a path.
    """
    if weights.lower() == "none":
        return None
    if weights == "imagenet":
        local = os.environ.get("EDGEKERAS_WEIGHTS", "")
        if local and local != "imagenet" and os.path.isfile(local):
            return local
    return weights


def load_data(section, seed):
    """Loads the data a config's [data] section describes (`load_image_data`)."""
    return load_image_data(
        section.dataset,
        data_dir=section.data_dir or None,
        download=section.download,
        image_size=section.image_size,
        batch_size=section.batch_size,
        validation_size=section.validation_size,
        augment=section.augment,
        shuffle_buffer=section.shuffle_buffer,
        seed=seed,
        max_train_examples=section.max_train_examples or None,
    )


def build_model(section, num_classes, image_size):
    """Builds the transfer model a config's [model] section describes."""
    return build_transfer_model(
        num_classes,
        image_size,
        alpha=section.alpha,
        weights=resolve_weights(section.weights),
        trainable_from=section.trainable_from or None,
        train_batchnorm=section.train_batchnorm,
        dropout=section.dropout,
    )


def split_model(model):
    """Splits `model` before its first layer with trainable weights.

    Returns `(prefix, top, cut_name)`: `prefix` maps the model's input to the
    activations entering the cut layer, `top` maps those activations to the
    output. `top` shares its layers with `model`, so training `top` trains
    `model`. Parameter-free layers such as Dropout right before the cut stay
    in `top`, since they behave differently in training. Returns
    `(None, model, None)` when the first layer is already trainable.

    Raises:
        ValueError: the cut falls where a skip connection crosses it (the top
            would need a second input), or nothing is trainable.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    index = next((i for i, layer in enumerate(layers) if layer.trainable_weights), None)
    if index is None:
        raise ValueError(f"Model {model.name!r} has no trainable weights: nothing to train.")
    while index > 0 and isinstance(layers[index - 1], keras.layers.Dropout):
        index -= 1
    if index == 0:
        return None, model, None
    cut = layers[index]
    try:
        prefix = keras.Model(model.inputs, cut.input, name=f"{model.name}_frozen_prefix")
        top = keras.Model(cut.input, model.outputs, name=f"{model.name}_top")
    except ValueError as error:
        raise ValueError(
            f"Cannot cache the frozen part of {model.name!r} before layer {cut.name!r}: a skip "
            f"connection crosses that point ({error}). Start fine-tuning at a block boundary "
            '(e.g. model.trainable_from = "block_16_expand") or set train.cache_features = false.'
        ) from error
    return prefix, top, cut.name


def cache_features(prefix, dataset, *, engine="litert", passes=1, num_threads=2, progress=True, description="cache"):
    """Runs the frozen `prefix` over a labelled dataset once; returns arrays.

    Args:
        prefix: the frozen part of the model (from `split_model`).
        dataset: batched `(images, labels)` pipeline.
        engine: "litert" (convert to float32 .tflite and run with XNNPACK,
            checked against Keras on the first batch) or "keras".
        passes: passes over `dataset` (each a new augmentation, if any).
        num_threads: LiteRT threads.
        progress: show a progress bar.
        description: progress-bar label.

    Returns:
        `(features, labels)` numpy arrays; features are float16, which halves
        the memory of a multi-GB cache (its rounding, ~1e-3 relative, is far
        below what int8 deployment later adds).
    """
    runner = None
    if engine == "litert":
        runner = TFLiteModel(convert(prefix, "float32"), num_threads=num_threads)
    features, labels = [], []
    checked = engine != "litert"
    total = int(dataset.cardinality()) if int(dataset.cardinality()) > 0 else None
    for _ in range(passes):
        for images, batch_labels in progress_bar(
            dataset.as_numpy_iterator(), total=total, description=description, enabled=progress
        ):
            if runner is None:
                output = prefix(images, training=False).numpy()
            else:
                output = runner.predict(images, batch_size=images.shape[0] if not features else None)
                if not checked:
                    expected = prefix(images, training=False).numpy()
                    scale = max(1.0, float(np.abs(expected).max()))
                    difference = float(np.abs(expected - output).max())
                    if difference > 1e-3 * scale:
                        raise ExportError(
                            f"The LiteRT copy of the frozen prefix differs from Keras by {difference:.3g}; "
                            'set train.cache_engine = "keras".'
                        )
                    checked = True
            features.append(output.astype(np.float16))
            labels.append(batch_labels)
    return np.concatenate(features), np.concatenate(labels)


def array_dataset(features, labels, batch_size, shuffle_seed=None):
    """Batches of in-memory arrays as a `tf.data.Dataset`, reshuffled each epoch.

    Unlike `from_tensor_slices`, this neither copies the arrays into a
    tensor (cached activations can be several GB) nor hits the 2 GB limit of
    a serialized dataset graph: a generator slices one batch at a time.
    """
    count = len(features)
    batches = math.ceil(count / batch_size)
    epoch = [0]

    def generate():
        if shuffle_seed is None:
            order = np.arange(count)
        else:
            order = np.random.default_rng((shuffle_seed, epoch[0])).permutation(count)
            epoch[0] += 1
        for start in range(0, count, batch_size):
            index = np.sort(order[start : start + batch_size])
            yield features[index].astype(np.float32), labels[index]

    signature = (
        tf.TensorSpec((None, *features.shape[1:]), tf.float32),
        tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)),
    )
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2)


def _repeat_if_bounded(dataset, steps_per_epoch):
    # Keras does not restart a finite dataset between epochs when
    # steps_per_epoch is shorter than it, and stops with "ran out of data";
    # repeating makes every epoch take the next `steps_per_epoch` batches.
    return dataset.repeat() if steps_per_epoch else dataset


def _steps(dataset, configured):
    if configured:
        return configured
    count = int(dataset.cardinality())
    return count if count > 0 else None


def _optimizer_factory(config, float_steps):
    def make(phase):
        if phase == "float":
            rate = config.train.learning_rate
            if config.train.lr_schedule == "cosine" and float_steps:
                rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=float_steps)
        elif phase == "prune":
            rate = config.prune.learning_rate
        else:
            rate = config.qat.learning_rate
        if config.train.optimizer == "sgd":
            return keras.optimizers.SGD(rate, momentum=0.9)
        return keras.optimizers.Adam(rate)

    return make


def _prune_schedule(config, steps_per_epoch):
    from edgekeras.schedules import ConstantSparsity, PolynomialDecay

    section = config.prune
    if section.schedule == "constant":
        total = steps_per_epoch * section.epochs
        return ConstantSparsity(section.target_sparsity, begin_step=0, frequency=max(1, total // section.mask_updates))
    end_step = max(1, int(steps_per_epoch * section.epochs * section.ramp_fraction))
    frequency = max(1, end_step // section.mask_updates)
    end_step = max(frequency, end_step - end_step % frequency)
    return PolynomialDecay(
        section.initial_sparsity,
        section.target_sparsity,
        begin_step=0,
        end_step=end_step,
        power=section.power,
        frequency=frequency,
    )


def _assemble(full_model, trained):
    """A copy of `full_model` carrying `trained`'s weights where names match."""
    assembled = clone_with_weights(full_model)
    for layer in trained.layers:
        if layer.weights and any(l.name == layer.name for l in assembled.layers):
            assembled.get_layer(layer.name).set_weights(layer.get_weights())
    return assembled


def _save_model(model, path):
    import warnings

    from edgekeras.serialization import save_model

    with warnings.catch_warnings():
        # .h5 is the one format that reloads every phase's model (see
        # edgekeras.serialization); Keras calls it legacy on every save.
        warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
        save_model(model, path)


def _trainer(model, config, float_steps, strategy):
    from edgekeras.trainers import EdgeTrainer

    return EdgeTrainer(
        model,
        strategy=strategy,
        quantize_skip=config.qat.skip_layers,
        optimizer=_optimizer_factory(config, float_steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        prune_policy=config.prune.policy,
    )


def _tensorboard(log_dir, name, chief):
    # Only the chief writes logs: workers would write the same event files.
    return [keras.callbacks.TensorBoard(log_dir=os.path.join(log_dir, name))] if chief else []


def _qat(model, config, data, log_dir, name, strategy, chief):
    trainer = _trainer(model, config, None, strategy)
    _log(f"QAT of the {name} model: {config.qat.epochs} epoch(s)")
    trainer.fit(
        _repeat_if_bounded(data.train, config.qat.steps_per_epoch),
        qat_epochs=config.qat.epochs,
        steps_per_epoch=config.qat.steps_per_epoch or None,
        callbacks=_tensorboard(log_dir, name, chief),
        verbose=2,
    )
    return trainer.qat_model


def run(config, *, progress=None):
    """Runs the pipeline a `Config` describes and returns a `RunResult`.

    Args:
        config: an `edgekeras.config.Config`.
        progress: show progress bars (default: `config.evaluate.progress`).

    Returns:
        A `RunResult`; the run directory holds everything listed in the
        module docstring.
    """
    progress = config.evaluate.progress if progress is None else progress
    timings = {}
    started = time.perf_counter()
    # Made first: MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = get_strategy(
        config.distribute.strategy,
        devices=list(config.distribute.devices) or None,
        communication=config.distribute.communication,
    )
    chief = is_chief(strategy)
    # The TFLite converter cannot trace a model whose variables are
    # distributed: conversions and saved files use plain copies.
    distributed = strategy is not tf.distribute.get_strategy()
    local = clone_with_weights if distributed else (lambda model: model)
    run_dir = config.run_dir
    tflite_dir = os.path.join(run_dir, "tflite")
    model_dir = os.path.join(run_dir, "models")
    log_dir = os.path.join(run_dir, "logs")
    if chief:
        for directory in (tflite_dir, model_dir, log_dir):
            os.makedirs(directory, exist_ok=True)
        atomic_write_text(
            os.path.join(run_dir, "config.toml"),
            config_to_toml(
                config,
                header=(
                    f"edgekeras run: resolved config (from {config.source})\n"
                    f"model.weights resolved to: {resolve_weights(config.model.weights)}\n"
                    f"data.data_dir resolved to: {config.data.data_dir or os.environ.get('TFDS_DATA_DIR') or 'TFDS default'}"
                ),
            ),
        )
    else:
        _log(f"{worker_id(strategy)} of a {type(strategy).__name__} cluster: training only, the chief writes {run_dir}")
    keras.utils.set_random_seed(config.run.seed)

    def stage(name, start):
        timings[name] = round(time.perf_counter() - start, 2)
        _log(f"{name}: {timings[name]:.1f} s")

    # 1. data and model
    start = time.perf_counter()
    section = config.data
    data = load_data(section, seed=config.run.seed)
    # The sharding policy only matters under a multi-worker strategy.
    data = dataclasses.replace(
        data, train=shard_by_data(data.train),
        validation=None if data.validation is None else shard_by_data(data.validation),
    )
    with strategy.scope():
        model = build_model(config.model, data.num_classes, section.image_size)
    _log(
        f"{data.name}: {data.num_train} train / {data.num_validation} validation / {data.num_test} test "
        f"images at {section.image_size} px; model {model.name} with "
        f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights)} trainable weights"
    )
    stage("data_and_model", start)

    # 2. float and pruning phases, on cached activations when asked
    start = time.perf_counter()
    train_model, train_data, validation_data = model, data.train, data.validation
    if config.train.cache_features:
        prefix, top, cut = split_model(model)
        if prefix is not None:
            _log(f"caching the activations entering {cut!r} ({config.train.cache_engine})")
            frozen = local(prefix)
            features, labels = cache_features(
                frozen, data.train, engine=config.train.cache_engine, passes=config.train.cache_passes,
                num_threads=config.evaluate.num_threads, progress=progress, description="cache train",
            )
            train_data = shard_by_data(array_dataset(features, labels, section.batch_size, shuffle_seed=config.run.seed))
            if data.validation is not None:
                validation = cache_features(
                    frozen, data.validation, engine=config.train.cache_engine,
                    num_threads=config.evaluate.num_threads, progress=progress, description="cache validation",
                )
                validation_data = shard_by_data(array_dataset(*validation, section.batch_size))
            train_model = top
            _log(f"cached {features.shape[0]} activations of shape {features.shape[1:]}")
    stage("cache_features", start)

    start = time.perf_counter()
    steps_per_epoch = _steps(train_data, config.train.steps_per_epoch)
    if steps_per_epoch is None:
        steps_per_epoch = math.ceil(data.num_train / section.batch_size) * config.train.cache_passes
    pruning = config.prune.enabled
    float_model = pruned_model = None
    if config.train.epochs or pruning:
        trainer = _trainer(train_model, config, steps_per_epoch * config.train.epochs, strategy)
        trainer.fit(
            _repeat_if_bounded(train_data, config.train.steps_per_epoch),
            validation_data=validation_data,
            float_epochs=config.train.epochs,
            prune=_prune_schedule(config, steps_per_epoch) if pruning else None,
            prune_epochs=config.prune.epochs if pruning else 0,
            steps_per_epoch=config.train.steps_per_epoch or None,
            callbacks=_tensorboard(log_dir, "train", chief),
            verbose=2,
        )
        # The full model shares the top's layers: it now holds the last
        # phase's weights. The float snapshot is re-assembled around it.
        with strategy.scope():
            float_model = _assemble(model, trainer.float_model) if pruning else model
        pruned_model = model if pruning else None
    else:
        float_model = model
    stage("train_and_prune", start)

    # 3. quantization-aware fine-tuning on the whole model
    start = time.perf_counter()
    qat_model = pqat_model = None
    with strategy.scope():
        if config.qat.epochs and config.qat.quantize_float:
            qat_model = _qat(clone_with_weights(float_model), config, data, log_dir, "qat", strategy, chief)
        if config.qat.epochs and config.qat.quantize_pruned and pruned_model is not None:
            pqat_model = _qat(clone_with_weights(pruned_model), config, data, log_dir, "pqat", strategy, chief)
    stage("qat", start)
    # Every worker takes part: reading a multi-worker model's variables can
    # be collective (variables synchronized on read, such as BatchNorm's).
    float_model, pruned_model, qat_model, pqat_model = (
        None if model is None else local(model) for model in (float_model, pruned_model, qat_model, pqat_model)
    )
    if not chief:
        # What follows (models, .tflite files, evaluation, report) is the
        # chief's alone.
        return RunResult(run_dir=run_dir, report=None, table="", timings=timings)

    start = time.perf_counter()
    for name, kept in (("float", float_model), ("pruned", pruned_model), ("qat", qat_model), ("pqat", pqat_model)):
        if kept is not None:
            _save_model(kept, os.path.join(model_dir, f"{name}.h5"))
    stage("save_models", start)

    # 4. export every variant, each verified right after conversion
    start = time.perf_counter()
    jobs = [(c, float_model, c, "float") for c in config.export.conversions]
    if qat_model is not None:
        jobs.append(("qat_int8", qat_model, "int8", "qat"))
    if pruned_model is not None:
        jobs += [(f"pruned_{c}", pruned_model, c, "pruned") for c in config.export.pruned_conversions]
    if pqat_model is not None:
        jobs.append(("pqat_int8", pqat_model, "int8", "pqat"))
    # Calibration and verification images come from the held-out end of the
    # training split: unshuffled and unaugmented, so every int8 file is
    # calibrated on the same images, and the test split stays untouched.
    verify_source = data.validation if data.validation is not None else data.train
    exported = {}
    for name, source_model, conversion, source in jobs:
        result = export_tflite(
            source_model,
            os.path.join(tflite_dir, f"{name}.tflite"),
            conversion,
            representative_data=verify_source,
            representative_examples=config.export.representative_examples,
            io_dtype=config.export.io_dtype if conversion == "int8" else "float32",
            verify_data=verify_source,
            verify_examples=config.export.verify_examples,
            min_agreement=config.export.min_agreement or None,
            name=name,
            # QAT files carry their own ranges: selective quantization is for
            # post-training int8 only.
            float_layers=config.export.int8_float_layers if conversion == "int8" and source in ("float", "pruned") else (),
        )
        exported[name] = (result, source)
        check = result.verification
        _log(
            f"exported {name}: {result.size_bytes} B ({result.gzip_bytes} B gzipped), agreement "
            f"{check.top1_agreement:.1%}, max |diff| {check.max_abs_diff:.2g}"
        )
    stage("export", start)

    # 5. evaluate every file with LiteRT on the chosen split
    start = time.perf_counter()
    split = config.evaluate.split
    dataset = data.test if split == "test" else data.validation
    if dataset is None:
        raise ValueError(
            "Config key `evaluate.split` is 'validation' but data.validation_size is 0. "
            "Received: evaluate.split='validation'"
        )
    roles = config.roles()
    rows = []
    examples = None
    for name, (result, source) in exported.items():
        evaluation = evaluate_tflite(
            result.path,
            dataset,
            num_threads=config.evaluate.num_threads,
            latency_threads=config.evaluate.latency_threads,
            latency_runs=config.evaluate.latency_runs,
            warmup=config.evaluate.warmup,
            max_examples=config.evaluate.max_examples or None,
            progress=progress,
        )
        examples = evaluation.examples
        first_threads = config.evaluate.latency_threads[0]
        rows.append(
            VariantResult(
                name=name,
                role=roles.get(name, "other"),
                file=os.path.relpath(result.path, run_dir),
                accuracy=evaluation.accuracy,
                size_bytes=evaluation.size_bytes,
                gzip_bytes=evaluation.gzip_bytes,
                sparsity=evaluation.sparsity,
                latency_ms=evaluation.latency[first_threads].median_ms,
                latency={t: dataclasses.asdict(v) for t, v in evaluation.latency.items()},
                conversion=result.conversion,
                source=source,
                io_dtype=result.io_dtype,
                verification=dataclasses.asdict(result.verification),
            )
        )
        _log(f"evaluated {name}: accuracy {evaluation.accuracy:.4f} on {evaluation.examples} {split} images")
    stage("evaluate", start)

    # 6. report
    start = time.perf_counter()
    timings["total"] = round(time.perf_counter() - started, 2)
    report = build_report(
        rows,
        dataset=data.name,
        split=split,
        examples=examples,
        run=config.run.name,
        config=config.source,
        image_size=section.image_size,
        timings=dict(timings),
    )
    write_report(report, run_dir, tensorboard_dir=os.path.join(log_dir, "report"))
    stage("report", start)
    table = format_table(report)
    return RunResult(run_dir=run_dir, report=report, table=table, timings=timings)
