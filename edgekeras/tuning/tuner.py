"""`EdgeTuner`: hyperparameter search scored on the deployed .tflite model.

keras-tuner's own `Tuner.run_trial` fits a Keras 3 model and scores that Keras
model. edgekeras models are tf_keras models, and what ships is the .tflite file
made after pruning and quantization-aware training, whose accuracy can differ
from the Keras model's. `EdgeTuner` is a keras-tuner `BaseTuner` whose
`run_trial` trains each trial's model with `TrialTraining` (training.py: float,
pruning and QAT phases), exports the .tflite file and scores it on the
validation split with `TrialScoring` (scoring.py: LiteRT accuracy, gzip size,
latency, and the `Budget`), then saves the model, `result.json` and the
trial's TensorBoard HParams session.

Any keras-tuner oracle works (`make_oracle`: random search, Bayesian
optimization, Hyperband); with Hyperband, `tuner/epochs` is the float phase's
length and a trial that continues an earlier one starts from its float
weights. Re-creating the tuner with `overwrite=False` resumes a search without
redoing finished trials, and keras-tuner's chief/worker mode runs trials in
several processes sharing one project directory (see oracle.py).

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

import os
import shutil
import time

from keras_tuner.engine import base_tuner

from edgekeras.backend import KERAS_MODULES
from edgekeras.io import atomic_write_json, read_json
from edgekeras.models import load_model, model_file_name, save_model
from edgekeras.tuning.hparams import write_hparams_config, write_trial_hparams
from edgekeras.tuning.hypermodel import EdgeHyperModel
from edgekeras.tuning.oracle import check_oracle, distributed_role, serve_oracle
from edgekeras.tuning.results import RESULT_FILE, TrialResult, format_results, load_results, pareto_front, write_summary
from edgekeras.tuning.scoring import TrialScoring
from edgekeras.tuning.training import TrialTraining

__all__ = ["EdgeTuner"]

_FLOAT_WEIGHTS = "float.weights.h5"
_MODEL_STEM = "model"  # model.h5 (tf_keras) or model.keras (Keras 3): `model_file_name`
_TFLITE_FILE = "model.tflite"


class EdgeTuner(base_tuner.BaseTuner):
    """A keras-tuner tuner that trains with edgekeras and scores the .tflite file.

    See `run_trial` for what a trial does. The objective of the oracle must
    be one of the metrics in `edgekeras.tuning.METRICS`; use `OBJECTIVE`
    ("score", max) so that budgets take part in the ranking. The training
    arguments end up in `self.training` (a `TrialTraining`), the export and
    scoring ones in `self.scoring` (a `TrialScoring`, which holds the budget).

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
        qat_learning_rate_scale: QAT (and channel-pruning) learning rate =
            trial learning rate x this (both fine-tune trained weights).
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
        channel_epochs: epochs of the channel-pruning phase of trials whose
            `target_latency` is below 1 (the whole model, on images).
        channel_steps_per_epoch: batches per epoch of that phase (and, when
            caching, of the slimmed model's pruning phase); default as QAT's.
        channel_allocation: "latency" or "uniform", how a latency target is
            spread over the channel groups (see `TrialTraining`).
        representative_examples: calibration images for post-training int8.
        eval_threads: LiteRT threads for the accuracy pass.
        latency_threads: LiteRT threads for the batch-1 latency (and the
            channel-pruning latency table).
        latency_runs: timed latency runs (>= 50).
        seed: weights are initialized from this seed in every trial, so that
            trials differ by their hyperparameters only.
        save_models: also save each trial's Keras model (model.h5, or model.keras on Keras 3).
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
        channel_epochs=1,
        channel_steps_per_epoch=None,
        channel_allocation="latency",
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
        check_oracle(oracle)
        edge_hypermodel = EdgeHyperModel(hypermodel, search_space)
        self.search_space = edge_hypermodel.search_space
        self.training = TrialTraining(
            float_epochs=float_epochs, prune_epochs=prune_epochs, loss=loss, metrics=metrics,
            qat_learning_rate_scale=qat_learning_rate_scale, prune_policy=prune_policy, cache_features=cache_features,
            cache_engine=cache_engine, qat_steps_per_epoch=qat_steps_per_epoch, channel_epochs=channel_epochs,
            channel_steps_per_epoch=channel_steps_per_epoch, channel_allocation=channel_allocation,
            latency_threads=latency_threads, seed=seed, verbose=verbose,
        )
        self.scoring = TrialScoring(
            conversion=conversion, float_layers=float_layers, budget=budget,
            representative_examples=representative_examples, eval_threads=eval_threads,
            latency_threads=latency_threads, latency_runs=latency_runs,
        )
        self.seed = seed
        self.save_models = save_models
        self.verbose = verbose
        super().__init__(
            oracle=oracle,
            hypermodel=edge_hypermodel,
            directory=directory,
            project_name=project_name,
            overwrite=overwrite,
        )

    @property
    def distributed_role(self):
        """"chief" or "worker" in keras-tuner's distributed mode, else None."""
        return distributed_role()

    @property
    def log_dir(self):
        """The TensorBoard log root: one folder per trial, plus the HParams experiment."""
        return os.path.join(self.project_dir, "logs")

    def trial_log_dir(self, trial_id):
        """The TensorBoard folder of one trial: its curves and HParams session."""
        return os.path.join(self.log_dir, f"trial_{trial_id}")

    def search(self, x=None, y=None, *, validation_data=None, **kwargs):
        """Runs the search; the arguments reach every `run_trial`.

        In keras-tuner's distributed mode, the chief only serves the oracle
        (`edgekeras.tuning.serve_oracle`) and writes the summary at the end.

        Args:
            x: training data, as for `keras.Model.fit` (typically a
                batched `tf.data.Dataset` of `(images, labels)`).
            y: training targets, as for `keras.Model.fit` (None for a dataset).
            validation_data: the data each trial's .tflite is scored on:
                a batched dataset of `(images, labels)` or an `(x, y)` pair.
                Use the validation split, never the test split.
            **kwargs: `callbacks` (copied per trial; a tf_keras TensorBoard
                callback is pointed at the trial's log folder),
                `representative_data` (calibration images; default `x`),
                `steps_per_epoch`, `batch_size`, `verbose` and other
                `keras.Model.fit` keywords.

        Example:

        ```python
        tuner.search(data.train, validation_data=data.validation, steps_per_epoch=100)
        ```
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
        if not self._is_worker():
            write_hparams_config(self.log_dir, self.oracle.get_space())
        if distributed_role() == "chief":
            self.save()
            serve_oracle(self.oracle)
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

        Each step is a hook a subclass can override: `reuse_result` (keep the
        result of a trial that finished before an interruption),
        `build_and_train` (float, pruning and QAT phases), `export_trial`
        (the deployed .tflite file), `score_trial` (LiteRT on the validation
        data, never the test split, and the budget) and `write_result` (the
        model, `result.json` and the trial's HParams session).

        Args:
            trial: the keras-tuner `Trial`.
            x: training data, as `search` was given it.
            y: training targets (None for a dataset).
            validation_data: the data the trial's .tflite file is scored on.
            callbacks: the user's callbacks (copied for this trial).
            representative_data: calibration images (default `x`).
            steps_per_epoch: batches per epoch, or None to count them.
            verbose: Keras' `fit` verbosity.
            **fit_kwargs: other `keras.Model.fit` keywords.

        Returns:
            `{metric name: value}` for every tag of
            `edgekeras.tuning.METRICS`; the oracle ranks by its objective.
        """
        start = time.perf_counter()
        kept = self.reuse_result(trial)
        if kept is not None:
            return kept
        # A retried or resumed trial starts its logs over; stale sessions
        # would show twice in the HParams dashboard.
        shutil.rmtree(self.trial_log_dir(trial.trial_id), ignore_errors=True)
        deployed, histories, epochs = self.build_and_train(
            trial, x, y, validation_data=validation_data, callbacks=callbacks, steps_per_epoch=steps_per_epoch,
            verbose=verbose, **fit_kwargs,
        )
        calibration_data = representative_data if representative_data is not None else x
        conversion, tflite_path = self.export_trial(trial, deployed, epochs, calibration_data, validation_data)
        metrics = self.score_trial(tflite_path, validation_data, histories)
        result = self.write_result(
            trial, deployed, metrics, conversion=conversion, tflite_path=tflite_path, epochs=epochs, started=start
        )
        if self.verbose:
            print(f"[edgekeras tune] trial {result.trial_id}: {result.summary_line()}", flush=True)
        return metrics

    def reuse_result(self, trial):
        """The metrics of a trial that already finished, or None to run it.

        A trial counts as finished when its directory holds the .tflite file
        and a `result.json` for the same hyperparameters.

        Args:
            trial: the keras-tuner `Trial`.

        Returns:
            The stored `{metric: value}`, or None.
        """
        trial_dir = self.get_trial_dir(trial.trial_id)
        kept = read_json(os.path.join(trial_dir, RESULT_FILE))
        if (
            kept is None
            or "metrics" not in kept
            or kept.get("hyperparameters") != dict(trial.hyperparameters.values)
            or not os.path.isfile(os.path.join(trial_dir, _TFLITE_FILE))
        ):
            return None
        # Killed after this trial wrote its result but before keras-tuner
        # recorded it: the oracle retries it, the result stands.
        if self.verbose:
            print(f"[edgekeras tune] trial {trial.trial_id}: finished before the interruption, result reused", flush=True)
        return kept["metrics"]

    def build_and_train(
        self, trial, x, y=None, *, validation_data=None, callbacks=None, steps_per_epoch=None, verbose=0, **fit_kwargs
    ):
        """Builds the trial's model from a fresh session and trains its phases.

        Args:
            trial: the keras-tuner `Trial`.
            x: training data.
            y: training targets (None for a dataset).
            validation_data: validation data of the float and pruning phases.
            callbacks: the user's callbacks (copied for this trial).
            steps_per_epoch: batches per epoch, or None to count them.
            verbose: Keras' `fit` verbosity.
            **fit_kwargs: other `keras.Model.fit` keywords.

        Returns:
            `(deployed model, {phase: history dict}, {phase: epochs})`.
        """
        # The same seed in every trial: trials differ by their hyperparameters
        # only. The hypermodel may build with either Keras, so both are reset.
        for keras_module in KERAS_MODULES:
            keras_module.backend.clear_session()
            keras_module.utils.set_random_seed(self.seed)
        hp = trial.hyperparameters
        model = self.hypermodel.build(hp)
        float_epochs = resume_from = keep_float_weights = None
        if "tuner/epochs" in hp.values:
            # Hyperband sets the float phase's length, and may continue this
            # trial later from its float weights.
            float_epochs = int(hp.values["tuner/epochs"])
            keep_float_weights = os.path.join(self.get_trial_dir(trial.trial_id), _FLOAT_WEIGHTS)
            parent = hp.values.get("tuner/trial_id")
            if parent:
                # A continued trial has its parent's hyperparameters: resume
                # the parent's float phase, redo the rest.
                resume_from = os.path.join(self.get_trial_dir(parent), _FLOAT_WEIGHTS)
                float_epochs -= int(hp.values.get("tuner/initial_epoch", 0))
        return self.training.train(
            model, self.search_space.values(hp), x, y, validation_data=validation_data, callbacks=callbacks,
            steps_per_epoch=steps_per_epoch, verbose=verbose, log_dir=self.trial_log_dir(trial.trial_id),
            float_epochs=float_epochs, resume_from=resume_from, keep_float_weights=keep_float_weights, **fit_kwargs,
        )

    def export_trial(self, trial, model, epochs, calibration_data, validation_data):
        """Exports the trial's deployed .tflite file into its directory.

        Args:
            trial: the keras-tuner `Trial`.
            model: the deployed Keras model (`build_and_train`'s first value).
            epochs: `{phase: epochs}` the trial trained.
            calibration_data: representative images for post-training int8.
            validation_data: data the exported file is verified against.

        Returns:
            `(conversion, tflite_path)`.
        """
        tflite_path = os.path.join(self.get_trial_dir(trial.trial_id), _TFLITE_FILE)
        conversion = self.scoring.export(model, tflite_path, epochs, calibration_data, validation_data)
        return conversion, tflite_path

    def score_trial(self, tflite_path, validation_data, histories):
        """Evaluates the .tflite file on the validation data and applies the budget.

        Args:
            tflite_path: the deployed file.
            validation_data: a dataset of `(images, labels)` or an `(x, y)` pair.
            histories: `{phase: history dict}` of the training.

        Returns:
            `{metric: value}` for every tag of `edgekeras.tuning.METRICS`.
        """
        return self.scoring.score(tflite_path, validation_data, histories)

    def write_result(self, trial, model, metrics, *, conversion, tflite_path, epochs, started):
        """Saves the model, `result.json` and the HParams session of a trial.

        Args:
            trial: the keras-tuner `Trial`.
            model: the deployed Keras model (saved when `save_models`).
            metrics: `score_trial`'s metrics.
            conversion: the conversion of the .tflite file.
            tflite_path: the .tflite file `export_trial` wrote.
            epochs: `{phase: epochs}` the trial trained.
            started: `time.perf_counter()` when the trial began.

        Returns:
            The trial's `TrialResult`.
        """
        trial_dir = self.get_trial_dir(trial.trial_id)
        model_path = ""
        if self.save_models:
            model_path = save_model(model, model_file_name(model, os.path.join(trial_dir, _MODEL_STEM)))
        result = TrialResult(
            trial_id=trial.trial_id,
            status="COMPLETED",
            hyperparameters=dict(trial.hyperparameters.values),
            metrics=metrics,
            over_budget=self.scoring.budget.violations(metrics),
            conversion=conversion,
            epochs=epochs,
            trial_dir=trial_dir,
            tuner_id=self.tuner_id,
            tflite_path=tflite_path,
            model_path=model_path,
            seconds=time.perf_counter() - started,
        )
        atomic_write_json(os.path.join(trial_dir, RESULT_FILE), result.to_dict())
        write_trial_hparams(self.trial_log_dir(trial.trial_id), trial.trial_id, trial.hyperparameters.values, metrics)
        return result

    def on_trial_end(self, trial):
        """keras-tuner's hook; also prints why a trial did not complete."""
        super().on_trial_end(trial)
        status = getattr(trial.status, "value", trial.status)
        if self.verbose and status not in ("COMPLETED", "RUNNING"):
            lines = (trial.message or "").strip().splitlines()
            print(f"[edgekeras tune] trial {trial.trial_id} {status}: {lines[-1] if lines else ''}", flush=True)

    def save_model(self, trial_id, model, step=0):
        """Saves `model` as the trial's Keras model (.h5 on tf_keras, .keras on Keras 3; atomic)."""
        return save_model(model, model_file_name(model, os.path.join(self.get_trial_dir(trial_id), _MODEL_STEM)))

    def load_model(self, trial):
        """Loads a trial's saved Keras model (the deployed phase's model)."""
        stem = os.path.join(self.get_trial_dir(trial.trial_id), _MODEL_STEM)
        path = next((stem + extension for extension in (".h5", ".keras") if os.path.exists(stem + extension)), stem + ".h5")
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
        """Writes `<project_dir>/results.json`: the ranking, the front and every trial."""
        write_summary(self.project_dir, self.results(), objective=self.oracle.objective, budget=self.scoring.budget)
