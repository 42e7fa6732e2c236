"""TensorBoard HParams records of an `EdgeTuner` search.

keras-tuner writes TensorBoard HParams only from its default `run_trial`
through the (Keras 3) TensorBoard callback; `EdgeTuner` overrides `run_trial`,
so this module writes them itself with `tensorboard.plugins.hparams.api`: the
experiment (`write_hparams_config`, once per search, at the log root) and one
session per trial (`write_trial_hparams`, in the trial's own log folder, beside
its training curves), with the deployed-model metrics in `METRICS`.
`read_hparams` reads them back from the event files, as the HParams dashboard
does.

Example:

```python
from edgekeras.tuning import read_hparams

print(read_hparams("runs/tune/search/logs"))
```
"""

import glob
import math
import os

__all__ = [
    "METRICS",
    "hparams_domains",
    "write_hparams_config",
    "write_trial_hparams",
    "read_hparams",
]

# (tag, display name, description) of the metrics each trial logs; the tags
# are also the names `EdgeTuner` reports to the oracle.
METRICS = (
    ("score", "score", "Objective: deployed accuracy, below 0 when over budget"),
    ("val_tflite_accuracy", "val accuracy (.tflite)", "Top-1 accuracy of the deployed .tflite on the validation split"),
    (
        "val_keras_accuracy",
        "val accuracy (Keras)",
        "Top-1 accuracy of the Keras model on the validation split after the last phase that "
        "validated (before QAT when features are cached)",
    ),
    ("sparsity", "sparsity (.tflite)", "Fraction of zero conv/dense weights in the .tflite file"),
    ("gzip_bytes", "gzip size (bytes)", "Size of the .tflite file after gzip -9"),
    ("size_bytes", "size (bytes)", "Size of the .tflite file"),
    ("latency_ms", "latency (ms)", "Median batch-1 latency of the .tflite file"),
    ("within_budget", "within budget", "1 if the trial meets every budget, else 0"),
)


def _domain(hyperparameter, hp_api):
    from keras_tuner.engine import hyperparameters as hp_module

    if isinstance(hyperparameter, hp_module.Choice):
        return hp_api.Discrete(list(hyperparameter.values))
    if isinstance(hyperparameter, hp_module.Boolean):
        return hp_api.Discrete([True, False])
    if isinstance(hyperparameter, hp_module.Fixed):
        return hp_api.Discrete([hyperparameter.value])
    if isinstance(hyperparameter, hp_module.Int):
        if hyperparameter.step not in (None, 1):
            return hp_api.Discrete(list(range(hyperparameter.min_value, hyperparameter.max_value + 1, hyperparameter.step)))
        return hp_api.IntInterval(hyperparameter.min_value, hyperparameter.max_value)
    if isinstance(hyperparameter, hp_module.Float):
        return hp_api.RealInterval(float(hyperparameter.min_value), float(hyperparameter.max_value))
    return None


def hparams_domains(hyperparameters):
    """TensorBoard `HParam`s (name and domain) for a keras-tuner search space.

    Args:
        hyperparameters: a `keras_tuner.HyperParameters` holding the space.

    Returns:
        A list of `tensorboard.plugins.hparams.api.HParam`.
    """
    from tensorboard.plugins.hparams import api as hp_api

    return [hp_api.HParam(h.name, _domain(h, hp_api)) for h in hyperparameters.space]


def _plain(value):
    if isinstance(value, bool) or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def write_hparams_config(logdir, hyperparameters, metrics=METRICS):
    """Writes the HParams experiment (hyperparameters and metrics) once.

    Args:
        logdir: the log root that holds one folder per trial.
        hyperparameters: a `keras_tuner.HyperParameters` holding the space.
        metrics: `(tag, display name, description)` triples.

    Example:

    ```python
    write_hparams_config("runs/tune/logs", tuner.oracle.get_space())
    ```
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    writer = tf.summary.create_file_writer(os.fspath(logdir))
    with writer.as_default():
        hp_api.hparams_config(
            hparams=hparams_domains(hyperparameters),
            metrics=[hp_api.Metric(tag, display_name=name, description=text) for tag, name, text in metrics],
        )
    writer.close()


def write_trial_hparams(logdir, trial_id, values, metrics):
    """Writes one trial's hyperparameter values and final metrics.

    Args:
        logdir: the trial's own log folder (its training curves live in
            `train/` and `validation/` below it).
        trial_id: the keras-tuner trial id.
        values: `{hyperparameter name: value}`.
        metrics: `{metric tag: number}`; NaN and None are skipped.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    writer = tf.summary.create_file_writer(os.fspath(logdir))
    with writer.as_default():
        hp_api.hparams({name: _plain(value) for name, value in values.items()}, trial_id=str(trial_id))
        for tag, value in metrics.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            tf.summary.scalar(tag, float(value), step=0)
    writer.close()


def read_hparams(logdir):
    """Reads the HParams sessions and their metrics back from event files.

    Args:
        logdir: the log root given to `write_hparams_config`.

    Returns:
        `{"experiment": {"hparams": [names], "metrics": [tags]} or None,
        "trials": {trial_id: {"hparams": {...}, "metrics": {...}, "run": dir}}}`.

    Example:

    ```python
    sessions = read_hparams("runs/tune/my_search/logs")["trials"]
    ```
    """
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import metadata

    logdir = os.fspath(logdir)
    experiment = None
    trials = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        run = os.path.relpath(os.path.dirname(path), logdir)
        session = None
        scalars = {}
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == metadata.PLUGIN_NAME:
                    if value.tag == metadata.EXPERIMENT_TAG:
                        parsed = metadata.parse_experiment_plugin_data(plugin.content)
                        experiment = {
                            "hparams": [info.name for info in parsed.hparam_infos],
                            "metrics": [info.name.tag for info in parsed.metric_infos],
                        }
                    elif value.tag == metadata.SESSION_START_INFO_TAG:
                        parsed = metadata.parse_session_start_info_plugin_data(plugin.content)
                        values = {}
                        for name, item in parsed.hparams.items():
                            kind = item.WhichOneof("kind")
                            values[name] = getattr(item, kind) if kind else None
                        session = {"trial_id": parsed.group_name, "hparams": values}
                elif value.HasField("tensor"):
                    scalars[value.tag] = float(tf.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    scalars[value.tag] = float(value.simple_value)
        if session is not None:
            entry = trials.setdefault(session["trial_id"], {"hparams": {}, "metrics": {}, "run": run})
            entry["hparams"].update(session["hparams"])
            entry["metrics"].update(scalars)
            entry["run"] = run
    return {"experiment": experiment, "trials": trials}
