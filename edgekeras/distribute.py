"""`tf.distribute` strategies for edgekeras training: choosing one, and who writes files.

edgekeras scales out with TensorFlow's own engine, never a home-made one:

- `MirroredStrategy` across the local devices (GPUs, or logical CPU devices),
- `MultiWorkerMirroredStrategy` across processes or hosts described by the
  `TF_CONFIG` environment variable (one process per worker, each started with
  its own `TF_CONFIG`; see docs/guides/scaling.md).

Every phase works under a strategy because edgekeras' pruning masks
variables instead of wrapping layers: the masks are created inside the
strategy's scope (mirrored like the weights), recomputed from weights that
all replicas hold identically, and applied in cross-replica context, so every
replica and every worker prunes the same positions at the same step. The QAT
model is built inside the same scope by `EdgeTrainer`.

Files are written once: `is_chief()` tells the process that exports and
reports; the others train and write nothing that the chief also writes.

Example:

```python
from edgekeras import keras
from edgekeras.distribute import get_strategy
from edgekeras.trainers import EdgeTrainer

strategy = get_strategy("mirrored")
with strategy.scope():
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(4,))])
trainer = EdgeTrainer(model, "adam", "mse", strategy=strategy)
```
"""

import json
import os

import tensorflow as tf

from edgekeras.backend import for_model
from edgekeras.choices import STRATEGIES

__all__ = [
    "STRATEGIES",
    "get_strategy",
    "is_chief",
    "worker_id",
    "strategy_of",
    "check_model_in_scope",
    "shard_by_data",
]


def get_strategy(name="default", devices=None, communication="auto"):
    """Returns the `tf.distribute.Strategy` a name stands for.

    Args:
        name: `"default"` (no distribution: the current strategy, usually the
            default one), `"mirrored"` (`MirroredStrategy` over `devices`, or
            every local GPU, else the CPU) or `"multi_worker"`
            (`MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`).
        devices: for `"mirrored"`, device names such as
            `["/gpu:0", "/gpu:1"]`; None takes all local GPUs (else the CPU).
        communication: for `"multi_worker"`, the collective implementation:
            `"auto"`, `"ring"` (gRPC, works on CPUs) or `"nccl"` (GPUs).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name or communication, devices given for
            another strategy, or `"multi_worker"` without a valid `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Argument `name` must be one of {STRATEGIES}. Received: name={name!r}")
    if devices is not None and name != "mirrored":
        raise ValueError(
            f"Argument `devices` only applies to the 'mirrored' strategy. Received: devices={devices!r} "
            f"with name={name!r}"
        )
    if devices is not None and (
        isinstance(devices, str) or not devices or not all(isinstance(d, str) and d for d in devices)
    ):
        raise ValueError(
            "Argument `devices` must be a non-empty list of device names such as ['/gpu:0', '/gpu:1']. "
            f"Received: devices={devices!r}"
        )
    implementations = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }
    if communication not in implementations:
        raise ValueError(
            f"Argument `communication` must be one of {tuple(implementations)}. "
            f"Received: communication={communication!r}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    _check_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementations[communication])
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG", "")
    how = (
        'Set TF_CONFIG in each worker\'s environment, e.g. TF_CONFIG=\'{"cluster": {"worker": '
        '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' (index 1 on the second).'
    )
    if not raw:
        raise ValueError(f"The 'multi_worker' strategy needs the TF_CONFIG environment variable. Received: TF_CONFIG unset. {how}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}). Received: TF_CONFIG={raw!r}. {how}") from error
    if not isinstance(config, dict):
        config = {}
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG needs a `cluster` and a `task` with `type` and `index`. Received: TF_CONFIG={raw!r}. {how}")
    members = cluster.get(task["type"])
    index = task["index"]
    if not isinstance(members, list) or isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not in its cluster {cluster!r}. Received: TF_CONFIG={raw!r}. {how}"
        )


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None, {}
    try:
        cluster = resolver.cluster_spec().as_dict()
    except (AttributeError, ValueError):
        cluster = {}
    return resolver.task_type, resolver.task_id, cluster


def is_chief(strategy=None):
    """True for the one process that writes the shared files (exports, reports).

    That is every single-process run, the `chief` task of a multi-worker
    cluster, or worker 0 of a cluster without a chief (Keras' convention).
    """
    task_type, task_id, cluster = _task(strategy or tf.distribute.get_strategy())
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_id(strategy=None):
    """`"<type>_<index>"` of this process in a cluster, `"chief"` when alone."""
    task_type, task_id, _ = _task(strategy or tf.distribute.get_strategy())
    return "chief" if task_type is None else f"{task_type}_{task_id}"


def strategy_of(model):
    """The strategy `model`'s variables were created under (the current one if none)."""
    for variable in for_model(model).tf_variables(model):
        strategy = getattr(variable, "_distribute_strategy", None)
        if strategy is not None:
            return strategy
    return tf.distribute.get_strategy()


def check_model_in_scope(model, strategy, argument="model"):
    """Raises a clear error when `model`'s variables were not made in `strategy.scope()`.

    Keras would otherwise either refuse at `compile` with a long message, or
    (for a model built under no strategy) train on one device only.
    """
    outside = [v.name for v in for_model(model).tf_variables(model) if not strategy.extended.variable_created_in_scope(v)]
    if outside:
        raise ValueError(
            f"Argument `{argument}` was built outside the scope of the {type(strategy).__name__} it is "
            f"trained with ({len(outside)} of {len(model.weights)} variables, e.g. {outside[0]!r}). "
            "Build the model inside `with strategy.scope():` and pass the same strategy. "
            f"Received: {argument}={model.name!r}"
        )


def shard_by_data(dataset):
    """Has a multi-worker strategy shard `dataset` by elements, not by files.

    tf.data's default (AUTO) shards by input file first, which fails or
    unbalances workers when a dataset has fewer files than workers (a small
    TFDS split, a cache in memory, a Python generator of cached activations).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
