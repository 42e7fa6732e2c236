"""The stages of `edgekeras run`, in order, and the `RunContext` they share.

Each stage is a function of the `RunContext`: it reads what the earlier
stages set and sets what it produces. `edgekeras.app.pipeline.run` calls them
in the order of `STAGES` and records each one's time under its name, in
`RunResult.timings` and `state.json`. Every stage that writes an artifact
records it in the `RunState` right away, and reuses what an earlier attempt
left intact: that is what makes a killed run resume.

Example:

```python
from edgekeras.app.stages import STAGES

print([name for name, _ in STAGES])  # ['data_and_model', 'trial_conversion', 'cache_features', ...]
```
"""

import dataclasses
import os
import time

import numpy as np

from edgekeras.app.config import ConfigError
from edgekeras.app.factories import build_model, load_data, make_trainer, prune_schedule, tensorboard_callbacks
from edgekeras.app.phase_inputs import cache_at_cut, caches_features, pruning_inputs, warn_if_pruning_little
from edgekeras.app.report import VariantResult, build_report, write_report
from edgekeras.app.roles import auto_candidates, choice_line, pick, single
from edgekeras.app.slim import check_slimming
from edgekeras.app.slim import slim as slim_float_model
from edgekeras.app.state import RunState, log
from edgekeras.app.variants import SOURCE_NAMES, variants
from edgekeras.callbacks import EpochLine
from edgekeras.channels import alternating_medians
from edgekeras.data import resolve_steps_per_epoch
from edgekeras.distribute import get_strategy, shard_by_data
from edgekeras.litert import evaluate_accuracy, evaluate_tflite, export_tflite
from edgekeras.litert.trial import trial_conversion as convert_untrained
from edgekeras.memory import return_freed_heap
from edgekeras.models import assemble_with_weights, clone_with_weights, model_file_name, save_model

__all__ = ["RunContext", "STAGES", "CHIEF_ONLY"]


@dataclasses.dataclass
class RunContext:
    """What the stages of one `run` share: each stage reads what earlier ones set.

    Attributes:
        config: the run's `Config`.
        progress: show progress bars.
        verbose: epoch lines with every log entry (`sparsity/<layer>` too).
        strategy: the `tf.distribute` strategy training runs under.
        chief: this process writes the run directory.
        distributed: the strategy distributes variables, so conversions
            and saved files need plain copies (`local`).
        state: the run directory's `RunState`.
        started: `time.perf_counter()` when the run began.
        timings: seconds per finished stage (this attempt).
        data: the `ImageData` (data_and_model).
        model: the full model (data_and_model).
        train_model, train_data, validation_data: what the float and pruning
            phases train on: the model and images, or the trainable top and
            cached activations (cache_features); released after training.
        train_arrays: the cached `(activations, labels)` arrays behind
            `train_data`, or None.
        models: {"float", "pruned", "qat", "pqat", "slim": model or None}.
        exported: {variant: (ExportedModel, source model name)} (export).
        role_choices: {role: choice} of the "auto" report roles
            (choose_roles; see `edgekeras.app.roles`).
        rows: one `VariantResult` per variant (evaluate).
        examples: images each variant was evaluated on (evaluate).
        report: the report dict (report).
    """

    config: object
    progress: bool
    strategy: object
    chief: bool
    distributed: bool
    state: RunState
    started: float
    timings: dict = dataclasses.field(default_factory=dict)
    verbose: bool = False
    data: object = None
    model: object = None
    train_model: object = None
    train_data: object = None
    validation_data: object = None
    train_arrays: tuple = None
    models: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(SOURCE_NAMES))
    exported: dict = dataclasses.field(default_factory=dict)
    role_choices: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    examples: int = None
    report: dict = None

    def path(self, *parts):
        """A path inside the run directory."""
        return os.path.join(self.config.run_dir, *parts)

    def local(self, model):
        """`model`, or a plain copy of it when its variables are distributed."""
        return clone_with_weights(model) if self.distributed else model


