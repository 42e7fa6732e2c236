"""Hyperparameter search with keras-tuner, scored on the deployed .tflite model.

keras-tuner's own `Tuner.run_trial` fits a Keras 3 model and scores that Keras
model. edgekeras models are tf_keras models, and what ships is the .tflite file
made after pruning and quantization-aware training, whose accuracy can differ
from the Keras model's. `EdgeTuner` is a `keras_tuner` `BaseTuner` whose
`run_trial`, for each trial's hyperparameters:

1. builds the tf_keras model with the user's `HyperModel` / build function,
2. trains it with `edgekeras.trainers.EdgeTrainer`: float epochs, pruning to
   the trial's sparsity on the trial's ramp, then QAT epochs,
3. exports the deployed .tflite (`edgekeras.litert.export_tflite`; int8 from
   the QAT ranges when QAT ran, else the configured conversion),
4. scores that file with LiteRT on the **validation** data
   (`edgekeras.litert.evaluate_tflite`: accuracy, gzip size, latency,
   sparsity), never on the test split,
5. applies the budgets (`Budget`): a trial over a size or latency budget gets
   a score below 0, so it can never beat a trial within budget (whose score
   is its accuracy, in [0, 1]), and is marked `within_budget = 0`,
6. saves the model (.h5), the .tflite file and `result.json` in the trial's
   directory, the training curves in `logs/trial_<id>/` and the trial's
   TensorBoard HParams session beside them.

Any keras-tuner oracle works (`make_oracle`: random search, Bayesian
optimization, Hyperband); with Hyperband, `tuner/epochs` is the float phase's
length and a trial that continues an earlier one starts from its float
weights. Re-creating the tuner with `overwrite=False` resumes a search without
redoing finished trials (keras-tuner's oracle state in the project directory),
and keras-tuner's chief/worker mode (`KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`) runs trials in several
processes sharing one project directory.

Example:

```python
import numpy as np
from edgekeras import keras
from edgekeras.tuning import Budget, EdgeTuner, SearchSpace, make_oracle

def build(hp):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))

x, y = np.random.rand(64, 8, 8, 3).astype("float32"), np.random.randint(0, 2, 64)
tuner = EdgeTuner(make_oracle("random", max_trials=2), build,
                  search_space=SearchSpace(qat_epochs=0), conversion="dynamic_int8",
                  budget=Budget(max_gzip_bytes=50_000), directory="/tmp/tune", project_name="demo",
                  overwrite=True)
tuner.search(x, y, validation_data=(x, y), batch_size=16)
model, tflite_path = tuner.best_model()
print(tuner.format_results())
```
"""

import copy
import dataclasses
import glob
import json
import math
import numbers
import os
import shutil
import time
from concurrent import futures

import grpc
import keras_tuner
import numpy as np
import tensorflow as tf
from keras_tuner.engine import base_tuner
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.distribute import utils as distribute_utils

from edgekeras import pareto, sparsity
from edgekeras.choices import CACHE_ENGINES, CONVERSIONS, ORACLES
from edgekeras.compat import check_model, keras
from edgekeras.features import array_dataset, cache_features
from edgekeras.io import atomic_write_json
from edgekeras.litert import check_float_layers, evaluate_tflite, export_tflite
from edgekeras.models import load_model, save_model, split_model
from edgekeras.schedules import polynomial_ramp
from edgekeras.trainers import EdgeTrainer
from edgekeras.tuning.hparams import METRICS, write_hparams_config, write_trial_hparams
from edgekeras.tuning.search_space import SearchSpace

__all__ = [
    "OBJECTIVE",
    "ORACLES",
    "Budget",
    "TrialResult",
    "EdgeTuner",
    "make_oracle",
    "load_results",
    "pareto_front",
    "format_results",
]

OBJECTIVE = keras_tuner.Objective("score", direction="max")
_METRIC_NAMES = tuple(tag for tag, _, _ in METRICS)
_HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/trial_id")
_FLOAT_WEIGHTS = "float.weights.h5"
_MODEL_FILE = "model.h5"
_TFLITE_FILE = "model.tflite"
_RESULT_FILE = "result.json"


def _check_optional_positive(value, argument):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"Argument `{argument}` must be a positive number or None. Received: {argument}={value!r}")
    return value


