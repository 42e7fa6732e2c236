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
  state.json           progress: config fingerprint, finished stages, checksums
  checkpoints/         Keras BackupAndRestore checkpoints, one per training phase
  cache/               cached activations (.npy, float16); deleted when the run ends
```

Runs resume. Every stage records its result in `state.json` (written
atomically) and every artifact is written to a temporary name and renamed. A
run killed at any point (even by SIGKILL) and started again with the same
command continues: cached activations are reloaded (memory-mapped) if their
checksum matches, every training phase restarts from its last finished epoch
(finished phases are restored, not retrained), and .tflite files and
evaluations whose checksums match are reused. A finished run started again is
a no-op; `overwrite=True` (`--overwrite`) starts it over. A run directory made
by another config is refused, so one config can never destroy another's
results.

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
from edgekeras.app.config import load_config
from edgekeras.app.pipeline import run

result = run(load_config("configs/demo.toml"))
print(result.table)
```
"""

import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from edgekeras.app.config import ConfigError, config_to_toml
from edgekeras.app.report import VariantResult, build_report, format_table, validate_report, write_report
from edgekeras.compat import keras
from edgekeras.data import load_image_data
from edgekeras.distribute import get_strategy, is_chief, shard_by_data, worker_id
from edgekeras.errors import EdgekerasError
from edgekeras.features import array_dataset, cache_features
from edgekeras.io import atomic_path, atomic_write_json, atomic_write_text
from edgekeras.litert import ExportedModel, TFLiteModel, Verification, evaluate_tflite, export_tflite
from edgekeras.models import assemble_with_weights, build_transfer_model, clone_with_weights, save_model, split_model
from edgekeras.schedules import ConstantSparsity, polynomial_ramp
from edgekeras.trainers import EdgeTrainer

__all__ = ["RunResult", "RunDirectoryError", "run", "verify_run_dir", "load_data", "build_model", "resolve_weights"]


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


STATE_FILE = "state.json"
_STATE_VERSION = 1


class RunDirectoryError(EdgekerasError, ValueError):
    """The run directory belongs to another config or cannot be read."""


def file_sha256(path):
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_fingerprint(config):
    """A hash of every key of `config` that changes what a run produces.

    Progress bars and the report's roles change no artifact: a finished run
    whose roles were edited is re-reported, not refused.
    """
    settled = dataclasses.replace(
        config,
        evaluate=dataclasses.replace(config.evaluate, progress=True),
        report=type(config.report)(),
    )
    return hashlib.sha256(config_to_toml(settled).encode("utf-8")).hexdigest()


class _RunState:
    """`state.json`: what a run directory holds, kept up to date atomically.

    Only the chief of a distributed run writes it; elsewhere every method is
    a no-op and nothing is reused.
    """

    def __init__(self, run_dir, config, *, overwrite, enabled):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, STATE_FILE)
        self.enabled = enabled
        fingerprint = config_fingerprint(config)
        self.data = {
            "version": _STATE_VERSION, "config": fingerprint, "source": config.source, "finished": False,
            "cache": {}, "exports": {}, "evaluations": {}, "timings": {}, "attempts": 0,
        }
        if not enabled:
            return
        existing = self._read(run_dir, config, overwrite)
        if existing is not None and not overwrite:
            self.data = existing
        elif overwrite and os.path.isdir(run_dir):
            for entry in os.listdir(run_dir):
                full = os.path.join(run_dir, entry)
                shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)
        self.data["attempts"] = self.data.get("attempts", 0) + 1

    def _read(self, run_dir, config, overwrite):
        fix = (
            "Pass --overwrite (run(..., overwrite=True)) to delete it and start over, or choose another "
            "directory with --name / run.name."
        )
        if not os.path.exists(self.path):
            if os.path.isdir(run_dir) and os.listdir(run_dir) and not overwrite:
                raise RunDirectoryError(
                    f"Run directory `{run_dir}` holds files but no {STATE_FILE}, so it is not a run edgekeras "
                    f"can resume. Received: run.name={config.run.name!r}. {fix}"
                )
            return None
        try:
            with open(self.path, encoding="utf-8") as handle:
                existing = json.load(handle)
            previous = existing["config"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            if overwrite:
                return None
            raise RunDirectoryError(f"Run directory `{run_dir}` has an unreadable {self.path} ({error}). {fix}") from error
        if previous != self.data["config"] and not overwrite:
            raise RunDirectoryError(
                f"Run directory `{run_dir}` holds a run of another config (made from "
                f"{existing.get('source', '?')}; see {os.path.join(run_dir, 'config.toml')}). "
                f"Received: a config from {config.source} that differs from it. {fix}"
            )
        return existing

    @property
    def finished(self):
        return self.data.get("finished", False)

    def save(self):
        if self.enabled:
            atomic_write_json(self.path, self.data)

    def add_time(self, stage, seconds):
        # Summed over attempts: the compute a resumed run really cost.
        self.data["timings"][stage] = round(self.data["timings"].get(stage, 0.0) + seconds, 2)

    def record_file(self, path):
        """A state entry for a file just written: its path and checksum."""
        return {"file": os.path.relpath(path, self.run_dir), "sha256": file_sha256(path)}

    def valid_file(self, entry):
        """Whether `entry` (from `record_file`) still names the same bytes."""
        if not self.enabled or not isinstance(entry, dict) or "file" not in entry:
            return False
        path = os.path.join(self.run_dir, entry["file"])
        return os.path.isfile(path) and file_sha256(path) == entry.get("sha256")

    def cached_arrays(self, key, compute):
        """`compute()`'s `(features, labels)`, stored once and memory-mapped.

        A cache whose checksum fails (a kill mid-write cannot cause one, the
        files are renamed into place, but a disk can) is computed again.
        """
        entry = self.data["cache"].get(key)
        if entry is not None:
            if self.valid_file(entry["features"]) and self.valid_file(entry["labels"]):
                _log(f"reusing the cached {key} activations")
                return (
                    np.load(os.path.join(self.run_dir, entry["features"]["file"]), mmap_mode="r"),
                    np.load(os.path.join(self.run_dir, entry["labels"]["file"])),
                )
            _log(f"the cached {key} activations fail their checksum: computing them again")
        features, labels = compute()
        if not self.enabled:
            return features, labels
        entry = {}
        for name, array in (("features", features), ("labels", labels)):
            path = os.path.join(self.run_dir, "cache", f"{key}_{name}.npy")
            with atomic_path(path) as temporary:
                np.save(temporary, array)
            entry[name] = self.record_file(path)
        self.data["cache"][key] = entry
        self.save()
        return features, labels

    def drop_cache(self):
        """Deletes the cached activations (GBs) once nothing needs them."""
        if self.enabled:
            shutil.rmtree(os.path.join(self.run_dir, "cache"), ignore_errors=True)
            self.data["cache"] = {}


def _exported_from_state(entry, run_dir):
    fields = {field.name for field in dataclasses.fields(ExportedModel)}
    values = {key: value for key, value in entry.items() if key in fields}
    values["path"] = os.path.join(run_dir, entry["file"])
    values["verification"] = Verification(**entry["verification"])
    return ExportedModel(**values)


def _variant_from_state(kept, role):
    row = dict(kept["row"], role=role)
    # JSON made the thread counts strings.
    row["latency"] = {int(threads): value for threads, value in row.get("latency", {}).items()}
    return VariantResult(**row)


def _finished_result(state, run_dir, wanted):
    """The `RunResult` of a finished run, or None if any file is gone or changed.

    `wanted` is the config's {variant: role}; a report with other roles is
    written again.
    """
    report_path = os.path.join(run_dir, "report.json")
    needed = [os.path.join(run_dir, name) for name in ("report.md", "pareto.png")]
    if not os.path.isfile(report_path) or not all(os.path.isfile(path) for path in needed):
        return None
    if not all(state.valid_file(entry) for entry in state.data["exports"].values()):
        return None
    try:
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
        table = format_table(report)
        roles = {variant["name"]: variant["role"] for variant in report["variants"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if roles != {name: wanted.get(name, "other") for name in roles}:
        return None
    return RunResult(run_dir=run_dir, report=report, table=table, timings=report.get("timings", {}))


def verify_run_dir(run_dir):
    """Checks a finished run directory; returns a list of problems (empty if sound).

    Checks: `state.json` says finished; report.json is valid and lists every
    exported variant; every .tflite file matches its recorded checksum and
    loads in LiteRT; report.md and pareto.png exist; no temporary file is
    left anywhere.

    Example:

    ```python
    from edgekeras.app.pipeline import verify_run_dir

    assert verify_run_dir("runs/demo") == []
    ```
    """
    problems = []
    try:
        with open(os.path.join(run_dir, STATE_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        return [f"{STATE_FILE} unreadable: {error}"]
    if not data.get("finished"):
        problems.append("the run is not finished")
    try:
        with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
            report = validate_report(json.load(handle))
        listed = [variant["name"] for variant in report["variants"]]
        if sorted(listed) != sorted(data.get("exports", {})):
            problems.append(f"report.json lists {listed}, the state {sorted(data.get('exports', {}))}")
    except (OSError, ValueError, KeyError) as error:
        problems.append(f"report.json: {error}")
    for name in ("report.md", "pareto.png"):
        if not os.path.isfile(os.path.join(run_dir, name)):
            problems.append(f"{name} is missing")
    for name, entry in data.get("exports", {}).items():
        path = os.path.join(run_dir, entry["file"])
        if not os.path.isfile(path) or file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['file']} is missing or does not match its checksum")
            continue
        try:
            TFLiteModel(path, num_threads=1)
        except ValueError as error:
            problems.append(f"{entry['file']} does not load: {error}")
    for root, _, names in os.walk(run_dir):
        problems += [f"temporary file left: {os.path.join(root, n)}" for n in names if n.endswith(".tmp") or ".tmp." in n]
    return problems


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
    section = config.prune
    total = steps_per_epoch * section.epochs
    if section.schedule == "constant":
        return ConstantSparsity(section.target_sparsity, begin_step=0, frequency=max(1, total // section.mask_updates))
    return polynomial_ramp(
        total,
        section.target_sparsity,
        initial_sparsity=section.initial_sparsity,
        end=section.ramp_fraction,
        mask_updates=section.mask_updates,
        power=section.power,
    )


def _trainer(model, config, float_steps, strategy, backup_dir):
    return EdgeTrainer(
        model,
        backup_dir=backup_dir,
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


def _qat(model, config, data, log_dir, name, strategy, chief, checkpoint_dir):
    trainer = _trainer(model, config, None, strategy, os.path.join(checkpoint_dir, name))
    _log(f"QAT of the {name} model: {config.qat.epochs} epoch(s)")
    trainer.fit(
        _repeat_if_bounded(data.train, config.qat.steps_per_epoch),
        qat_epochs=config.qat.epochs,
        steps_per_epoch=config.qat.steps_per_epoch or None,
        callbacks=_tensorboard(log_dir, name, chief),
        verbose=2,
    )
    return trainer.qat_model


def run(config, *, progress=None, overwrite=False):
    """Runs the pipeline a `Config` describes and returns a `RunResult`.

    A run directory left by an interrupted run of the same config is resumed;
    one left by a finished run is returned as it is (see the module
    docstring).

    Args:
        config: an `edgekeras.app.config.Config`.
        progress: show progress bars (default: `config.evaluate.progress`).
        overwrite: delete whatever the run directory holds and start over.

    Returns:
        A `RunResult`; the run directory holds everything listed in the
        module docstring.

    Raises:
        RunDirectoryError: the run directory holds a run of another config
            (and `overwrite` is False).
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
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    state = _RunState(run_dir, config, overwrite=overwrite, enabled=chief)
    if state.finished:
        finished = _finished_result(state, run_dir, config.roles())
        if finished is not None:
            _log(f"{run_dir} holds this config's finished run: nothing to do (--overwrite runs it again)")
            return finished
        _log(f"{run_dir} holds this config's finished run, but files are missing or changed: rebuilding them")
        state.data["finished"] = False
    elif state.data["attempts"] > 1:
        _log(f"resuming the run in {run_dir} (attempt {state.data['attempts']})")
    if chief:
        state.save()
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
        state.add_time(name, timings[name])
        state.save()
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
            features, labels = state.cached_arrays("train", lambda: cache_features(
                frozen, data.train, engine=config.train.cache_engine, passes=config.train.cache_passes,
                num_threads=config.evaluate.num_threads, progress=progress, description="cache train",
            ))
            train_data = shard_by_data(array_dataset(features, labels, section.batch_size, shuffle_seed=config.run.seed))
            if data.validation is not None:
                validation = state.cached_arrays("validation", lambda: cache_features(
                    frozen, data.validation, engine=config.train.cache_engine,
                    num_threads=config.evaluate.num_threads, progress=progress, description="cache validation",
                ))
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
        trainer = _trainer(
            train_model, config, steps_per_epoch * config.train.epochs, strategy, os.path.join(checkpoint_dir, "train")
        )
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
            float_model = assemble_with_weights(model, trainer.float_model) if pruning else model
        pruned_model = model if pruning else None
    else:
        float_model = model
    stage("train_and_prune", start)
    # The cached activations (GBs) are not needed past this point: QAT and
    # export work on images.
    features = labels = validation = train_data = validation_data = train_model = trainer = None
    gc.collect()

    # 3. quantization-aware fine-tuning on the whole model
    start = time.perf_counter()
    qat_model = pqat_model = None
    with strategy.scope():
        if config.qat.epochs and config.qat.quantize_float:
            qat_model = _qat(clone_with_weights(float_model), config, data, log_dir, "qat", strategy, chief, checkpoint_dir)
        if config.qat.epochs and config.qat.quantize_pruned and pruned_model is not None:
            pqat_model = _qat(
                clone_with_weights(pruned_model), config, data, log_dir, "pqat", strategy, chief, checkpoint_dir
            )
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
            save_model(kept, os.path.join(model_dir, f"{name}.h5"))
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
        entry = state.data["exports"].get(name)
        if state.valid_file(entry):
            exported[name] = (_exported_from_state(entry, run_dir), source)
            _log(f"reusing {entry['file']} (checksum matches)")
            continue
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
        state.data["exports"][name] = {**result.to_dict(), **state.record_file(result.path)}
        state.data["evaluations"].pop(name, None)
        state.save()
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
        raise ConfigError(
            "Config key `evaluate.split` is 'validation' but data.validation_size is 0. "
            "Received: evaluate.split='validation'"
        )
    roles = config.roles()
    rows = []
    examples = None
    for name, (result, source) in exported.items():
        kept = state.data["evaluations"].get(name)
        if kept is not None and kept.get("sha256") == state.data["exports"][name]["sha256"]:
            rows.append(_variant_from_state(kept, role=roles.get(name, "other")))
            examples = kept["examples"]
            _log(f"reusing the evaluation of {name}: accuracy {kept['row']['accuracy']:.4f}")
            continue
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
        state.data["evaluations"][name] = {
            "row": rows[-1].to_dict(), "examples": examples, "sha256": state.data["exports"][name]["sha256"],
        }
        state.save()
        _log(f"evaluated {name}: accuracy {evaluation.accuracy:.4f} on {evaluation.examples} {split} images")
    stage("evaluate", start)

    # 6. report
    start = time.perf_counter()
    timings["total"] = round(time.perf_counter() - started, 2)
    state.add_time("total", timings["total"])
    report = build_report(
        rows,
        dataset=data.name,
        split=split,
        examples=examples,
        run=config.run.name,
        config=config.source,
        image_size=section.image_size,
        # Summed over the attempts of a resumed run.
        timings=dict(state.data["timings"]),
    )
    write_report(report, run_dir, tensorboard_dir=os.path.join(log_dir, "report"))
    stage("report", start)
    state.drop_cache()
    state.data["finished"] = True
    state.save()
    table = format_table(report)
    return RunResult(run_dir=run_dir, report=report, table=table, timings=timings)
