"""What the float and pruning phases of `edgekeras run` train on.

With `train.cache_features`, the frozen part of the model runs once and the
phases train the trainable top on its cached activations (`cache_at_cut`).
The pruning phase may fine-tune more of the model than the float phase
(`prune.trainable_from`: a second, earlier cut, cached the same way) and may
learn from the float model's outputs as well as the labels
(`prune.distill_weight`: the teacher's outputs are computed once over the
cached activations and packed with the labels). `pruning_inputs` assembles
that; `warn_if_pruning_little` says when frozen layers would keep most of the
weights dense.

Example:

```python
top, train, validation, arrays = cache_at_cut(context, "", "model.trainable_from")
```
"""

import numpy as np
import tensorflow as tf

from edgekeras import distillation, features, sparsity
from edgekeras.app.config import ConfigError
from edgekeras.app.state import log
from edgekeras.distribute import shard_by_data
from edgekeras.models import freeze_before, split_model

__all__ = ["cache_at_cut", "caches_features", "pruning_inputs", "warn_if_pruning_little"]


def caches_features(config):
    """Whether the float and pruning phases train on cached activations (`train.cache_features`).

    "auto" caches on a machine without a GPU: there the frozen part's forward
    pass dominates every epoch, and computing it once pays for the fixed
    augmentation passes. With a GPU that pass is cheap, and training on the
    images keeps per-epoch augmentation (tf.data prepares the batches on the
    CPU while the GPU trains).
    """
    setting = config.train.cache_features
    if setting == "auto":
        return not tf.config.list_physical_devices("GPU")
    return setting


def cache_at_cut(context, key, setting):
    """`(top, train data, validation data, (train features, labels))` on the frozen part's cached activations.

    The model's current `trainable` flags set the cut. Returns None when
    nothing frozen is worth caching (only preprocessing before the cut).
    `key` prefixes the cache files; `setting` names the config key that set the cut.
    """
    config, data, state = context.config, context.data, context.state
    try:
        prefix, top, cut = split_model(context.model)
    except ValueError as error:  # a skip connection crosses the cut, or nothing trains
        raise ConfigError(
            f"Config key `{setting}` does not leave a model whose frozen part can be cached: {error} "
            f"Received: {setting}={_config_value(config, setting)!r}, train.cache_features=true"
        ) from error
    if prefix is None or not any(hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel") for layer in prefix.layers):
        # Nothing frozen, or only preprocessing (a Rescaling layer before a
        # base that trains whole): its activations would be the images.
        return None
    engine, threads, batch_size = config.train.cache_engine, config.evaluate.num_threads, config.data.batch_size
    log(f"caching the activations entering {cut!r} ({engine})")
    frozen = context.local(prefix)
    train_features, labels = state.cached_arrays(f"{key}train", lambda: features.cache_features(
        frozen, data.train, engine=engine, passes=config.train.cache_passes,
        num_threads=threads, progress=context.progress, description=f"cache {key}train",
    ))
    train_data = shard_by_data(features.array_dataset(train_features, labels, batch_size, shuffle_seed=config.run.seed))
    validation_data = None
    if data.validation is not None:
        validation = state.cached_arrays(f"{key}validation", lambda: features.cache_features(
            frozen, data.validation, engine=engine, num_threads=threads, progress=context.progress,
            description=f"cache {key}validation",
        ))
        validation_data = shard_by_data(features.array_dataset(*validation, batch_size))
    log(f"cached {train_features.shape[0]} activations of shape {train_features.shape[1:]}")
    return top, train_data, validation_data, (train_features, labels)


def _config_value(config, key):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def warn_if_pruning_little(context):
    """Logs a warning when frozen layers, never pruned, hold most of the weights the policy would prune."""
    config = context.config
    every = sparsity.select_weights(context.model, config.prune.policy, include_frozen=True)
    frozen = sum(int(np.prod(w.shape)) for layer, w in every if not layer.trainable)
    total = sum(int(np.prod(w.shape)) for _, w in every)
    if total and frozen > total / 2:
        log(
            f"WARNING: {frozen / total:.0%} of the weights `prune.policy` selects are in frozen layers, which are "
            "never pruned (nothing would fine-tune them back): the pruned model will be barely smaller. Set "
            "`prune.trainable_from` to an earlier layer to fine-tune and prune them in the pruning phase."
        )


def pruning_inputs(context, teacher):
    """`(model, train data, validation data)` of the pruning phase when it differs from the float phase's.

    With `prune.trainable_from`, the layers from there on are made trainable
    (and the activations before them cached); with `prune.distill_weight`,
    each training label is packed with the float model's outputs (computed
    once over cached activations, else per batch by `teacher`).
    """
    config = context.config
    model, train_data, validation_data, arrays = (
        context.train_model, context.train_data, context.validation_data, context.train_arrays,
    )
    if config.prune.trainable_from:
        try:
            freeze_before(context.model, config.prune.trainable_from, train_batchnorm=config.model.train_batchnorm)
        except ValueError as error:
            raise ConfigError(
                f"Config key `prune.trainable_from` must name a layer of the model. {error} "
                f"Received: prune.trainable_from={config.prune.trainable_from!r}"
            ) from error
        model, train_data, validation_data, arrays = context.model, context.data.train, context.data.validation, None
        cached = cache_at_cut(context, "prune_", "prune.trainable_from") if caches_features(config) else None
        if cached is not None:
            model, train_data, validation_data, arrays = cached
    if config.prune.distill_weight:
        if arrays is not None:
            # The pruning model has the float weights now: its outputs on the
            # cached activations are the teacher's, computed once.
            packed = distillation.pack_labels(arrays[1], distillation.teacher_outputs(model, arrays[0]))
            train_data = shard_by_data(
                features.array_dataset(arrays[0], packed, config.data.batch_size, shuffle_seed=config.run.seed)
            )
        else:
            train_data = distillation.with_teacher(train_data, teacher)
        log(f"distilling from the float model (weight {config.prune.distill_weight}, temperature "
            f"{config.prune.temperature})")
    return model, train_data, validation_data
