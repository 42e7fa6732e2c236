"""Config sections -> library objects: data, model, trainer, pruning schedule, callbacks.

Each function turns the keys of a validated config into the arguments of one
library call, so `edgekeras.app.pipeline` and `edgekeras.app.tune` read as
the sequence of steps they run, not as argument plumbing.

Example:

```python
from edgekeras.app.config import load_config
from edgekeras.app.factories import build_model, load_data

config = load_config("configs/demo.toml")
data = load_data(config.data, seed=config.run.seed, model=config.model)
model = build_model(config.model, data.num_classes, config.data.image_size)
```
"""

import importlib
import inspect
import os
import sys

from edgekeras.app.inputs import ModelSection, input_normalization
from edgekeras.app.sections import ConfigError
from edgekeras.backend import check_model, for_model
from edgekeras.data import load_image_data
from edgekeras.distillation import Distillation
from edgekeras.folders import load_image_folders
from edgekeras.models import build_transfer_model, flatten, freeze_before, is_nested, load_model
from edgekeras.schedules import ConstantSparsity, polynomial_ramp
from edgekeras.trainers import EdgeTrainer, phase_optimizer

__all__ = ["resolve_weights", "load_data", "build_model", "make_trainer", "prune_schedule", "tensorboard_callbacks"]

_MODEL_FILE_EXTENSIONS = (".h5", ".hdf5", ".keras")


def resolve_weights(weights, architecture="mobilenet_v2"):
    """Maps the config's `model.weights` to `build_transfer_model`'s argument.

    "imagenet" uses a local file when one is named by
    $EDGEKERAS_WEIGHTS_<ARCHITECTURE> (e.g. $EDGEKERAS_WEIGHTS_RESNET50) or,
    for mobilenet_v2, $EDGEKERAS_WEIGHTS (offline machines); "none" means
    random initialization, anything else is a path.

    Args:
        weights: the value of `model.weights`.
        architecture: the architecture the weights are for.

    Returns:
        A path, "imagenet" (download), or None (random initialization).

    Example:

    ```python
    resolve_weights("none")  # None
    ```
    """
    if weights.lower() == "none":
        return None
    if weights == "imagenet":
        variables = [f"EDGEKERAS_WEIGHTS_{architecture.upper()}"]
        if architecture == "mobilenet_v2":
            variables.append("EDGEKERAS_WEIGHTS")
        for variable in variables:
            local = os.environ.get(variable, "")
            if local and local != "imagenet" and os.path.isfile(local):
                return local
    return weights


def load_data(section, seed, model=None):
    """Loads the data a config's [data] section describes, scaled for the [model] section's model.

    Args:
        section: a `DataSection`.
        seed: seed of shuffling and augmentation.
        model: the `ModelSection`, whose architecture sets the normalization
            when `data.normalization` is "auto" (default: MobileNetV2's).

    Returns:
        An `edgekeras.images.ImageData` (`edgekeras.data.load_image_data`
        for a TFDS dataset, `edgekeras.folders.load_image_folders` for a
        directory).
    """
    options = dict(
        image_size=section.image_size,
        batch_size=section.batch_size,
        validation_size=section.validation_size,
        test_size=section.test_size or None,
        augment=section.augment,
        shuffle_buffer=section.shuffle_buffer,
        seed=seed,
        max_train_examples=section.max_train_examples or None,
        normalization=input_normalization(section, model or ModelSection()),
    )
    if section.directory:
        return load_image_folders(section.directory, test_directory=section.test_directory or None, **options)
    return load_image_data(
        section.resolved_dataset, data_dir=section.data_dir or None, download=section.download, **options
    )


def _config_error(error, keys):
    """A library argument error as a `ConfigError` that names the config keys (`keys`: argument -> key)."""
    message = str(error)
    for argument, key in keys.items():
        message = message.replace(f"Argument `{argument}`", f"Config key `{key}`")
        message = message.replace(f"Received: {argument}=", f"Received: {key}=")
    return ConfigError(message)


