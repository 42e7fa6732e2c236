"""`EdgeTrainer`'s checks of its arguments and training data, all made before any training.

A mistake found after the float phase would cost that phase's hours, so
`EdgeTrainer.__init__` and `EdgeTrainer.fit` check everything they can up
front, each error naming the argument, what it must be and what was received.
The data checks (`check_inputs`: batching, input shapes, labels against the
loss and the outputs) live in `data_checks` and are re-exported here.
"""

import numbers
import os

import tensorflow as tf

from edgekeras import distribute, quantization, sparsity
from edgekeras.backend import KERAS_MODULES, check_model, for_model
from edgekeras.callbacks import ChannelPruning
from edgekeras.schedules import PruningSchedule
from edgekeras.trainers.data_checks import check_inputs

__all__ = ["check_channels", "check_epochs", "check_fit_arguments", "check_inputs", "check_strategy", "check_trainer_arguments"]

# `fit` keywords that EdgeTrainer sets itself for each phase.
_PHASE_KEYWORDS = ("epochs", "initial_epoch", "callbacks")


def _check_phase_model(model):
    check_model(model)
    # The phases end in QAT and TFLite files, which need TensorFlow.
    for_model(model).check_tensorflow()
    if not for_model(model).is_graph_model(model):
        raise ValueError(
            "Argument `model` must be a functional or Sequential model: EdgeTrainer's QAT "
            "phase rebuilds it layer by layer. Received: "
            f"model={model.name!r} of subclassed type {type(model).__name__}. For a subclassed "
            "model use model.fit(..., callbacks=[edgekeras.callbacks.MagnitudePruning(...)])."
        )


def check_trainer_arguments(model, loss, prune_policy, quantize_scheme, compile_kwargs, calibration_steps, backup_dir):
    """Checks `EdgeTrainer`'s arguments other than the optimizer and the strategy.

    Args:
        model, loss, prune_policy, quantize_scheme, compile_kwargs,
            calibration_steps, backup_dir: as for `EdgeTrainer`.

    Raises:
        TypeError: `model` is not a Keras model.
        BackendError: a Keras 3 model on another backend than TensorFlow.
        ValueError: an argument is out of range (named in the message).

    Example:

    ```python
    check_trainer_arguments(model, "sparse_categorical_crossentropy", "all", "auto", None, 16, None)
    ```
    """
    _check_phase_model(model)
    if loss is None:
        raise ValueError("Argument `loss` is required, e.g. loss='sparse_categorical_crossentropy'. Received: loss=None")
    sparsity.check_policy(prune_policy, "prune_policy")
    if quantize_scheme not in quantization.SCHEMES:
        raise ValueError(
            f"Argument `quantize_scheme` must be one of {quantization.SCHEMES}. "
            f"Received: quantize_scheme={quantize_scheme!r}"
        )
    if compile_kwargs is not None and not isinstance(compile_kwargs, dict):
        raise ValueError(
            f"Argument `compile_kwargs` must be a dict of model.compile keywords. "
            f"Received: compile_kwargs={compile_kwargs!r}"
        )
    if calibration_steps != 0 and (
        isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int) or calibration_steps < 2
    ):
        raise ValueError(
            "Argument `calibration_steps` must be 0 (off) or an integer >= 2. "
            f"Received: calibration_steps={calibration_steps!r}"
        )
    if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
        raise ValueError(
            "Argument `backup_dir` must be None or a directory path for the phases' checkpoints. "
            f"Received: backup_dir={backup_dir!r}"
        )


def check_strategy(model, strategy):
    """Returns the strategy every phase runs under: `strategy`, or the one that holds `model`.

    Args:
        model: the tf_keras model to train.
        strategy: a `tf.distribute.Strategy`, or None.

    Returns:
        A `tf.distribute.Strategy` whose scope holds the model's variables.

    Raises:
        ValueError: `strategy` is not a strategy, or the model was built
            outside its scope.

    Example:

    ```python
    strategy = check_strategy(model, None)
    ```
    """
    if strategy is None:
        strategy = distribute.strategy_of(model)
    elif not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(
            "Argument `strategy` must be a tf.distribute.Strategy such as "
            f"tf.distribute.MirroredStrategy(). Received: strategy={strategy!r}"
        )
    distribute.check_model_in_scope(model, strategy)
    return strategy


