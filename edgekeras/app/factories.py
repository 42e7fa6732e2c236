"""Config sections -> library objects: data, model, trainer, pruning schedule, callbacks.

Each function turns the keys of a validated config into the arguments of one
library call, so `edgekeras.app.pipeline` and `edgekeras.app.tune` read as
the sequence of steps they run, not as argument plumbing.

Example:

```python
from edgekeras.app.config import load_config
from edgekeras.app.factories import build_model, load_data

config = load_config("configs/demo.toml")
data = load_data(config.data, seed=config.run.seed)
model = build_model(config.model, data.num_classes, config.data.image_size)
```
"""

import os

from edgekeras.compat import keras
from edgekeras.data import load_image_data
from edgekeras.models import build_transfer_model
from edgekeras.schedules import ConstantSparsity, polynomial_ramp
from edgekeras.trainers import EdgeTrainer, phase_optimizer

__all__ = ["resolve_weights", "load_data", "build_model", "make_trainer", "prune_schedule", "tensorboard_callbacks"]


def resolve_weights(weights):
    """Maps the config's `model.weights` to `build_transfer_model`'s argument.

    "imagenet" uses $EDGEKERAS_WEIGHTS when it names a local file (offline
    machines), "none" means random initialization, anything else is a path.

    Args:
        weights: the value of `model.weights`.

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
        local = os.environ.get("EDGEKERAS_WEIGHTS", "")
        if local and local != "imagenet" and os.path.isfile(local):
            return local
    return weights


def load_data(section, seed):
    """Loads the data a config's [data] section describes (`edgekeras.data.load_image_data`).

    Args:
        section: a `DataSection`.
        seed: seed of shuffling and augmentation.

    Returns:
        An `edgekeras.data.ImageData`.
    """
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
    """Builds the transfer model a config's [model] section describes.

    Args:
        section: a `ModelSection`.
        num_classes: classes of the classifier.
        image_size: side of the square input.

    Returns:
        A tf_keras model (`edgekeras.models.build_transfer_model`).
    """
    return build_transfer_model(
        num_classes,
        image_size,
        alpha=section.alpha,
        weights=resolve_weights(section.weights),
        trainable_from=section.trainable_from or None,
        train_batchnorm=section.train_batchnorm,
        dropout=section.dropout,
    )


def make_trainer(model, config, float_steps, strategy, backup_dir):
    """The `EdgeTrainer` of every training phase of a run.

    Args:
        model: the model to train (the full model, or the trainable top on
            cached activations).
        config: the run's `Config`: optimizer and learning rates of the
            three phases, `qat.skip_layers`, `prune.policy`.
        float_steps: optimizer steps of the float phase, which a "cosine"
            `train.lr_schedule` decays over (None: no decay).
        strategy: the `tf.distribute` strategy to train under.
        backup_dir: where `BackupAndRestore` checkpoints go, or None.

    Returns:
        An `EdgeTrainer`.
    """
    rates = {"float": config.train.learning_rate, "prune": config.prune.learning_rate, "qat": config.qat.learning_rate}
    decay = float_steps if config.train.lr_schedule == "cosine" else None
    return EdgeTrainer(
        model,
        backup_dir=backup_dir,
        strategy=strategy,
        quantize_skip=config.qat.skip_layers,
        optimizer=phase_optimizer(rates, kind=config.train.optimizer, float_decay_steps=decay),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        prune_policy=config.prune.policy,
    )


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


def tensorboard_callbacks(log_dir, name, chief):
    """`[TensorBoard]` logging to `log_dir/name` on the chief, `[]` elsewhere.

    Only the chief writes logs: workers would write the same event files.
    """
    return [keras.callbacks.TensorBoard(log_dir=os.path.join(log_dir, name))] if chief else []