def build_model(section, num_classes, image_size, *, hp=None):
    """Builds the model a config's [model] section describes.

    Args:
        section: a `ModelSection`.
        num_classes: classes of the classifier.
        image_size: side of the square input.
        hp: the trial's `keras_tuner.HyperParameters`, for a factory that
            takes `hp` (None: fresh ones, so it builds with its defaults).

    Returns:
        A flat functional model of `section.keras`: a transfer model
        (`edgekeras.models.build_transfer_model`), the factory's model or
        the file's, flattened if it was nested.

    Raises:
        ConfigError: the factory or file cannot be used (missing, not a
            functional model, another input size or number of classes), or
            `model.trainable_from` names no layer.
    """
    if section.kind == "architecture":
        architecture = section.resolved_architecture
        try:
            return build_transfer_model(
                num_classes,
                image_size,
                architecture=architecture,
                alpha=section.alpha,
                weights=resolve_weights(section.weights, architecture),
                trainable_from=section.trainable_from or None,
                train_batchnorm=section.train_batchnorm,
                dropout=section.dropout,
                keras=section.keras,
            )
        except ValueError as error:
            if not str(error).startswith("Argument `trainable_from`"):
                raise
            raise _config_error(error, {"trainable_from": "model.trainable_from"}) from error
    model = _factory_model(section, num_classes, image_size, hp) if section.kind == "factory" else _file_model(section)
    model = _check_user_model(model, section, num_classes, image_size)
    if section.trainable_from != "auto":
        try:
            freeze_before(model, section.trainable_from, train_batchnorm=section.train_batchnorm)
        except ValueError as error:
            raise _config_error(error, {"trainable_from": "model.trainable_from"}) from error
    return model


def _import_module(name, reference):
    # `edgekeras` is a console script, so the current directory is not on
    # sys.path; a module there is what `factory = "mymodels:build"` means.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(
            f"Config key `model.factory` names a module that cannot be imported ({type(error).__name__}: {error}). "
            f"Received: model.factory={reference!r}. Put {name.split('.')[0]!r} in the current directory or on "
            "PYTHONPATH."
        ) from error
    finally:
        if added:
            sys.path.remove(cwd)


def _factory_model(section, num_classes, image_size, hp):
    """Calls the factory with the keyword arguments it takes (see `ModelSection.factory`)."""
    reference = section.factory
    module_name, _, function_name = reference.partition(":")
    function = getattr(_import_module(module_name, reference), function_name, None)
    if not callable(function):
        raise ConfigError(
            f"Config key `model.factory` must name a function of module {module_name!r}, which has no callable "
            f"{function_name!r}. Received: model.factory={reference!r}"
        )
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    kwargs = {key: value for key, value in (("num_classes", num_classes), ("image_size", image_size))
              if takes_any or key in parameters}
    if "hp" in parameters:
        if hp is None:
            import keras_tuner  # only a factory that takes `hp` needs it, outside a search

            # Fresh hyperparameters: each hp.Choice(...) gives its default.
            hp = keras_tuner.HyperParameters()
        kwargs["hp"] = hp
    refused = [key for key in section.factory_args if not takes_any and key not in parameters]
    if refused:
        raise ConfigError(
            f"Config key `model.factory_args` has arguments the factory does not take: {refused}. Received: "
            f"model.factory_args={section.factory_args!r}; {reference} takes {list(parameters)}."
        )
    return function(**kwargs, **section.factory_args)


def _file_model(section):
    path = section.file
    if not os.path.exists(path):
        raise ConfigError(f"Config key `model.file` names nothing on disk. Received: model.file={path!r}")
    if not os.path.isdir(path) and not path.lower().endswith(_MODEL_FILE_EXTENSIONS):
        raise ConfigError(
            "Config key `model.file` must be a .h5 or .keras file or a SavedModel directory. "
            f"Received: model.file={path!r}"
        )
    return load_model(path)


def _where(section):
    return f"model.{section.kind}", getattr(section, section.kind)


def _check_user_model(model, section, num_classes, image_size):
    """The factory's or file's model, flat, checked against the data; ConfigError if it does not fit."""
    key, value = _where(section)
    check_model(model, f"the model of `{key}`")
    backend = for_model(model)
    if backend.name != section.keras:
        raise ConfigError(
            f"Config key `{key}` gives a {backend.name} model, but `model.keras` says the run uses "
            f"{section.keras}. Received: {key}={value!r}, model.keras={section.keras!r}. Set "
            f'model.keras = "{backend.name}", or build the model with {section.keras}.'
        )
    if not backend.is_graph_model(model):
        raise ConfigError(
            f"Config key `{key}` must give a functional or Sequential {backend.name} model with a known input "
            f"shape (edgekeras run splits, clones and quantizes its graph). Received: {key}={value!r}, a "
            f"{type(model).__name__} model. Build it with keras.Input(...) and the functional API."
        )
    model = flatten(model) if is_nested(model) else model
    expected = (None, image_size, image_size, 3)
    if isinstance(model.input_shape, list) or tuple(model.input_shape) != expected:
        raise ConfigError(
            f"Config key `{key}` gives a model whose input shape is {model.input_shape}, but the data are "
            f"{image_size} px RGB images {expected}. Received: {key}={value!r}, data.image_size={image_size}. "
            "Set `data.image_size` to the model's input size, or build the model for `image_size`."
        )
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs != num_classes:
        raise ConfigError(
            f"Config key `{key}` gives a model with {outputs} outputs (output shape {model.output_shape}), but the "
            f"data have {num_classes} classes. Received: {key}={value!r}. Give it one softmax output per class "
            "(a factory gets `num_classes`)."
        )
    if getattr(model.layers[-1], "activation", None) is backend.keras.activations.linear:
        raise ConfigError(
            f"Config key `{key}` gives a model whose last layer {model.layers[-1].name!r} has no activation, but "
            f"edgekeras trains with sparse categorical cross-entropy on probabilities. Received: {key}={value!r}. "
            "End the model in a softmax (activation=\"softmax\")."
        )
    return model