class Budget:
    """Limits a deployed model must meet: gzip size and batch-1 latency.

    A trial within budget scores its validation accuracy (in [0, 1]). A trial
    over budget scores `accuracy - 1 - min(excess, 1)`, where `excess` is the
    largest relative overshoot (`value / limit - 1`): always below 0, so it
    can never beat a trial within budget, and better the closer it gets to
    the budget, which gives Bayesian optimization a slope to follow.

    Args:
        max_gzip_bytes: largest allowed gzip -9 size of the .tflite file, in
            bytes, or None.
        max_latency_ms: largest allowed median batch-1 latency, in ms, or None.

    Example:

    ```python
    budget = Budget(max_gzip_bytes=2_000_000, max_latency_ms=15.0)
    budget.score(0.9, {"gzip_bytes": 2_500_000, "latency_ms": 10.0})  # -0.35
    ```
    """

    _LIMITS = (("max_gzip_bytes", "gzip_bytes"), ("max_latency_ms", "latency_ms"))

    def __init__(self, max_gzip_bytes=None, max_latency_ms=None):
        if isinstance(max_gzip_bytes, float) and max_gzip_bytes.is_integer():
            max_gzip_bytes = int(max_gzip_bytes)
        self.max_gzip_bytes = _check_optional_positive(max_gzip_bytes, "max_gzip_bytes")
        self.max_latency_ms = _check_optional_positive(max_latency_ms, "max_latency_ms")

    def violations(self, metrics):
        """Names of the metrics over their limit, e.g. ["gzip_bytes"]."""
        return [metric for limit, metric in self._LIMITS if getattr(self, limit) is not None and metrics[metric] > getattr(self, limit)]

    def excess(self, metrics):
        """The largest relative overshoot over the limits (0 within budget)."""
        overs = [
            metrics[metric] / getattr(self, limit) - 1.0
            for limit, metric in self._LIMITS
            if getattr(self, limit) is not None and metrics[metric] > getattr(self, limit)
        ]
        return max(overs, default=0.0)

    def score(self, accuracy, metrics):
        """The objective value of a trial (see the class docstring)."""
        excess = self.excess(metrics)
        if excess <= 0:
            return float(accuracy)
        return float(accuracy) - 1.0 - min(excess, 1.0)

    def get_config(self):
        return {"max_gzip_bytes": self.max_gzip_bytes, "max_latency_ms": self.max_latency_ms}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"Budget(max_gzip_bytes={self.max_gzip_bytes!r}, max_latency_ms={self.max_latency_ms!r})"


@dataclasses.dataclass
class TrialResult:
    """What one trial produced, as stored in its `result.json`.

    Attributes:
        trial_id: keras-tuner's trial id.
        status: keras-tuner's trial status ("COMPLETED", "FAILED", ...).
        hyperparameters: `{name: value}` of the trial.
        metrics: `{name: value}` for every tag of `edgekeras.tuning.METRICS`.
        over_budget: names of the metrics over their budget (empty within).
        conversion: the .tflite conversion of the deployed file.
        epochs: `{phase: epochs}` the trial trained ("float", "prune", "qat").
        trial_dir: the trial's directory.
        tuner_id: the tuner process that ran it (distributed: "tuner0", ...).
        tflite_path: the deployed .tflite file.
        model_path: the saved Keras model (.h5), or "" if not saved.
        seconds: wall time of the trial.
    """

    trial_id: str
    status: str
    hyperparameters: dict
    metrics: dict
    over_budget: list
    conversion: str
    epochs: dict
    trial_dir: str
    tuner_id: str
    tflite_path: str
    model_path: str
    seconds: float

    @property
    def score(self):
        return self.metrics.get("score", float("-inf"))

    @property
    def within_budget(self):
        return not self.over_budget

    def to_dict(self):
        return dataclasses.asdict(self)


def make_oracle(kind="random", *, max_trials=10, max_epochs=3, factor=3, seed=None, objective=OBJECTIVE, **kwargs):
    """Returns a keras-tuner oracle for `EdgeTuner`, objective `score` (max).

    Args:
        kind: "random", "bayesian" or "hyperband".
        max_trials: number of trials (random and bayesian).
        max_epochs: largest float-phase length of a trial (hyperband).
        factor: reduction factor (hyperband).
        seed: random seed of the oracle.
        objective: the objective (default `OBJECTIVE`, which ranks trials
            over budget below every trial within it).
        **kwargs: other arguments of the oracle class.

    Returns:
        A `keras_tuner.oracles.*Oracle`.

    Example:

    ```python
    oracle = make_oracle("bayesian", max_trials=20, seed=1)
    ```
    """
    oracles = keras_tuner.oracles
    if kind == "random":
        return oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
    if kind == "bayesian":
        return oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
    if kind == "hyperband":
        return oracles.HyperbandOracle(objective=objective, max_epochs=max_epochs, factor=factor, seed=seed, **kwargs)
    raise ValueError(f"Argument `kind` must be one of {', '.join(ORACLES)}. Received: kind={kind!r}")