def _repeat_if_bounded(dataset, steps_per_epoch):
    # Keras does not restart a finite dataset between epochs when
    # steps_per_epoch is shorter than it, and stops with "ran out of data";
    # repeating makes every epoch take the next `steps_per_epoch` batches.
    return dataset.repeat() if steps_per_epoch else dataset


def data_and_model(context):
    """Stage: loads the data and builds the model (under the strategy)."""
    config, section = context.config, context.config.data
    # The images are scaled the way the model expects them, so training,
    # int8 calibration and the LiteRT evaluation all feed the same inputs.
    data = load_data(section, seed=config.run.seed, model=config.model)
    # The sharding policy only matters under a multi-worker strategy.
    context.data = data = dataclasses.replace(
        data, train=shard_by_data(data.train),
        validation=None if data.validation is None else shard_by_data(data.validation),
    )
    with context.strategy.scope():
        context.model = model = build_model(config.model, data.num_classes, section.image_size)
    log(
        f"{data.name}: {data.num_train} train / {data.num_validation} validation / {data.num_test} test "
        f"images at {section.image_size} px, scaled {data.normalization!r}; model {model.name} "
        f"(model.{config.model.kind}) with {sum(int(np.prod(w.shape)) for w in model.trainable_weights)} "
        "trainable weights"
    )


def _export_conversions(config):
    """The conversions of the float model the run exports (the pruned model has the same graph)."""
    section = config.export
    return tuple(dict.fromkeys((*section.conversions, *(section.pruned_conversions if config.prune.enabled else ()))))


def trial_conversion(context):
    """Stage: the untrained model converted to every .tflite file the run writes, its QAT copy to int8.

    A model the converter refuses fails here, in seconds, with the layer and
    the fix (the converter's output in logs/conversion.log), not after
    training. An earlier attempt of this run that passed it needs no second
    trial: the model is built the same way.
    """
    config, state = context.config, context.state
    # Every worker takes part: reading a multi-worker model's variables is
    # collective. Only the chief converts; it alone knows an earlier attempt.
    model = context.local(context.model)
    if not context.chief or "trial_conversion" in state.data["timings"]:
        return
    section, qat = config.export, config.qat
    conversions = _export_conversions(config)
    quantized = bool(qat.epochs) and (qat.quantize_float or (qat.quantize_pruned and config.prune.enabled))
    # The images export calibrates on: the held-out end of the training split.
    images = context.data.validation if context.data.validation is not None else context.data.train
    settings = dict(representative_data=images, io_dtype=section.io_dtype, log_path=context.path("logs", "conversion.log"))
    convert_untrained(model, conversions, float_layers=section.int8_float_layers, **settings)
    if quantized:
        # The QAT copy as the qat stage's trainer makes it (skip layers, scheme).
        strategy = get_strategy("default") if context.distributed else context.strategy
        make_trainer(model, config, None, strategy, None).trial_conversion(qat=True, float_model=False, **settings)
    if config.channels.enabled:
        check_slimming(context, model, settings)
    log(f"the untrained model converts to {', '.join(conversions)}{' (and its QAT copy to int8)' if quantized else ''}")


def cache_features(context):
    """Stage: with `train.cache_features`, the frozen prefix's activations (cached in the run directory)."""
    context.train_model, context.train_data, context.validation_data = context.model, context.data.train, context.data.validation
    context.train_arrays = None
    cached = caches_features(context.config)
    if context.config.train.cache_features == "auto":
        log("train.cache_features = \"auto\": " + (
            "no GPU, so the frozen part's activations are cached" if cached
            else "a GPU is visible, so the phases train on the images, augmented every epoch"
        ))
    if not cached:
        return
    cached = cache_at_cut(context, "", "model.trainable_from")
    if cached is not None:
        context.train_model, context.train_data, context.validation_data, context.train_arrays = cached


def _steps_per_epoch(context):
    config = context.config
    return resolve_steps_per_epoch(
        context.train_data, config.train.steps_per_epoch or None, batch_size=config.data.batch_size,
        num_examples=context.data.num_train, passes=config.train.cache_passes,
    )


