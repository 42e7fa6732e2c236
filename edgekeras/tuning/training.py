"""How each `EdgeTuner` trial trains: float, pruning and QAT phases.

`TrialTraining` holds the training settings of a search and trains one
trial's model with `edgekeras.trainers.EdgeTrainer`: float epochs, pruning to
the trial's sparsity on the trial's ramp (`edgekeras.schedules.polynomial_ramp`),
then quantization-aware epochs. With `cache_features`, the float and pruning
phases train only the trainable top of the model, on activations of its frozen
prefix computed once per search (`edgekeras.features.cache_features`); QAT then
runs on the whole model with images, since the whole model is what ships.

A trial whose `target_latency` is below 1 prunes channels after its float
phase: the widths come from a per-layer latency table measured once per
search and model shape (`edgekeras.channels.measure_table`), spread over the
channel groups by importance ("latency", `edgekeras.channels.allocate`) or
uniformly; a channel-pruning phase then trains the whole model on images
(the early high-resolution blocks, which cached features leave frozen, hold
most of the latency) and shrinks it, and the pruning and QAT phases train
the narrower model, which is what the trial deploys.

Example:

```python
import numpy as np
from edgekeras import keras
from edgekeras.tuning.training import TrialTraining

inputs = keras.Input((8, 8, 3))
x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
images, labels = np.random.rand(32, 8, 8, 3).astype("float32"), np.random.randint(0, 2, 32)
values = {"learning_rate": 1e-3, "final_sparsity": 0.5, "pruning_begin": 0.0, "pruning_end": 1.0, "qat_epochs": 0}
deployed, histories, epochs = TrialTraining(verbose=0).train(
    model, values, images, labels, validation_data=(images, labels), log_dir="/tmp/trial_logs", batch_size=16
)
print(epochs)  # {'float': 1, 'prune': 1, 'qat': 0}
```
"""

import copy
import dataclasses
import functools
import numbers
import os
import time

import keras_tuner
import numpy as np
import tensorflow as tf

from edgekeras import sparsity
from edgekeras.arguments import check_positive_int
from edgekeras.choices import CACHE_ENGINES
from edgekeras.backend import KERAS_MODULES, for_model
from edgekeras.compat import keras
from edgekeras.data import resolve_steps_per_epoch
from edgekeras.features import array_dataset, cache_features
from edgekeras.models import split_model
from edgekeras.schedules import polynomial_ramp
from edgekeras.trainers import EdgeTrainer, phase_optimizer
from edgekeras.trainers.checks import check_epochs
from edgekeras.tuning.trial_channels import TrialWidths, train_every_layer

__all__ = ["TrialTraining", "trial_callbacks"]


def _check_qat_learning_rate_scale(scale):
    """Returns `scale` as a float if it is a positive number, else raises."""
    if not isinstance(scale, numbers.Real) or not scale > 0:
        raise ValueError(
            f"Argument `qat_learning_rate_scale` must be a positive number. Received: qat_learning_rate_scale={scale!r}"
        )
    return float(scale)


def _check_cache_engine(cache_engine):
    if cache_engine not in CACHE_ENGINES:
        raise ValueError(f"Argument `cache_engine` must be 'litert' or 'keras'. Received: cache_engine={cache_engine!r}")


def _repeated(x, steps):
    """`x` repeated when a step budget may ask for more batches than one pass holds."""
    return x.repeat() if steps and isinstance(x, tf.data.Dataset) else x


def _batches_per_epoch(x, batch_size, steps_per_epoch):
    """Batches per training epoch, which the pruning ramp is laid out on."""
    try:
        return resolve_steps_per_epoch(
            x, steps_per_epoch, batch_size=batch_size, needed_for="to place the pruning ramp", fix=" to `search`"
        )
    except ValueError as error:
        # Fatal: every other trial would fail the same way.
        raise keras_tuner.errors.FatalValueError(str(error)) from error


@dataclasses.dataclass(frozen=True)
class _Images:
    """A trial's image data and `fit` settings, for the phases that train the whole model."""

    x: object
    y: object
    validation_data: object
    steps_per_epoch: object
    callbacks: object
    verbose: int
    log_dir: str
    fit_kwargs: dict