class _EdgeHyperModel(keras_tuner.HyperModel):
    """The user's hypermodel with the edgekeras search space declared first."""

    def __init__(self, hypermodel, search_space):
        super().__init__(name=getattr(hypermodel, "name", None))
        self.inner = hypermodel if isinstance(hypermodel, keras_tuner.HyperModel) else None
        self.build_function = hypermodel
        self.search_space = search_space

    def declare_hyperparameters(self, hp):
        self.search_space.declare(hp)
        if self.inner is not None:
            self.inner.declare_hyperparameters(hp)

    def build(self, hp):
        model = self.inner.build(hp) if self.inner is not None else self.build_function(hp)
        return check_model(model, "the model returned by `hypermodel`")


def _steps_in(x, y, batch_size, steps_per_epoch):
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    if isinstance(x, tf.data.Dataset):
        count = int(x.cardinality())
        if count > 0:
            return count
    elif hasattr(x, "__len__"):
        if isinstance(x, keras.utils.Sequence):
            return len(x)
        return math.ceil(len(x) / (batch_size or 32))
    raise keras_tuner.errors.FatalValueError(
        "Argument `steps_per_epoch` is needed to place the pruning ramp: the number of batches per "
        "epoch of the training data is unknown. Received: steps_per_epoch=None. Pass "
        "steps_per_epoch=<batches per epoch> to `search`."
    )


def _validation_images(validation_data):
    if isinstance(validation_data, tuple):
        return validation_data[0]
    return validation_data


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def load_results(project_dir):
    """Reads every trial's `result.json` (and status) from a project directory.

    Works for any process sharing the directory (a distributed worker, a
    later session), and for a search that is still running.

    Args:
        project_dir: `<directory>/<project_name>` of the search.

    Returns:
        A list of `TrialResult`, best score first.
    """
    results = []
    for path in glob.glob(os.path.join(os.fspath(project_dir), "trial_*", _RESULT_FILE)):
        data = _read_json(path)
        if data is None:
            continue
        state = _read_json(os.path.join(os.path.dirname(path), "trial.json")) or {}
        data["status"] = state.get("status", data.get("status", "COMPLETED"))
        results.append(TrialResult(**data))
    return sorted(results, key=lambda r: (-r.score, r.trial_id))


def pareto_front(results):
    """The results no other beats on both deployed accuracy and gzip size."""
    variants = [
        {"name": r.trial_id, "accuracy": r.metrics["val_tflite_accuracy"], "gzip_bytes": r.metrics["gzip_bytes"]}
        for r in results
    ]
    names = set(pareto.pareto_front(variants))
    return [r for r in results if r.trial_id in names]