def _fit_callbacks(context, name, model):
    """TensorBoard (of `model`'s Keras) on the chief; with `verbose`, the epoch line that shows every log entry."""
    full_line = [EpochLine(full=True)] if context.verbose else []
    return tensorboard_callbacks(context.path("logs"), name, context.chief, model) + full_line


def train_and_prune(context):
    """Stage: the float and pruning phases (`EdgeTrainer.fit`), resumed from their checkpoints."""
    config, model = context.config, context.model
    steps_per_epoch = _steps_per_epoch(context)
    pruning = config.prune.enabled
    # A pruning phase on other layers or other labels than the float phase's is a second fit.
    separate = pruning and bool(config.prune.trainable_from or config.prune.distill_weight)
    if pruning and not config.prune.trainable_from:
        warn_if_pruning_little(context)
    float_model, trainer = model, None
    fit = dict(steps_per_epoch=config.train.steps_per_epoch or None, verbose=2,
               callbacks=_fit_callbacks(context, "train", model))
    schedule = prune_schedule(config.prune, steps_per_epoch) if pruning else None
    if config.train.epochs or (pruning and not separate):
        trainer = make_trainer(
            context.train_model, config, steps_per_epoch * config.train.epochs, context.strategy,
            context.path("checkpoints", "train"), prune_steps=steps_per_epoch * config.prune.epochs,
        )
        trainer.fit(
            _repeat_if_bounded(context.train_data, config.train.steps_per_epoch),
            validation_data=context.validation_data, float_epochs=config.train.epochs,
            prune=None if separate else schedule, prune_epochs=config.prune.epochs if pruning and not separate else 0,
            **fit,
        )
        if pruning and not separate:
            # The full model shares the top's layers: it now holds the last
            # phase's weights. The float snapshot is re-assembled around it.
            with context.strategy.scope():
                float_model = assemble_with_weights(model, trainer.float_model)
    if separate:
        with context.strategy.scope():
            float_model = clone_with_weights(model)
        prune_model, train_data, validation_data = pruning_inputs(context, float_model)
        trainer = make_trainer(
            prune_model, config, None, context.strategy, context.path("checkpoints", "train"),
            prune_steps=steps_per_epoch * config.prune.epochs,
        )
        trainer.fit(
            _repeat_if_bounded(train_data, config.train.steps_per_epoch), validation_data=validation_data,
            prune=schedule, prune_epochs=config.prune.epochs, initial_epoch=config.train.epochs, **fit,
        )
    context.models.update(float=float_model, pruned=model if pruning else None)
    # The cached activations (GBs) are not needed past this point: QAT and
    # export work on images (`run` returns the freed heap after each stage).
    context.train_model = context.train_data = context.validation_data = context.train_arrays = trainer = None


def _quantization_aware(context, name, model):
    config = context.config
    # What a "cosine" qat.lr_schedule decays over; an unsized pipeline counts its images, as _steps_per_epoch does.
    steps_per_epoch = resolve_steps_per_epoch(
        context.data.train, config.qat.steps_per_epoch or None, batch_size=config.data.batch_size,
        num_examples=context.data.num_train)
    trainer = make_trainer(
        clone_with_weights(model), config, None, context.strategy, context.path("checkpoints", name), qat=True,
        qat_steps=steps_per_epoch * config.qat.epochs,
    )
    log(f"QAT of the {name} model: {config.qat.epochs} epoch(s)")
    trainer.fit(
        _repeat_if_bounded(context.data.train, config.qat.steps_per_epoch),
        qat_epochs=config.qat.epochs,
        steps_per_epoch=config.qat.steps_per_epoch or None,
        callbacks=_fit_callbacks(context, name, model),
        # The trial_conversion stage already converted this QAT copy before any training.
        conversions=(),
        # TensorBoard's epoch axis goes on from the phases the model came out of.
        initial_epoch=config.train.epochs + (config.prune.epochs if name == "pqat" else 0),
        verbose=2,
    )
    return trainer.qat_model