def make_trainer(model, config, float_steps, strategy, backup_dir, prune_steps=None, qat=False, qat_steps=None,
                 channel_steps=None):
    """The `EdgeTrainer` of every training phase of a run.

    Args:
        model: the model to train (the full model, or the trainable top on
            cached activations).
        config: the run's `Config`: optimizer and learning rates of the
            three phases, `qat.skip_layers`, `prune.policy`.
        float_steps: optimizer steps of the float phase, which a "cosine"
            `train.lr_schedule` decays over (None: no decay).
        prune_steps: optimizer steps of the pruning phase, which a "cosine"
            `prune.lr_schedule` decays over after its warm-up (None: no decay).
        qat: the trainer is the QAT stage's (its distillation settings come
            from [qat], else from [prune]).
        qat_steps: optimizer steps of the QAT phase, which a "cosine"
            `qat.lr_schedule` decays over (None: no decay).
        channel_steps: optimizer steps of the channel-pruning phase, which a
            "cosine" `channels.lr_schedule` decays over after its warm-up; set,
            the trainer is the [channels] stage's (its distillation settings
            come from [channels]).
        strategy: the `tf.distribute` strategy to train under.
        backup_dir: where `BackupAndRestore` checkpoints go, or None.

    Returns:
        An `EdgeTrainer`.
    """
    rates = {"float": config.train.learning_rate, "prune": config.prune.learning_rate, "qat": config.qat.learning_rate,
             "channels": config.channels.learning_rate}
    decay, warmup = {}, {}
    if config.train.lr_schedule == "cosine" and float_steps:
        decay["float"] = float_steps
    if config.prune.lr_schedule == "cosine" and prune_steps:
        decay["prune"] = prune_steps
        warmup["prune"] = int(prune_steps * config.prune.warmup_fraction)
    if config.qat.lr_schedule == "cosine" and qat_steps:
        decay["qat"] = qat_steps
    if config.channels.lr_schedule == "cosine" and channel_steps:
        decay["channels"] = channel_steps
        warmup["channels"] = int(channel_steps * config.channels.warmup_fraction)
    return EdgeTrainer(
        model,
        backup_dir=backup_dir,
        strategy=strategy,
        quantize_skip=config.qat.skip_layers,
        optimizer=phase_optimizer(rates, kind=config.train.optimizer, decay_steps=decay, warmup_steps=warmup),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        prune_policy=config.prune.policy,
        prune_allocation=config.prune.allocation,
        max_layer_sparsity=config.prune.max_layer_sparsity or None,
        distillation=_distillation(config, "qat" if qat else "channels" if channel_steps else "prune"),
    )


def _distillation(config, phase):
    """The `Distillation` of `phase` ("channels", "prune" or "qat") when its section sets `distill_weight`, else None."""
    section = getattr(config, phase)
    if not section.distill_weight:
        return None
    # The channel stage's trainer may prune the slimmed model too: both learn from the dense float model.
    phases = ("channels", "prune") if phase == "channels" else (phase,)
    return Distillation(temperature=section.temperature, weight=section.distill_weight, phases=phases)


def prune_schedule(section, steps_per_epoch):
    """The pruning schedule a config's [prune] section describes.

    Args:
        section: a `PruneSection`.
        steps_per_epoch: optimizer steps per pruning epoch.

    Returns:
        An `edgekeras.schedules.PruningSchedule` over the whole pruning phase.
    """
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


def tensorboard_callbacks(log_dir, name, chief, model):
    """`[TensorBoard]` of `model`'s Keras logging to `log_dir/name` on the chief, `[]` elsewhere.

    Only the chief writes logs: workers would write the same event files.
    """
    return [for_model(model).keras.callbacks.TensorBoard(log_dir=os.path.join(log_dir, name))] if chief else []