def format_results(results, top=10, front=None):
    """A text table of the best `top` results (a Pareto-front mark per row)."""
    front_ids = {r.trial_id for r in (pareto_front(results) if front is None else front)}
    names = sorted({name for r in results for name in r.hyperparameters if not name.startswith("tuner/")})
    header = ["trial", "score", "tflite acc", "keras acc", "gzip KB", "ms", "sparsity", *names, "notes"]
    rows = []
    for result in results[:top]:
        m = result.metrics
        notes = []
        if result.trial_id in front_ids:
            notes.append("pareto")
        if result.over_budget:
            notes.append("over budget: " + ", ".join(result.over_budget))
        values = [
            result.trial_id,
            f"{m['score']:.4f}",
            f"{m['val_tflite_accuracy']:.4f}",
            "-" if math.isnan(m["val_keras_accuracy"]) else f"{m['val_keras_accuracy']:.4f}",
            f"{m['gzip_bytes'] / 1000:.1f}",
            f"{m['latency_ms']:.3g}",
            f"{m['sparsity']:.2f}",
        ]
        for name in names:
            value = result.hyperparameters.get(name, "")
            values.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        values.append("; ".join(notes))
        rows.append(values)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _serve_oracle(oracle, poll_seconds=0.5):
    """keras-tuner's chief oracle server, exiting as soon as the search is over.

    `keras_tuner`'s own `start_server` polls the end of the search every 20 s
    once the first worker is told to stop; this one polls every
    `poll_seconds`, so a chief ends with its last worker.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    if not server.add_insecure_port(address):
        raise RuntimeError(f"The chief oracle cannot listen on {address}: the port is taken or invalid.")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=1.0)


class EdgeTuner(base_tuner.BaseTuner):
    """A keras-tuner tuner that trains with edgekeras and scores the .tflite file.

    See the module docstring for what a trial does. The objective of the
    oracle must be one of the metrics in `edgekeras.tuning.METRICS`; use
    `OBJECTIVE` ("score", max) so that budgets take part in the ranking.

    Args:
        oracle: a keras-tuner oracle (see `make_oracle`).
        hypermodel: a `keras_tuner.HyperModel` or a function `build(hp)`
            returning a tf_keras functional or Sequential model; it may
            declare its own hyperparameters. Its `fit` is not used: each
            phase compiles the model with the trial's learning rate.
        search_space: the edgekeras hyperparameters (`SearchSpace`); default
            `SearchSpace()`.
        float_epochs: epochs of float training per trial (Hyperband's
            `tuner/epochs` replaces it).
        prune_epochs: epochs of the pruning phase (trials with
            `final_sparsity` 0 train them densely instead).
        loss: the loss of every phase.
        metrics: Keras metrics; "accuracy" gives `val_keras_accuracy`.
        conversion: the .tflite conversion of trials without QAT (one of
            `edgekeras.litert.CONVERSIONS`); QAT trials export "int8".
        float_layers: layers that post-training `int8` files keep in float
            (selective quantization, see `edgekeras.litert.convert`).
        budget: a `Budget`, or None for no limits.
        qat_learning_rate_scale: QAT learning rate = trial learning rate x
            this (QAT fine-tunes trained weights).
        prune_policy: which layers are pruned (see `edgekeras.sparsity`).
        cache_features: train the float and pruning phases on cached
            activations of the model's frozen prefix (everything before its
            first trainable layer, `edgekeras.models.split_model`), computed
            once per search with `edgekeras.features.cache_features`. QAT still
            runs on the whole model with images, and the deployed .tflite
            is always the whole model. Needs tf.data inputs.
        cache_engine: "litert" or "keras", how the prefix is run for caching.
        qat_steps_per_epoch: batches per QAT epoch when caching (default:
            `steps_per_epoch`, else the whole training data).
        representative_examples: calibration images for post-training int8.
        eval_threads: LiteRT threads for the accuracy pass.
        latency_threads: LiteRT threads for the batch-1 latency.
        latency_runs: timed latency runs (>= 50).
        seed: weights are initialized from this seed in every trial, so that
            trials differ by their hyperparameters only.
        save_models: also save each trial's Keras model (.h5).
        directory: parent of the project directory.
        project_name: the project directory's name.
        overwrite: start over instead of resuming an existing project.
        verbose: print one line per trial.

    Example:

    ```python
    tuner = EdgeTuner(make_oracle("bayesian", max_trials=20), build_model,
                      budget=Budget(max_gzip_bytes=1_500_000), directory="runs", project_name="tune")
    tuner.search(data.train, validation_data=data.validation)
    print(tuner.format_results())
    ```
    """

    def __init__(
        self,
        oracle,
        hypermodel,
        *,
        search_space=None,
        float_epochs=1,
        prune_epochs=1,
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        conversion="int8",
        float_layers=(),
        budget=None,
        qat_learning_rate_scale=0.1,
        prune_policy="all",
        cache_features=False,
        cache_engine="litert",
        qat_steps_per_epoch=None,
        representative_examples=256,
        eval_threads=2,
        latency_threads=1,
        latency_runs=50,
        seed=0,
        save_models=True,
        directory=None,
        project_name=None,
        overwrite=False,
        verbose=1,
    ):
        if not isinstance(oracle, keras_tuner.Oracle):
            raise ValueError(
                "Argument `oracle` must be a keras-tuner oracle, e.g. "
                f"edgekeras.tuning.make_oracle('random', max_trials=10). Received: oracle={oracle!r}"
            )
        objective_name = getattr(oracle.objective, "name", None)
        if objective_name not in _METRIC_NAMES:
            raise ValueError(
                f"Argument `oracle` must have an objective named after a trial metric "
                f"({', '.join(_METRIC_NAMES)}); use edgekeras.tuning.OBJECTIVE. "
                f"Received: objective={oracle.objective!r}"
            )
        if hypermodel is None or not (isinstance(hypermodel, keras_tuner.HyperModel) or callable(hypermodel)):
            raise ValueError(
                "Argument `hypermodel` must be a keras_tuner.HyperModel or a function build(hp) "
                f"returning a tf_keras model. Received: hypermodel={hypermodel!r}"
            )
        if search_space is None:
            search_space = SearchSpace()
        if not isinstance(search_space, SearchSpace):
            raise ValueError(
                f"Argument `search_space` must be an edgekeras.tuning.SearchSpace. Received: search_space={search_space!r}"
            )
        for value, argument in ((float_epochs, "float_epochs"), (prune_epochs, "prune_epochs")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"Argument `{argument}` must be an integer >= 0. Received: {argument}={value!r}")
        if conversion not in CONVERSIONS:
            raise ValueError(f"Argument `conversion` must be one of {', '.join(CONVERSIONS)}. Received: conversion={conversion!r}")
        if budget is None:
            budget = Budget()
        if not isinstance(budget, Budget):
            raise ValueError(f"Argument `budget` must be an edgekeras.tuning.Budget or None. Received: budget={budget!r}")
        if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 50:
            raise ValueError(f"Argument `latency_runs` must be an integer >= 50. Received: latency_runs={latency_runs!r}")
        if not isinstance(qat_learning_rate_scale, numbers.Real) or not qat_learning_rate_scale > 0:
            raise ValueError(
                f"Argument `qat_learning_rate_scale` must be a positive number. Received: qat_learning_rate_scale={qat_learning_rate_scale!r}"
            )
        sparsity.check_policy(prune_policy, "prune_policy")
        self.search_space = search_space
        self.float_epochs = int(float_epochs)
        self.prune_epochs = int(prune_epochs)
        self.loss = loss
        self.metrics = list(metrics or [])
        self.conversion = conversion
        self.float_layers = check_float_layers(float_layers)
        self.budget = budget
        self.qat_learning_rate_scale = float(qat_learning_rate_scale)
        self.prune_policy = prune_policy
        if cache_engine not in CACHE_ENGINES:
            raise ValueError(f"Argument `cache_engine` must be 'litert' or 'keras'. Received: cache_engine={cache_engine!r}")
        if qat_steps_per_epoch is not None and (
            isinstance(qat_steps_per_epoch, bool) or not isinstance(qat_steps_per_epoch, int) or qat_steps_per_epoch < 1
        ):
            raise ValueError(
                f"Argument `qat_steps_per_epoch` must be a positive integer or None. Received: qat_steps_per_epoch={qat_steps_per_epoch!r}"
            )
        self.cache_features = bool(cache_features)
        self.cache_engine = cache_engine
        self.qat_steps_per_epoch = qat_steps_per_epoch
        self._feature_cache = {}
        self.representative_examples = representative_examples
        self.eval_threads = eval_threads
        self.latency_threads = latency_threads
        self.latency_runs = latency_runs
        self.seed = seed
        self.save_models = save_models
        self.verbose = verbose
        super().__init__(
            oracle=oracle,
            hypermodel=_EdgeHyperModel(hypermodel, search_space),
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
        )

    # -- where things are ---------------------------------------------------

    @property
    def distributed_role(self):
        """"chief" or "worker" in keras-tuner's distributed mode, else None."""
        return _distributed_role()

    @property
    def log_dir(self):
        """The TensorBoard log root: one folder per trial, plus the HParams experiment."""
        return os.path.join(self.project_dir, "logs")

    def trial_log_dir(self, trial_id):
        return os.path.join(self.log_dir, f"trial_{trial_id}")

    # -- the search ----------------------------------------------------------

    def search(self, x=None, y=None, *, validation_data=None, **kwargs):
        """Runs the search; the arguments reach every `run_trial`.

        Args:
            x, y: training data, as for `keras.Model.fit` (typically a
                batched `tf.data.Dataset` of `(images, labels)` and no `y`).
            validation_data: the data each trial's .tflite is scored on:
                a batched dataset of `(images, labels)` or an `(x, y)` pair.
                Use the validation split, never the test split.
            **kwargs: `callbacks` (copied per trial; a tf_keras TensorBoard
                callback is pointed at the trial's log folder),
                `representative_data` (calibration images; default `x`),
                `steps_per_epoch`, `batch_size`, `verbose` and other
                `keras.Model.fit` keywords.
        """
        if validation_data is None:
            raise ValueError(
                "Argument `validation_data` is required: each trial's .tflite file is scored on it. "
                "Pass the validation split (e.g. data.validation), never the test split. "
                "Received: validation_data=None"
            )
        for key in ("epochs", "initial_epoch"):
            if key in kwargs:
                raise ValueError(
                    f"Argument `{key}` is set per trial by EdgeTuner: use float_epochs / prune_epochs and the "
                    f"`qat_epochs` hyperparameter (or a Hyperband oracle). Received: {key}={kwargs[key]!r}"
                )
        distributed = _distributed_role()
        if not self._is_worker():
            write_hparams_config(self.log_dir, self.oracle.get_space())
        if distributed == "chief":
            self.save()
            _serve_oracle(self.oracle)
            self._write_summary()
            return
        super().search(x, y, validation_data=validation_data, **kwargs)
        if not self._is_worker():
            self._write_summary()

    def run_trial(
        self,
        trial,
        x=None,
        y=None,
        *,
        validation_data=None,
        callbacks=None,
        representative_data=None,
        steps_per_epoch=None,
        verbose=0,
        **fit_kwargs,
    ):
        """Trains, exports and scores one trial; returns its metrics.

        Returns:
            `{metric name: value}` for every tag of
            `edgekeras.tuning.METRICS`; the oracle ranks by its objective.
        """
        start = time.perf_counter()
        hp = trial.hyperparameters
        values = self.search_space.values(hp)
        trial_dir = self.get_trial_dir(trial.trial_id)
        log_dir = self.trial_log_dir(trial.trial_id)
        kept = _read_json(os.path.join(trial_dir, _RESULT_FILE))
        if (
            kept is not None and kept.get("hyperparameters") == dict(hp.values)
            and os.path.isfile(os.path.join(trial_dir, _TFLITE_FILE)) and "metrics" in kept
        ):
            # Killed after this trial wrote its result but before keras-tuner
            # recorded it: the oracle retries it, the result stands.
            if self.verbose:
                print(f"[edgekeras tune] trial {trial.trial_id}: finished before the interruption, result reused", flush=True)
            return kept["metrics"]
        # A retried or resumed trial starts its logs over; stale sessions
        # would show twice in the HParams dashboard.
        shutil.rmtree(log_dir, ignore_errors=True)

        keras.backend.clear_session()
        keras.utils.set_random_seed(self.seed)
        model = self.hypermodel.build(hp)
        deployed, histories, epochs = self._train(
            model, hp, values, x, y, validation_data, callbacks, steps_per_epoch, verbose, fit_kwargs, trial_dir, log_dir
        )

        conversion = "int8" if epochs.get("qat") else self.conversion
        tflite_path = os.path.join(trial_dir, _TFLITE_FILE)
        export_tflite(
            deployed,
            tflite_path,
            conversion,
            representative_data=representative_data if representative_data is not None else x,
            representative_examples=self.representative_examples,
            verify_data=_validation_images(validation_data),
            float_layers=self.float_layers if conversion == "int8" and not epochs.get("qat") else (),
        )
        evaluation = evaluate_tflite(
            tflite_path,
            validation_data,
            num_threads=self.eval_threads,
            latency_threads=(self.latency_threads,),
            latency_runs=self.latency_runs,
            progress=False,
        )
        keras_accuracy = float("nan")
        for history in histories.values():
            keras_accuracy = history.get("val_accuracy", [keras_accuracy])[-1]
        metrics = {
            "val_tflite_accuracy": float(evaluation.accuracy),
            "val_keras_accuracy": float(keras_accuracy),
            "sparsity": float(evaluation.sparsity),
            "gzip_bytes": float(evaluation.gzip_bytes),
            "size_bytes": float(evaluation.size_bytes),
            "latency_ms": float(evaluation.latency[self.latency_threads].median_ms),
        }
        over_budget = self.budget.violations(metrics)
        metrics["within_budget"] = 0.0 if over_budget else 1.0
        metrics["score"] = self.budget.score(metrics["val_tflite_accuracy"], metrics)

        model_path = ""
        if self.save_models:
            model_path = save_model(deployed, os.path.join(trial_dir, _MODEL_FILE))
        result = TrialResult(
            trial_id=trial.trial_id,
            status="COMPLETED",
            hyperparameters=dict(hp.values),
            metrics=metrics,
            over_budget=over_budget,
            conversion=conversion,
            epochs=epochs,
            trial_dir=trial_dir,
            tuner_id=self.tuner_id,
            tflite_path=tflite_path,
            model_path=model_path,
            seconds=time.perf_counter() - start,
        )
        atomic_write_json(os.path.join(trial_dir, _RESULT_FILE), result.to_dict())
        write_trial_hparams(log_dir, trial.trial_id, hp.values, metrics)
        if self.verbose:
            mark = f"  OVER BUDGET ({', '.join(over_budget)})" if over_budget else ""
            print(
                f"[edgekeras tune] trial {trial.trial_id}: .tflite val accuracy "
                f"{metrics['val_tflite_accuracy']:.4f} (Keras {metrics['val_keras_accuracy']:.4f}), "
                f"{int(metrics['gzip_bytes'])} B gzipped, {metrics['latency_ms']:.3g} ms, sparsity "
                f"{metrics['sparsity']:.2f}, score {metrics['score']:.4f} [{result.seconds:.0f} s]{mark}",
                flush=True,
            )
        return metrics

    def _train(self, model, hp, values, x, y, validation_data, callbacks, steps_per_epoch, verbose, fit_kwargs, trial_dir, log_dir):
        """Runs the trial's phases; returns `(deployed model, histories, epochs)`."""
        prefix = top = None
        if self.cache_features:
            prefix, top, _ = split_model(model)
        trained = model if prefix is None else top

        float_epochs = self.float_epochs
        if "tuner/epochs" in hp.values:
            float_epochs = int(hp.values["tuner/epochs"])
            parent = hp.values.get("tuner/trial_id")
            if parent:
                # Hyperband continues an earlier trial with the same
                # hyperparameters: resume its float phase, redo the rest.
                trained.load_weights(os.path.join(self.get_trial_dir(parent), _FLOAT_WEIGHTS))
                float_epochs -= int(hp.values.get("tuner/initial_epoch", 0))

        if prefix is None:
            train_x, train_y, train_validation, train_steps = x, y, validation_data, steps_per_epoch
        else:
            train_x, train_validation = self._cached(prefix, x, validation_data)
            train_y, train_steps = None, None

        prune_epochs = self.prune_epochs
        schedule = None
        final_sparsity = float(values["final_sparsity"])
        if final_sparsity > 0 and prune_epochs > 0:
            batch_size = fit_kwargs.get("batch_size")
            steps = _steps_in(train_x, train_y, batch_size, train_steps) * prune_epochs
            schedule = polynomial_ramp(steps, final_sparsity, begin=values["pruning_begin"], end=values["pruning_end"])
        else:
            float_epochs, prune_epochs = float_epochs + prune_epochs, 0
        qat_epochs = int(values["qat_epochs"])
        learning_rate = float(values["learning_rate"])
        qat_scale = self.qat_learning_rate_scale

        def optimizer(phase):
            return keras.optimizers.Adam(learning_rate * (qat_scale if phase == "qat" else 1.0))

        def trainer_for(target):
            return EdgeTrainer(target, optimizer, self.loss, self.metrics, prune_policy=self.prune_policy)

        histories = {}
        trainer = trainer_for(trained)
        if float_epochs + prune_epochs + (qat_epochs if prefix is None else 0):
            trainer.fit(
                train_x,
                train_y,
                validation_data=train_validation,
                float_epochs=float_epochs,
                prune=schedule,
                prune_epochs=prune_epochs,
                qat_epochs=qat_epochs if prefix is None else 0,
                callbacks=self._trial_callbacks(callbacks, log_dir),
                steps_per_epoch=train_steps,
                verbose=verbose,
                **fit_kwargs,
            )
            histories.update(trainer.histories)
            if "tuner/epochs" in hp.values:
                trainer.float_model.save_weights(os.path.join(trial_dir, _FLOAT_WEIGHTS))
        deployed = trainer.latest_model if prefix is None else model
        if prefix is not None and qat_epochs:
            # The quantized network is the whole network: QAT runs on images,
            # without a validation pass (the .tflite score is the judge).
            qat_steps = self.qat_steps_per_epoch or steps_per_epoch
            qat_trainer = trainer_for(model)
            qat_trainer.fit(
                # A step budget may ask for more batches than one pass holds.
                x.repeat() if qat_steps else x,
                y,
                qat_epochs=qat_epochs,
                callbacks=self._trial_callbacks(callbacks, os.path.join(log_dir, "qat")),
                steps_per_epoch=qat_steps,
                verbose=verbose,
                **fit_kwargs,
            )
            deployed = qat_trainer.latest_model
        epochs = {"float": float_epochs, "prune": prune_epochs, "qat": qat_epochs}
        return deployed, histories, epochs

    def _cached(self, prefix, x, validation_data):
        """Training and validation activations of the frozen prefix, computed once."""
        if not isinstance(x, tf.data.Dataset) or not isinstance(validation_data, tf.data.Dataset):
            raise keras_tuner.errors.FatalValueError(
                "Argument `cache_features=True` needs batched tf.data datasets of (images, labels) "
                f"for `x` and `validation_data`. Received: x={type(x).__name__}, "
                f"validation_data={type(validation_data).__name__}"
            )
        # Keyed by the prefix's weights, so a hypermodel that changes the
        # frozen part (another width, other weights) gets its own cache.
        key = (prefix.output_shape, float(sum(np.abs(w).sum() for w in prefix.get_weights())))
        if key not in self._feature_cache:
            start = time.perf_counter()
            self._feature_cache.clear()
            train = cache_features(prefix, x, engine=self.cache_engine, progress=False, description="cache train")
            validation = cache_features(prefix, validation_data, engine=self.cache_engine, progress=False)
            batch_size = int(next(iter(x))[0].shape[0])
            self._feature_cache[key] = (train, validation, batch_size)
            if self.verbose:
                print(
                    f"[edgekeras tune] cached the frozen prefix's activations of {len(train[0])} training and "
                    f"{len(validation[0])} validation images in {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
        train, validation, batch_size = self._feature_cache[key]
        return array_dataset(*train, batch_size, shuffle_seed=self.seed), array_dataset(*validation, batch_size)

    def _trial_callbacks(self, callbacks, log_dir):
        callbacks = list(callbacks or [])
        try:
            callbacks = copy.deepcopy(callbacks)
        except Exception as error:
            raise keras_tuner.errors.FatalValueError(
                "Argument `callbacks` must hold deep-copyable callbacks (each trial gets its own "
                f"copies). Received: callbacks={callbacks!r} ({type(error).__name__}: {error})"
            ) from error
        boards = [c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)]
        for board in boards:
            board.log_dir = log_dir
        if not boards:
            callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
        return callbacks

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        status = getattr(trial.status, "value", trial.status)
        if self.verbose and status not in ("COMPLETED", "RUNNING"):
            lines = (trial.message or "").strip().splitlines()
            print(f"[edgekeras tune] trial {trial.trial_id} {status}: {lines[-1] if lines else ''}", flush=True)

    # -- models and results ----------------------------------------------------

    def save_model(self, trial_id, model, step=0):
        """Saves `model` as the trial's Keras model (.h5, atomic)."""
        return save_model(model, os.path.join(self.get_trial_dir(trial_id), _MODEL_FILE))

    def load_model(self, trial):
        """Loads a trial's saved Keras model (the deployed phase's model)."""
        path = os.path.join(self.get_trial_dir(trial.trial_id), _MODEL_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Trial {trial.trial_id} has no saved model at {path!r}: it failed, or the tuner ran with "
                "save_models=False (its .tflite file is kept either way)."
            )
        return load_model(path)

    def results(self):
        """Every finished trial's `TrialResult`, best score first."""
        return [r for r in load_results(self.project_dir) if r.status == "COMPLETED"]

    def best_trial(self):
        """The best `TrialResult` (within budget whenever any trial is)."""
        results = self.results()
        if not results:
            raise RuntimeError(f"No trial has finished in {self.project_dir!r}: run `search` first.")
        return results[0]

    def best_model(self):
        """Returns `(keras_model, tflite_path)` of the best trial."""
        best = self.best_trial()
        return self.load_model(best), best.tflite_path

    def pareto_front(self):
        """Trials no other trial beats on both .tflite accuracy and gzip size."""
        return pareto_front(self.results())

    def format_results(self, top=10):
        """A table of the `top` best trials."""
        return format_results(self.results(), top)

    def _write_summary(self):
        results = self.results()
        front = pareto_front(results)
        atomic_write_json(
            os.path.join(self.project_dir, "results.json"),
            {
                "objective": {"name": self.oracle.objective.name, "direction": self.oracle.objective.direction},
                "budget": self.budget.get_config(),
                "best_trial": results[0].trial_id if results else None,
                "pareto_front": [r.trial_id for r in front],
                "trials": [r.to_dict() for r in results],
            },
        )


def _distributed_role():
    """Returns "chief", "worker" or None from keras-tuner's environment variables."""
    if not distribute_utils.has_chief_oracle():
        return None
    return "chief" if distribute_utils.is_chief_oracle() else "worker"


# -- `edgekeras tune --config FILE.toml` -------------------------------------------