def qat(context):
    """Stage: quantization-aware fine-tuning of the float and pruned models, on the whole model."""
    section, models = context.config.qat, context.models
    with context.strategy.scope():
        if section.epochs and section.quantize_float:
            models["qat"] = _quantization_aware(context, "qat", models["float"])
            return_freed_heap()  # the first QAT fit's buffers, before the second one
        if section.epochs and section.quantize_pruned and models["pruned"] is not None:
            models["pqat"] = _quantization_aware(context, "pqat", models["pruned"])
    # Every worker takes part: reading a multi-worker model's variables can
    # be collective (variables synchronized on read, such as BatchNorm's).
    context.models = {name: None if model is None else context.local(model) for name, model in models.items()}


def slim(context):
    """Stage: with [channels], the float model channel-pruned on the images and shrunk (`models["slim"]`)."""
    if context.config.channels.enabled:
        slim_float_model(context, lambda name, model: _fit_callbacks(context, name, model))


def save_models(context):
    """Stage: models/float, pruned, qat, pqat (those that exist), .h5 on tf_keras and .keras on Keras 3."""
    for name, model in context.models.items():
        if model is not None:
            save_model(model, model_file_name(model, context.path("models", name)))


def _export_jobs(context):
    """`(variant, model, conversion, source)` of every .tflite file, in report order."""
    models = context.models
    trained = {source for source, model in models.items() if model is not None}
    return [(name, models[source], conversion, source) for name, source, conversion in variants(context.config, trained)]


def export(context):
    """Stage: every variant's .tflite file, each verified right after conversion (intact ones reused)."""
    section, state, data = context.config.export, context.state, context.data
    # Calibration and verification images come from the held-out end of the
    # training split: unshuffled and unaugmented, so every int8 file is
    # calibrated on the same images, and the test split stays untouched.
    images = data.validation if data.validation is not None else data.train
    for name, model, conversion, source in _export_jobs(context):
        reused = state.exported(name)
        if reused is not None:
            context.exported[name] = (reused, source)
            log(f"reusing {state.data['exports'][name]['file']} (checksum matches)")
            continue
        result = export_tflite(
            model,
            context.path("tflite", f"{name}.tflite"),
            conversion,
            representative_data=images,
            representative_examples=section.representative_examples,
            # Both apply where they can (int8 I/O; float layers of post-training
            # int8 only): export_tflite holds those rules for every caller.
            io_dtype=section.io_dtype,
            verify_data=images,
            verify_examples=section.verify_examples,
            min_agreement=section.min_agreement or None,
            name=name,
            float_layers=section.int8_float_layers,
        )
        context.exported[name] = (result, source)
        state.record_export(name, result)
        return_freed_heap()  # each conversion leaves 70-100 MB of freed converter buffers
        check = result.verification
        log(
            f"exported {name}: {result.size_bytes} B ({result.gzip_bytes} B gzipped), agreement "
            f"{check.top1_agreement:.1%}, max |diff| {check.max_abs_diff:.2g}"
        )


def choose_roles(context):
    """Stage: each "auto" report role goes to the more accurate int8 file on the validation split.

    Never on the test split: the choice must not see the numbers the report
    gives. A tie goes to the post-training file; a single candidate needs no
    evaluation. A choice made on the same files by an earlier attempt is
    reused.
    """
    config, state = context.config, context.state
    for role, names in auto_candidates(config.report, list(context.exported)).items():
        if not names:
            log(f"report role {role}: no candidate exported, the role stays empty")
            continue
        choice = single(names[0]) if len(names) == 1 else state.role_choice(role, names)
        if choice is not None:
            context.role_choices[role] = choice
            log(f"report role {choice_line(role, choice)}{' (kept)' if choice['accuracy'] else ''}")
            continue
        if context.data.validation is None:  # `Config.check` refuses this config
            raise ConfigError(
                f"Config key `report.{role}` must name a variant when there is no validation split. "
                f"Received: report.{role}='auto', data.validation_size=0"
            )
        scores = {
            name: evaluate_accuracy(
                context.exported[name][0].path, context.data.validation,
                num_threads=config.evaluate.num_threads, progress=context.progress,
            )
            for name in names
        }
        choice = pick(role, {name: score.accuracy for name, score in scores.items()}, scores[names[0]].examples)
        context.role_choices[role] = choice
        state.record_role_choice(role, choice, names)
        log(f"report role {choice_line(role, choice)}")