def trial_callbacks(callbacks, log_dir, keras_module=keras):
    """Copies of the user's callbacks for one trial, logging to `log_dir`.

    Each trial gets its own copies, so no state (early-stopping counters,
    best weights) leaks from one trial into the next. A TensorBoard
    callback is pointed at `log_dir`; one of `keras_module` (the Keras of the
    trial's model) is added when there is none.

    Args:
        callbacks: the user's callbacks, or None.
        log_dir: the trial's TensorBoard folder.
        keras_module: the Keras of the model the callbacks will watch.

    Returns:
        A new list of callbacks.

    Raises:
        keras_tuner.errors.FatalValueError: a callback cannot be deep-copied
            (fatal: every trial would fail the same way).

    Example:

    ```python
    callbacks = trial_callbacks([keras.callbacks.EarlyStopping(patience=2)], "runs/tune/logs/trial_0")
    ```
    """
    callbacks = list(callbacks or [])
    try:
        callbacks = copy.deepcopy(callbacks)
    except Exception as error:
        raise keras_tuner.errors.FatalValueError(
            "Argument `callbacks` must hold deep-copyable callbacks (each trial gets its own "
            f"copies). Received: callbacks={callbacks!r} ({type(error).__name__}: {error})"
        ) from error
    boards = [c for c in callbacks if isinstance(c, tuple(library.callbacks.TensorBoard for library in KERAS_MODULES))]
    for board in boards:
        board.log_dir = log_dir
    if not boards:
        callbacks.append(keras_module.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
    return callbacks


class TrialTraining:
    """The training settings of a search, and the training of one trial.

    Args:
        float_epochs: epochs of float training per trial (`train`'s
            `float_epochs` replaces it, e.g. Hyperband's `tuner/epochs`).
        prune_epochs: epochs of the pruning phase (trials with
            `final_sparsity` 0 train them densely instead).
        loss: the loss of every phase.
        metrics: Keras metrics; "accuracy" gives the `val_accuracy` history.
        qat_learning_rate_scale: QAT (and channel-pruning) learning rate =
            trial learning rate x this (both fine-tune trained weights).
        prune_policy: which layers are pruned (see `edgekeras.sparsity`).
        cache_features: train the float and pruning phases on cached
            activations of the model's frozen prefix (needs tf.data inputs).
        cache_engine: "litert" or "keras", how the prefix is run for caching.
        qat_steps_per_epoch: batches per QAT epoch when caching (default:
            `steps_per_epoch`, else the whole training data).
        channel_epochs: epochs of the channel-pruning phase of trials whose
            `target_latency` is below 1.
        channel_steps_per_epoch: batches per epoch of that phase (default:
            `steps_per_epoch`, else the whole training data); when caching,
            also of the pruning phase that follows it, which trains the
            slimmed model on images (the cached activations are the dense
            prefix's).
        channel_allocation: "latency" (the channels that save the most
            predicted latency per importance go first) or "uniform" (every
            group keeps the same share, the widest that meets the target).
        latency_threads: LiteRT threads the latency table is measured with.
        seed: shuffle seed of the cached activations.
        verbose: print when the activations are cached and a latency table
            is measured.

    Example:

    ```python
    training = TrialTraining(float_epochs=2, prune_epochs=1, cache_features=True, channel_epochs=1)
    ```
    """

    def __init__(
        self,
        *,
        float_epochs=1,
        prune_epochs=1,
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        qat_learning_rate_scale=0.1,
        prune_policy="all",
        cache_features=False,
        cache_engine="litert",
        qat_steps_per_epoch=None,
        channel_epochs=1,
        channel_steps_per_epoch=None,
        channel_allocation="latency",
        latency_threads=1,
        seed=0,
        verbose=1,
    ):
        self.float_epochs = check_epochs(float_epochs, "float_epochs")
        self.prune_epochs = check_epochs(prune_epochs, "prune_epochs")
        self.qat_learning_rate_scale = _check_qat_learning_rate_scale(qat_learning_rate_scale)
        sparsity.check_policy(prune_policy, "prune_policy")
        _check_cache_engine(cache_engine)
        check_positive_int(qat_steps_per_epoch, "qat_steps_per_epoch", allow_none=True)
        check_positive_int(channel_steps_per_epoch, "channel_steps_per_epoch", allow_none=True)
        check_positive_int(channel_epochs, "channel_epochs")
        self.channel_widths = TrialWidths(channel_allocation, latency_threads, verbose)
        self.loss = loss
        self.metrics = list(metrics or [])
        self.prune_policy = prune_policy
        self.cache_features = bool(cache_features)
        self.cache_engine = cache_engine
        self.qat_steps_per_epoch = qat_steps_per_epoch
        self.channel_epochs = channel_epochs
        self.channel_steps_per_epoch = channel_steps_per_epoch
        self.seed = seed
        self.verbose = verbose
        # {prefix key: (train arrays, validation arrays, batch size)}, one entry.
        self._feature_cache = {}

    def train(self, model, values, x, y=None, *, validation_data=None, callbacks=None, steps_per_epoch=None, verbose=0,
              log_dir, float_epochs=None, resume_from=None, keep_float_weights=None, **fit_kwargs):
        """Trains `model` through the trial's phases.

        Args:
            model: the trial's freshly built tf_keras model.
            values: the trial's `SearchSpace.values(hp)`.
            x, y: training data.
            validation_data: validation data of the float and pruning phases.
            callbacks: the user's callbacks (copied, see `trial_callbacks`).
            steps_per_epoch: batches per epoch, or None to count them.
            verbose: Keras' `fit` verbosity.
            log_dir: the trial's TensorBoard folder.
            float_epochs: float epochs to run, instead of the setting.
            resume_from: weights (.h5) of the trained part to start from.
            keep_float_weights: where to save the float phase's weights.
            **fit_kwargs: other `keras.Model.fit` keywords.

        Returns:
            `(deployed model, {phase: history dict}, {phase: epochs})`;
            trials that prune channels add "channels" to the epochs.
        """
        prefix, trained, (train_x, train_y, train_validation, train_steps) = self._trained_part(
            model, x, y, validation_data, steps_per_epoch, resume_from
        )
        slimming = float(values.get("target_latency", 1.0)) < 1
        # A slimmed model's pruning phase cannot use activations of the dense
        # prefix: it trains on images, with the channel phase's step budget.
        prune_x, prune_steps = (
            (x, self.channel_steps_per_epoch or steps_per_epoch) if slimming and prefix is not None
            else (train_x, train_steps)
        )
        float_epochs = self.float_epochs if float_epochs is None else float_epochs
        float_epochs, prune_epochs, schedule = self._pruning_phase(
            values, float_epochs, prune_x, fit_kwargs.get("batch_size"), prune_steps
        )
        qat_epochs = int(values["qat_epochs"])
        optimizer = self._phase_optimizer(float(values["learning_rate"]))
        # Channel pruning follows the float phase, and the later phases train
        # the narrower model. Otherwise the top alone is not what ships: with
        # cached features, QAT runs afterwards on the whole model.
        later = (0, None, 0) if slimming else (prune_epochs, schedule, qat_epochs if prefix is None else 0)
        trainer = EdgeTrainer(trained, optimizer, self.loss, self.metrics, prune_policy=self.prune_policy)
        histories = {}
        if float_epochs + later[0] + later[2]:
            trainer.fit(
                train_x, train_y, validation_data=train_validation, float_epochs=float_epochs, prune=later[1],
                prune_epochs=later[0], qat_epochs=later[2],
                callbacks=trial_callbacks(callbacks, log_dir, for_model(trained).keras), steps_per_epoch=train_steps,
                verbose=verbose, **fit_kwargs,
            )
            histories.update(trainer.histories)
            if keep_float_weights:
                trainer.float_model.save_weights(keep_float_weights)
        epochs = {"float": float_epochs, "prune": prune_epochs, "qat": qat_epochs}
        if slimming:
            images = _Images(x, y, validation_data, steps_per_epoch, callbacks, verbose, log_dir, fit_kwargs)
            deployed, slim_histories, epochs["channels"] = self._slim(
                model, float(values["target_latency"]), optimizer, images, prefix is not None,
                (prune_epochs, schedule, prune_x, prune_steps, qat_epochs), float_epochs,
            )
            histories.update(slim_histories)
            return deployed, histories, epochs
        deployed = trainer.latest_model if prefix is None else model
        if prefix is not None and qat_epochs:
            deployed = self._fit_qat_on_images(
                model, optimizer, x, y, qat_epochs, callbacks, steps_per_epoch, verbose, fit_kwargs, log_dir
            )
        return deployed, histories, epochs

    def _trained_part(self, model, x, y, validation_data, steps_per_epoch, resume_from):
        """`(frozen prefix or None, the part the float phase trains, its (x, y, validation_data, steps_per_epoch))`."""
        prefix = top = None
        if self.cache_features:
            prefix, top, _ = split_model(model)
        trained = model if prefix is None else top
        if resume_from:
            trained.load_weights(resume_from)
        data = (x, y, validation_data, steps_per_epoch) if prefix is None else self._cached(prefix, x, validation_data)
        return prefix, trained, data

    def _slim(self, model, target_latency, optimizer, images, cached, later, float_epochs):
        """Channel pruning of the whole float-trained model on images, then the pruning and QAT phases.

        Args:
            model: the whole float-trained model.
            target_latency: the trial's latency target, below 1.
            optimizer: the trial's `phase_optimizer`.
            images: the trial's `_Images`.
            cached: whether the float phase trained on cached features (the
                pruning phase then trains on images too, without validation).
            later: `(prune_epochs, schedule, prune x, prune steps, qat_epochs)`.
            float_epochs: epochs trained before, where the epoch count goes on.

        Returns:
            `(deployed model, {phase: history dict}, channel epochs)`.
        """
        prune_epochs, schedule, prune_x, prune_steps, qat_epochs = later
        trainer = EdgeTrainer(model, optimizer, self.loss, self.metrics, prune_policy=self.prune_policy)
        # The trainer's model: a nested model's flat copy, the one the phases train.
        widths = self.channel_widths.widths(trainer.model, target_latency)
        fit = functools.partial(
            trainer.fit, y=images.y, initial_epoch=float_epochs, verbose=images.verbose, **images.fit_kwargs,
            callbacks=trial_callbacks(images.callbacks, os.path.join(images.log_dir, "slim"), for_model(model).keras),
        )
        channel_epochs = self.channel_epochs if widths else 0
        if widths:
            steps = self.channel_steps_per_epoch or images.steps_per_epoch
            flags = train_every_layer(trainer.model)
            fit(_repeated(images.x, steps), channels=widths, channel_epochs=channel_epochs, steps_per_epoch=steps)
            for layer in trainer.model.layers:
                layer.trainable = flags.get(layer.name, layer.trainable)
        elif self.verbose:
            print(f"[edgekeras tune] target_latency={target_latency} keeps every channel group whole", flush=True)
        if not cached and prune_epochs + qat_epochs:
            fit(images.x, validation_data=images.validation_data, prune=schedule, prune_epochs=prune_epochs,
                qat_epochs=qat_epochs, steps_per_epoch=images.steps_per_epoch)
        if cached and prune_epochs:
            fit(_repeated(prune_x, prune_steps), prune=schedule, prune_epochs=prune_epochs, steps_per_epoch=prune_steps)
        if cached and qat_epochs:
            qat_steps = self.qat_steps_per_epoch or images.steps_per_epoch
            fit(_repeated(images.x, qat_steps), qat_epochs=qat_epochs, steps_per_epoch=qat_steps)
        return trainer.latest_model, dict(trainer.histories), channel_epochs

    def _phase_optimizer(self, learning_rate):
        """`optimizer(phase)` for `EdgeTrainer`: QAT and channel pruning fine-tune at a fraction of the rate."""
        fine_tuning = learning_rate * self.qat_learning_rate_scale
        return phase_optimizer({"float": learning_rate, "prune": learning_rate, "channels": fine_tuning, "qat": fine_tuning})

    def _pruning_phase(self, values, float_epochs, train_x, batch_size, steps_per_epoch):
        """Returns `(float_epochs, prune_epochs, sparsity schedule or None)`."""
        prune_epochs = self.prune_epochs
        final_sparsity = float(values["final_sparsity"])
        if final_sparsity <= 0 or prune_epochs <= 0:
            # Dense trials train the pruning epochs as float epochs, so every
            # trial trains as long and their scores stay comparable.
            return float_epochs + prune_epochs, 0, None
        steps = _batches_per_epoch(train_x, batch_size, steps_per_epoch) * prune_epochs
        schedule = polynomial_ramp(steps, final_sparsity, begin=values["pruning_begin"], end=values["pruning_end"])
        return float_epochs, prune_epochs, schedule

    def _fit_qat_on_images(self, model, optimizer, x, y, qat_epochs, callbacks, steps_per_epoch, verbose, fit_kwargs, log_dir):
        """QAT of the whole model after training on cached features; returns the QAT model."""
        # The quantized network is the whole network: QAT runs on images,
        # without a validation pass (the .tflite score is the judge).
        qat_steps = self.qat_steps_per_epoch or steps_per_epoch
        trainer = EdgeTrainer(model, optimizer, self.loss, self.metrics, prune_policy=self.prune_policy)
        trainer.fit(
            # A step budget may ask for more batches than one pass holds.
            x.repeat() if qat_steps else x,
            y,
            qat_epochs=qat_epochs,
            callbacks=trial_callbacks(callbacks, os.path.join(log_dir, "qat"), for_model(model).keras),
            steps_per_epoch=qat_steps,
            verbose=verbose,
            **fit_kwargs,
        )
        return trainer.latest_model

    def _cached(self, prefix, x, validation_data):
        """Training data of the top on the frozen prefix's activations, computed once.

        Returns:
            `(x, y, validation_data, steps_per_epoch)` for the top's `fit`:
            datasets of cached activations, whose length is known.
        """
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
            # One entry only: activations of a whole training split are large.
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
        return array_dataset(*train, batch_size, shuffle_seed=self.seed), None, array_dataset(*validation, batch_size), None
