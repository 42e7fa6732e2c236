"""`EdgeTrainer`: float training -> optional pruning -> quantization-aware fine-tuning."""

import functools
import os

import tensorflow as tf

from edgekeras import channels as channels_module
from edgekeras import quantization, sparsity
from edgekeras.backend import for_model
from edgekeras.qat import engine_for
from edgekeras.callbacks import ChannelPruning, MagnitudePruning, PreserveSparsity
from edgekeras.compat import keras
from edgekeras.data import resolve_steps_per_epoch
from edgekeras.litert.trial import check_conversions
from edgekeras.models import clone_with_weights, flatten, is_nested
from edgekeras.distillation import Distillation
from edgekeras.trainers.checks import (
    check_channels, check_epochs, check_fit_arguments, check_inputs, check_strategy, check_trainer_arguments,
)
from edgekeras.trainers.distill import phase_compile_arguments, teacher_data
from edgekeras.trainers.phase_schedules import channel_pruning_callback, pruning_schedule
from edgekeras.trainers.phase_callbacks import KeepFrozen, PhaseLogs, QuantizerRanges, with_epoch_line
from edgekeras.trainers.optimizers import check_optimizer, make_optimizer
from edgekeras.trainers.trial import trial_data, trial_phases

__all__ = ["EdgeTrainer", "PHASES"]

PHASES = ("float", "channels", "prune", "qat")


def _steps_per_epoch(x, batch_size, steps_per_epoch, argument="prune"):
    fix = "a schedule object" if argument == "prune" else "a ChannelPruning callback"
    return resolve_steps_per_epoch(
        x, steps_per_epoch, batch_size=batch_size,
        needed_for=f"to turn `{argument}` into a schedule", fix=f", or {fix} as `{argument}`",
    )


def _calibration_batches(x, batch_size):
    """Training batches to calibrate QAT ranges on, or None when reading them would consume training data."""
    if isinstance(x, tf.data.Dataset):
        return x
    if isinstance(x, keras.utils.Sequence):
        return (x[i] for i in range(len(x)))
    if hasattr(x, "shape") and hasattr(x, "__len__"):
        return tf.data.Dataset.from_tensor_slices(x).batch(batch_size or 32)
    return None  # generators: consuming them here would steal training batches