def _evaluate_file(context, dataset, name, role, result, source):
    """`(VariantResult, examples)` of one .tflite file evaluated with LiteRT."""
    section = context.config.evaluate
    evaluation = evaluate_tflite(
        result.path,
        dataset,
        num_threads=section.num_threads,
        latency_threads=section.latency_threads,
        latency_runs=section.latency_runs,
        warmup=section.warmup,
        max_examples=section.max_examples or None,
        progress=context.progress,
    )
    row = VariantResult(
        name=name,
        role=role,
        file=os.path.relpath(result.path, context.config.run_dir),
        accuracy=evaluation.accuracy,
        size_bytes=evaluation.size_bytes,
        gzip_bytes=evaluation.gzip_bytes,
        sparsity=evaluation.sparsity,
        latency_ms=evaluation.latency[section.latency_threads[0]].median_ms,
        latency={t: dataclasses.asdict(v) for t, v in evaluation.latency.items()},
        conversion=result.conversion,
        source=source,
        io_dtype=result.io_dtype,
        verification=dataclasses.asdict(result.verification),
    )
    return row, evaluation.examples


def evaluate(context):
    """Stage: every file's accuracy and latency with LiteRT on `evaluate.split` (kept ones reused).

    Raises:
        ConfigError: `evaluate.split` is "validation" but there is no
            validation split (`data.validation_size` = 0).
    """
    config, state = context.config, context.state
    split = config.evaluate.split
    dataset = context.data.test if split == "test" else context.data.validation
    if dataset is None:
        raise ConfigError(
            "Config key `evaluate.split` is 'validation' but data.validation_size is 0. "
            "Received: evaluate.split='validation'"
        )
    roles = config.roles(context.role_choices)
    for name, (result, source) in context.exported.items():
        kept = state.evaluation(name, roles.get(name, "other"))
        if kept is not None:
            row, context.examples = kept
            context.rows.append(row)
            log(f"reusing the evaluation of {name}: accuracy {row.accuracy:.4f}")
            continue
        row, context.examples = _evaluate_file(context, dataset, name, roles.get(name, "other"), result, source)
        context.rows.append(row)
        state.record_evaluation(name, row, context.examples)
        log(f"evaluated {name}: accuracy {row.accuracy:.4f} on {context.examples} {split} images")
    # Timed in turn in one process: the speed-ups between files hold when the machine is busy.
    section = config.evaluate
    medians = alternating_medians([os.path.join(config.run_dir, row.file) for row in context.rows],
                                  num_threads=1, rounds=section.latency_runs, warmup=section.warmup)
    for row, median in zip(context.rows, medians):
        row.alternating_ms = float(median)


def report(context):
    """Stage: report.json, report.md, pareto.png and the TensorBoard report scalars."""
    config, state = context.config, context.state
    context.timings["total"] = round(time.perf_counter() - context.started, 2)
    state.add_time("total", context.timings["total"])
    context.report = build_report(
        context.rows,
        dataset=context.data.name,
        split=config.evaluate.split,
        examples=context.examples,
        run=config.run.name,
        config=config.source,
        image_size=config.data.image_size,
        # Summed over the attempts of a resumed run.
        timings=dict(state.data["timings"]),
        role_choices=context.role_choices,
    )
    write_report(context.report, config.run_dir, tensorboard_dir=context.path("logs", "report"))


# (name, stage) in order; the name is the stage's key in the timings.
STAGES = (
    ("data_and_model", data_and_model),
    ("trial_conversion", trial_conversion),
    ("cache_features", cache_features),
    ("train_and_prune", train_and_prune),
    ("slim", slim),
    ("qat", qat),
    ("save_models", save_models),
    ("export", export),
    ("choose_roles", choose_roles),
    ("evaluate", evaluate),
    ("report", report),
)
# Saved models, .tflite files, role choices, evaluation and report are the chief's alone:
# other workers of a multi-worker run stop before them.
CHIEF_ONLY = ("save_models", "export", "choose_roles", "evaluate", "report")