def check_epochs(value, argument):
    """Returns `value` as an int if it is an integer >= 0, else raises a ValueError naming `argument`.

    Args:
        value: a number of epochs.
        argument: the argument's name, for the message.

    Returns:
        `value` as an int.

    Raises:
        ValueError: `value` is not an integer >= 0 (booleans included).

    Example:

    ```python
    float_epochs = check_epochs(3, "float_epochs")
    ```
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"Argument `{argument}` must be an integer >= 0. Received: {argument}={value!r}")
    return int(value)


def _check_prune(prune, prune_epochs):
    if prune is not None and not isinstance(prune, PruningSchedule):
        if isinstance(prune, bool) or not isinstance(prune, numbers.Real) or not 0.0 < prune < 1.0:
            raise ValueError(
                "Argument `prune` must be None, a target sparsity in (0, 1) or a pruning schedule "
                f"(edgekeras.schedules). Received: prune={prune!r}"
            )
    _check_paired("prune", prune, "prune_epochs", prune_epochs, "prune", "0.75")


def _check_paired(argument, value, epochs_argument, epochs, doing, example):
    """A phase's setting and its epochs: both given, or neither."""
    if value is not None and epochs == 0:
        raise ValueError(
            f"Argument `{epochs_argument}` must be a positive integer when `{argument}` is set. "
            f"Received: {epochs_argument}={epochs}"
        )
    if value is None and epochs:
        raise ValueError(
            f"Argument `{argument}` must be set to {doing} for {epochs_argument}={epochs} epochs, "
            f"e.g. {argument}={example}. Received: {argument}=None"
        )


def check_channels(channels, channel_epochs):
    """Checks `EdgeTrainer.fit`'s `channels` and `channel_epochs`.

    Args:
        channels: None, a fraction of channels to remove in (0, 1), a dict
            of group name -> channels kept, or a `ChannelPruning` callback.
        channel_epochs: epochs of the channel-pruning phase.

    Returns:
        `channel_epochs` as an int.

    Raises:
        ValueError: a bad argument (named in the message).

    Example:

    ```python
    channel_epochs = check_channels(0.5, 2)
    ```
    """
    channel_epochs = check_epochs(channel_epochs, "channel_epochs")
    valid = (
        channels is None
        or isinstance(channels, (ChannelPruning, dict))
        or (isinstance(channels, numbers.Real) and not isinstance(channels, bool) and 0.0 < channels < 1.0)
    )
    if not valid:
        raise ValueError(
            "Argument `channels` must be None, the fraction of each group's channels to remove in (0, 1), a dict "
            "of group name -> channels kept (e.g. from edgekeras.channels.allocate) or an "
            f"edgekeras.callbacks.ChannelPruning. Received: channels={channels!r}"
        )
    _check_paired("channels", channels, "channel_epochs", channel_epochs, "prune channels", "0.5")
    return channel_epochs


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    kinds = tuple(library.callbacks.Callback for library in KERAS_MODULES)
    if isinstance(callbacks, kinds) or not all(isinstance(c, kinds) for c in callbacks):
        raise ValueError(f"Argument `callbacks` must be a list of Keras callbacks. Received: callbacks={callbacks!r}")
    return callbacks


def check_fit_arguments(float_epochs, prune, prune_epochs, qat_epochs, callbacks, fit_kwargs, channel_epochs=0):
    """Checks the arguments of `EdgeTrainer.fit`; returns the epochs as ints and the callbacks as a list.

    Args:
        float_epochs, prune, prune_epochs, qat_epochs, callbacks: as for
            `EdgeTrainer.fit`.
        fit_kwargs: the other `keras.Model.fit` keywords.
        channel_epochs: the channel-pruning phase's epochs, checked by
            `check_channels`.

    Returns:
        `(float_epochs, prune_epochs, qat_epochs, callbacks)`.

    Raises:
        ValueError: a bad argument (named in the message).

    Example:

    ```python
    float_epochs, prune_epochs, qat_epochs, callbacks = check_fit_arguments(3, 0.75, 2, 1, None, {})
    ```
    """
    float_epochs = check_epochs(float_epochs, "float_epochs")
    prune_epochs = check_epochs(prune_epochs, "prune_epochs")
    qat_epochs = check_epochs(qat_epochs, "qat_epochs")
    _check_prune(prune, prune_epochs)
    if float_epochs + prune_epochs + qat_epochs + channel_epochs == 0:
        raise ValueError(
            "Arguments `float_epochs`, `channel_epochs`, `prune_epochs` and `qat_epochs` are all 0: nothing to "
            "train. Received: float_epochs=0, channel_epochs=0, prune_epochs=0, qat_epochs=0"
        )
    callbacks = _check_callbacks(callbacks)
    for key in _PHASE_KEYWORDS:
        if key in fit_kwargs:
            raise ValueError(
                f"Argument `{key}` is set by EdgeTrainer per phase; use float_epochs / "
                f"prune_epochs / qat_epochs. Received: {key}={fit_kwargs[key]!r}"
            )
    return float_epochs, prune_epochs, qat_epochs, callbacks