class EdgeTrainer:
    """Trains a model in phases: float, optional channel pruning, optional pruning, quantization-aware.

    A trainer object holding the user's model, not a `keras.Model` subclass:
    quantization-aware training builds a new model (TFMOT's `quantize_apply`
    clones every layer into a `QuantizeWrapperV2`), so the QAT phase trains a
    different model object than the float phases, and channel pruning ends by
    building a narrower one (`edgekeras.channels.shrink`). The trainer keeps
    each phase's model: `float_model` (after the float phase), `slim_model`
    (after channel pruning: the narrower dense model, which the pruning and
    QAT phases then train; `channel_widths` gives its kept channels), `pruned_model`
    (the user's flattened model with exact zeros, no wrappers), `qat_model`
    (or None), `model` (the user's flattened model), `latest_model` (what to
    export), `quantize_scheme` once QAT ran, and `histories`
    (`{"float": ..., "prune": ..., "qat": ...}`, `History.history` dicts).

    Every phase is a real `model.fit` (epochs numbered continuously across
    phases, so TensorBoard curves follow each other) with the user's callbacks and
    a fresh optimizer. Each epoch's logs carry `phase` (0 float, 1 channels,
    2 prune, 3 qat: TensorBoard needs numbers; the names are in `PHASES` and
    `summary()`) and `learning_rate`; the channel-pruning phase adds
    `kept_channels`, `kept_channels/<layer>` and `target_channel_sparsity`, the
    pruning phase `sparsity`, `sparsity/<layer>` and
    `target_sparsity`, and QAT of a sparse model adds `sparsity` again, which
    shows what survives quantization-aware training. QAT adds `quant_range_width_mean`,
    `quant_range_min`, `quant_range_max` and `quant_range_change` (its activation
    ranges, and how far they moved since the phase began).

    Frozen layers (`trainable=False`) stay frozen in every phase and are not
    pruned. TFMOT's `QuantizeWrapperV2` trains the kernels of frozen layers anyway,
    so the QAT phase puts them back after every batch. Layers TFMOT cannot quantize
    are reported before any training starts (`UnquantizableLayersError`, which names
    the layers and the fix).

    Before the first epoch, `fit` converts the untrained model the way the trained
    one will be (`trial_conversion`, a few seconds): in each `TFLiteExport`
    callback's conversions, in the `conversions` asked for, and, when QAT runs, its
    quantization-aware copy to int8. A layer the converter refuses is reported then
    (`ConversionError`, naming the layer and the fix), not after training.

    Before QAT fine-tuning, the activation ranges are calibrated on
    `calibration_steps` training batches. TFMOT starts them at [-6, 6] and moves them
    0.1 % per step, so a short fine-tuning would keep wrong ranges.

    Args:
        model: a tf_keras or Keras 3 (TensorFlow backend) functional or
            Sequential model; its Keras picks the QAT engine
            (`edgekeras.qat.engine_for`); nested sub-models
            are flattened (layers and weights are shared with `model`).
        optimizer: the optimizer for every phase: a Keras identifier
            (`"adam"`), a config dict, an `Optimizer` instance (re-created from
            its config for each phase, since an optimizer is bound to the
            variables of its first model) or a callable returning a new
            optimizer, taking the phase name (`"float"`, `"prune"`, `"qat"`)
            or no argument.
        loss: the loss, as for `model.compile`.
        metrics: the metrics, as for `model.compile`.
        prune_policy: which layers the pruning phase prunes (see
            `edgekeras.sparsity`).
        prune_allocation: `"uniform"` (every pruned layer at the schedule's
            sparsity) or `"global"` (one magnitude threshold over all pruned
            weights; see `MagnitudePruning`).
        max_layer_sparsity: with `"global"`, the most zeros any one layer
            may get (None: no bound).
        quantize_scheme: `"auto"`, `"default"` or `"prune_preserve"`.
        quantize_skip: names of layers left in float during QAT.
        quantize_configs: `{layer name: QuantizeConfig}` for layers TFMOT's
            registry does not know.
        compile_kwargs: further `model.compile` keywords (e.g.
            `{"jit_compile": False}`).
        calibration_steps: training batches used to set the QAT model's
            activation ranges before fine-tuning
            (`quantization.calibrate_activation_ranges`); TFMOT's own ranges
            start at [-6, 6] and move 0.1 % per step, far too slowly for a
            short fine-tuning. 0 leaves TFMOT's behaviour.
        distillation: an `edgekeras.distillation.Distillation` (temperature,
            weight, phases): its phases ("prune", "qat") train against a
            mix of the labels and the softened outputs of the model as it
            entered the phase (the float model), with `accuracy` still
            logged. Arrays get the teacher's outputs once; datasets per
            batch unless their labels are packed already. None: labels only.
        strategy: a `tf.distribute.Strategy` (`MirroredStrategy`,
            `MultiWorkerMirroredStrategy`, see `edgekeras.distribute`) that
            every phase runs under: the phases' models (the QAT clone and the
            float snapshot included) are built inside its scope. Default: the
            strategy the model's variables were created under, else the
            current one. Build the model inside `strategy.scope()`.
        backup_dir: a directory for Keras `BackupAndRestore` checkpoints,
            one sub-directory per phase, written at the end of every epoch
            (weights and optimizer state, so learning-rate schedules and the
            pruning schedule, which count `optimizer.iterations`, continue
            where they stopped). A `fit` with the same arguments after a crash
            resumes from the last finished epoch; phases that had finished are
            restored, not retrained. The checkpoints are kept after training:
            delete the directory to train from scratch. None: no checkpoints.

    Example:

    ```python
    import numpy as np
    from edgekeras import keras
    from edgekeras.trainers import EdgeTrainer

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    x_train, y_train = np.random.rand(32, 8, 8, 3), np.random.randint(0, 2, 32)
    trainer = EdgeTrainer(model, "adam", "sparse_categorical_crossentropy", ["accuracy"])
    trainer.fit(x_train, y_train, batch_size=8, float_epochs=1, prune=0.5, prune_epochs=1, qat_epochs=1)
    print(trainer.summary()["sparsity"])
    ```
    """

    def __init__(
        self,
        model,
        optimizer="adam",
        loss=None,
        metrics=None,
        *,
        prune_policy="all",
        prune_allocation="uniform",
        max_layer_sparsity=None,
        quantize_scheme="auto",
        quantize_skip=(),
        quantize_configs=None,
        compile_kwargs=None,
        calibration_steps=16,
        distillation=None,
        strategy=None,
        backup_dir=None,
    ):
        check_trainer_arguments(model, loss, prune_policy, quantize_scheme, compile_kwargs, calibration_steps, backup_dir)
        sparsity.check_allocation(prune_allocation, max_layer_sparsity)
        if distillation is not None and not isinstance(distillation, Distillation):
            raise ValueError(
                "Argument `distillation` must be None or an edgekeras.distillation.Distillation, e.g. "
                f"Distillation(temperature=4.0, weight=0.5). Received: distillation={distillation!r}"
            )
        strategy = check_strategy(model, strategy)
        check_optimizer(optimizer)
        with strategy.scope():
            self.model = flatten(model) if is_nested(model) else model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics
        self.prune_policy = prune_policy
        self.prune_allocation = prune_allocation
        self.max_layer_sparsity = max_layer_sparsity
        self.quantize_scheme_setting = quantize_scheme
        self.quantize_skip = quantization.check_layer_names(quantize_skip, "quantize_skip")
        self.quantize_configs = dict(quantize_configs or {})
        self.compile_kwargs = dict(compile_kwargs or {})
        self.calibration_steps = calibration_steps
        self.distillation = distillation
        self.strategy = strategy
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.calibrated_ranges = 0
        self.float_model = None
        self.slim_model = None
        self.channel_widths = {}
        self.pruned_model = None
        self.qat_model = None
        self.quantize_scheme = None
        self.histories = {}
        self._sparsity = {}
        self._model_sparsity = {}
        self._pruned_names = None
        self._epochs = {}
        self._initial_epoch = 0

    def _compile(self, model, phase):
        library = for_model(model).keras
        loss, metrics = phase_compile_arguments(self.distillation, phase, self.loss, self.metrics, library)
        optimizer = make_optimizer(self.optimizer, phase, library)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, **self.compile_kwargs)

    def _distilled(self, phase, student, teacher, x, fit_kwargs):
        if self.distillation is None or phase not in self.distillation.phases:
            return x, fit_kwargs
        return teacher_data(student, teacher, x, fit_kwargs)

    def _record_sparsity(self, phase, model):
        pairs = sparsity.prunable_weights(model)
        self._model_sparsity[phase] = sparsity.overall_sparsity(model, pairs)
        if self._pruned_names is not None:
            pairs = [(layer, weight) for layer, weight in pairs if layer.name in self._pruned_names]
            self._sparsity[phase] = sparsity.overall_sparsity(model, pairs)

    def _run_phase(self, phase, model, x, n_epochs, callbacks, extra_callbacks, fit_kwargs):
        done = self._initial_epoch + sum(self._epochs.values())
        # First in the list: it restores weights and optimizer before the
        # other callbacks (pruning masks, frozen-weight snapshots) read them.
        backup = [] if self.backup_dir is None else [
            for_model(model).keras.callbacks.BackupAndRestore(os.path.join(self.backup_dir, phase), delete_checkpoint=False)
        ]
        callbacks, fit_kwargs = with_epoch_line([*backup, *extra_callbacks, PhaseLogs(phase, PHASES), *callbacks], fit_kwargs)
        history = model.fit(x, initial_epoch=done, epochs=done + n_epochs, callbacks=callbacks, **fit_kwargs)
        self._epochs[phase] = n_epochs
        self.histories[phase] = dict(history.history)
        return history

    def fit(self, x=None, y=None, *, validation_data=None, float_epochs=0, channels=None, channel_epochs=0,
            prune=None, prune_epochs=0, qat_epochs=0, callbacks=None, steps_per_epoch=None, conversions=None,
            initial_epoch=0, **fit_kwargs):
        """Runs the phases and returns `self.histories`.

        Args:
            x: training data, as for `keras.Model.fit`.
            y: training targets, as for `keras.Model.fit` (None for a dataset).
            validation_data: as for `keras.Model.fit`.
            float_epochs: epochs of plain training.
            channels: None, the fraction of every channel group's channels
                to remove in (0, 1), `{group name: channels kept}` (from
                `edgekeras.channels.allocate`, say) or a `ChannelPruning`
                callback; see `edgekeras.trainers.phase_schedules`. The
                zeroed channels are then removed (`shrink`) and the later
                phases train the narrower model.
            channel_epochs: epochs of the channel-pruning phase (> 0 when
                `channels` is set).
            prune: None (no pruning), a target sparsity in (0, 1) reached by a
                polynomial ramp over the first 2/3 of the pruning phase, or a
                pruning schedule object (steps count from the phase's start).
            prune_epochs: epochs of the pruning phase (> 0 when pruning).
            qat_epochs: epochs of quantization-aware fine-tuning.
            callbacks: the user's callbacks, given to every phase.
            steps_per_epoch: batches per epoch, needed when the data's
                length is unknown and `prune` or `channels` must become a
                schedule. Also passed to fit.
            conversions: what to convert the untrained model to before the
                first epoch, so that the converter's objections come before
                training (see `trial_conversion`). None: each `TFLiteExport`
                callback's conversions, and int8 of the quantization-aware
                copy when QAT runs. A list of names (e.g. `["float32",
                "int8"]`, for files exported after `fit`) adds those of the
                float model; `()` tries nothing (the callbacks still try
                theirs when their phase begins).
            initial_epoch: the first epoch's number (after an earlier fit's
                epochs, so that TensorBoard curves follow on).
            **fit_kwargs: other `keras.Model.fit` keywords (`verbose`,
                `batch_size`, `class_weight`, ...).

        Returns:
            `{phase name: History.history}` for the phases that ran.

        Raises:
            ValueError: a bad argument (named in the message).
            UnquantizableLayersError: QAT was asked for and some layers
                cannot be quantized (raised before any training).
            ConversionError: the converter refuses the model or its
                quantization-aware copy (raised before any training).
        """
        channel_epochs = check_channels(channels, channel_epochs)
        float_epochs, prune_epochs, qat_epochs, callbacks = check_fit_arguments(
            float_epochs, prune, prune_epochs, qat_epochs, callbacks, fit_kwargs, channel_epochs
        )
        checked_loss = self.distillation.loss() if self.distillation else self.loss  # it reads packed labels
        check_inputs(self.model, x, y, loss=checked_loss, validation_data=validation_data)
        self._initial_epoch = check_epochs(initial_epoch, "initial_epoch")
        schedule, channel_pruning = self._schedules(
            functools.partial(_steps_per_epoch, x, fit_kwargs.get("batch_size"), steps_per_epoch),
            prune, prune_epochs, channels, channel_epochs,
        )
        if qat_epochs:
            # Fail before training, not after the float and pruning phases.
            engine_for(self.model).check(self.model, self.quantize_skip, self.quantize_configs)
        if conversions is None or check_conversions(conversions):
            self.trial_conversion(
                conversions or (), qat=bool(qat_epochs),
                float_model=bool(float_epochs) or schedule is not None or channel_pruning is not None,
                representative_data=trial_data(x), callbacks=callbacks,
            )
        fit_kwargs = dict(fit_kwargs, y=y, validation_data=validation_data)
        if steps_per_epoch is not None:
            fit_kwargs["steps_per_epoch"] = steps_per_epoch
        # Every model of every phase (snapshot, QAT clone) and every compile
        # must be made under the strategy that holds the model's variables.
        with self.strategy.scope():
            self._train(x, (channel_pruning, channel_epochs), schedule, float_epochs, prune_epochs, qat_epochs,
                        callbacks, fit_kwargs)
        return self.histories

    def _schedules(self, batches, prune, prune_epochs, channels, channel_epochs):
        """`(pruning schedule or None, ChannelPruning or None)` of `fit`; `batches(argument)` counts an epoch's steps."""
        schedule = None if prune is None else pruning_schedule(prune, batches() * prune_epochs)
        channel_pruning = None if channels is None else channel_pruning_callback(
            channels, None if isinstance(channels, ChannelPruning) else batches("channels") * channel_epochs, self.model
        )
        return schedule, channel_pruning

    def trial_conversion(self, conversions=(), *, qat=False, **kwargs):
        """Converts the untrained model the way the trained ones will be, before training; writes nothing.

        `conversions` are tried on the float (and pruned) model; with `qat`,
        the quantization-aware copy QAT will train (this trainer's
        `quantize_*` settings, ranges calibrated like QAT's) is tried as
        int8. Other keywords (`float_model`, `representative_data`,
        `io_dtype`, `float_layers`, `callbacks`, `log_path`) are those of
        `edgekeras.trainers.trial.trial_phases`, which documents them.

        Returns:
            `{"float": {conversion: bytes}, "qat": {"int8": bytes}}`.

        Raises:
            ConversionError: the converter refused a model (the layer and
                the fix are named).

        Example:

        ```python
        trainer.trial_conversion(["float32", "int8"], qat=True, representative_data=train)
        ```
        """

        def quantize(model):
            return engine_for(model).quantize(model, self.quantize_scheme_setting, self.quantize_skip, self.quantize_configs)[0]

        return trial_phases(self.model, conversions, quantize=quantize if qat else None,
                            calibrate=bool(self.calibration_steps), **kwargs)

    def _prune_channels(self, x, channel_pruning, channel_epochs, callbacks, fit_kwargs):
        """The channel-pruning phase, then the narrower model in place of the trained one."""
        self._compile(self.model, "channels")
        channel_x, channel_kwargs = self._distilled("channels", self.model, self.float_model, x, fit_kwargs)
        self._run_phase("channels", self.model, channel_x, channel_epochs, callbacks, [channel_pruning], channel_kwargs)
        self.channel_widths = channel_pruning.kept_channels()
        self.model = self.slim_model = channels_module.shrink(self.model, round_to=channel_pruning.round_to)

    def _train(self, x, channel_phase, schedule, float_epochs, prune_epochs, qat_epochs, callbacks, fit_kwargs):
        channel_pruning, channel_epochs = channel_phase
        if float_epochs:
            self._compile(self.model, "float")
            self._run_phase("float", self.model, x, float_epochs, callbacks, [], fit_kwargs)
        later = schedule is not None or channel_pruning is not None
        self.float_model = clone_with_weights(self.model) if later else self.model
        if channel_pruning is not None:
            self._prune_channels(x, channel_pruning, channel_epochs, callbacks, fit_kwargs)
            if schedule is not None:  # `slim_model` stays dense; the pruning phase zeroes a copy
                self.model = clone_with_weights(self.slim_model)
        if schedule is not None:
            self._pruned_names = {
                layer.name for layer in sparsity.select_layers(self.model, self.prune_policy)
            }
        self._record_sparsity("float", self.model)

        if schedule is not None:
            self._compile(self.model, "prune")
            prune_x, prune_kwargs = self._distilled("prune", self.model, self.float_model, x, fit_kwargs)
            pruning = MagnitudePruning(
                schedule, policy=self.prune_policy, allocation=self.prune_allocation,
                max_layer_sparsity=self.max_layer_sparsity,
            )
            self._run_phase("prune", self.model, prune_x, prune_epochs, callbacks, [pruning], prune_kwargs)
            self.pruned_model = self.model
            self._record_sparsity("prune", self.model)

        if qat_epochs:
            engine = engine_for(self.model)
            qat_model, self.quantize_scheme = engine.quantize(
                self.model, self.quantize_scheme_setting, self.quantize_skip, self.quantize_configs
            )
            self._compile(qat_model, "qat")
            calibration = _calibration_batches(x, fit_kwargs.get("batch_size"))
            if self.calibration_steps and calibration is not None:
                self.calibrated_ranges = engine.calibrate(qat_model, calibration, self.calibration_steps)
            extra = [QuantizerRanges()]  # logs the activation ranges, which decide int8 accuracy
            frozen = engine.frozen_weights_made_trainable(qat_model)
            if frozen:
                extra.append(KeepFrozen(frozen))
            if self.quantize_scheme == "prune_preserve":
                # The prune-preserving scheme keeps Conv2D/Dense zeros but not
                # DepthwiseConv2D ones; this holds every pruned kernel.
                extra.append(PreserveSparsity(policy="all"))
            self.qat_model = qat_model
            qat_x, qat_kwargs = self._distilled("qat", qat_model, self.model, x, fit_kwargs)
            self._run_phase("qat", qat_model, qat_x, qat_epochs, callbacks, extra, qat_kwargs)
            self._record_sparsity("qat", qat_model)

    @property
    def latest_model(self):
        """The model of the last phase that ran (QAT, else the trained model)."""
        return self.qat_model if self.qat_model is not None else self.model

    def summary(self):
        """Returns a JSON-able dict describing the phases that ran.

        Keys: `phases` (names in order), `epochs` (per phase),
        `channel_widths` (`{producer layer: channels kept}` after channel
        pruning; empty without it),
        `final_logs` (per phase, last epoch's logs), `sparsity` (fraction
        of zeros over the kernels the pruning phase selected, after each
        phase; empty without pruning), `model_sparsity` (the same over every
        prunable kernel, frozen ones included), `layer_sparsity` (per layer,
        of the latest model), `pruned_layers`, `quantize_scheme`,
        `calibrated_ranges` (activation ranges set before QAT).
        """
        final_logs = {
            phase: {key: float(values[-1]) for key, values in history.items() if values}
            for phase, history in self.histories.items()
        }
        return {
            "phases": [phase for phase in PHASES if phase in self.histories],
            "epochs": dict(self._epochs),
            "channel_widths": dict(self.channel_widths),
            "final_logs": final_logs,
            "sparsity": dict(self._sparsity),
            "model_sparsity": dict(self._model_sparsity),
            "pruned_layers": sorted(self._pruned_names or ()),
            "layer_sparsity": sparsity.layer_sparsities(self.latest_model),
            "quantize_scheme": self.quantize_scheme,
            "calibrated_ranges": self.calibrated_ranges,
        }
