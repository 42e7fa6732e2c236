"""The search space of `edgekeras.tuning` and its TensorBoard HParams records.

`SearchSpace` declares the hyperparameters every trial of an `EdgeTuner`
draws: the learning rate, the final sparsity, where the pruning ramp begins
and ends (as fractions of the pruning phase) and the number of QAT epochs.
Each is a range, a list of choices or a fixed number, and users add their own
hyperparameters in their `HyperModel` / build function as usual.

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
import keras_tuner
from edgekeras.hparams import SearchSpace

space = SearchSpace(learning_rate=(1e-4, 1e-2), final_sparsity={"values": [0.5, 0.75]}, qat_epochs=0)
hp = keras_tuner.HyperParameters()
space.declare(hp)
print(space.values(hp))  # {'learning_rate': 0.0001, 'final_sparsity': 0.5, ...}
```
"""

import glob
import math
import numbers
import os

__all__ = [
    "SearchSpace",
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

_SPECS = ("learning_rate", "final_sparsity", "pruning_begin", "pruning_end", "qat_epochs")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _normalize(name, spec, integer):
    """Returns ("fixed", v) / ("range", lo, hi, step) / ("choice", values)."""
    how = "a number (fixed), a [min, max] pair, {min = ..., max = ..., step = ...} or {values = [...]}"
    if _is_number(spec):
        return ("fixed", spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_number(v) for v in spec):
        spec = {"min": spec[0], "max": spec[1]}
    if isinstance(spec, dict) and set(spec) == {"values"}:
        values = spec["values"]
        if not isinstance(values, (tuple, list)) or not values or not all(_is_number(v) for v in values):
            raise ValueError(f"Argument `{name}` must be {how}. Received: {name}={spec!r}")
        return ("choice", tuple(values))
    if isinstance(spec, dict) and {"min", "max"} <= set(spec) <= {"min", "max", "step"}:
        low, high, step = spec["min"], spec["max"], spec.get("step")
        if not (_is_number(low) and _is_number(high)) or low >= high or (step is not None and not (_is_number(step) and step > 0)):
            raise ValueError(
                f"Argument `{name}` must have numbers min < max (and step > 0). Received: {name}={spec!r}"
            )
        if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise ValueError(f"Argument `{name}` must have integer bounds. Received: {name}={spec!r}")
        return ("range", low, high, step)
    raise ValueError(f"Argument `{name}` must be {how}. Received: {name}={spec!r}")


def _possible(spec):
    """The smallest and largest value a normalized spec can take."""
    if spec[0] == "fixed":
        return spec[1], spec[1]
    if spec[0] == "choice":
        return min(spec[1]), max(spec[1])
    return spec[1], spec[2]


class SearchSpace:
    """The edgekeras hyperparameters each trial draws.

    Each argument is a fixed number, a `(min, max)` pair (a range), a dict
    `{"min": ..., "max": ..., "step": ...}` or `{"values": [...]}` (choices).
    The names below are the keras-tuner hyperparameter names.

    Args:
        learning_rate: learning rate of every phase (log-uniform when a
            range without step).
        final_sparsity: fraction of zeros the pruning phase ends at, in
            [0, 1); 0 means "no pruning" (the pruning epochs then train
            densely, so every trial trains as long).
        pruning_begin: where the sparsity ramp begins, as a fraction of the
            pruning phase, in [0, 1).
        pruning_end: where the ramp reaches `final_sparsity`, a fraction in
            (0, 1]; every possible end must lie after every possible begin.
        qat_epochs: epochs of quantization-aware fine-tuning (integers >= 0).

    Example:

    ```python
    space = SearchSpace(final_sparsity={"min": 0.5, "max": 0.9, "step": 0.1}, qat_epochs=1)
    ```
    """

    def __init__(
        self,
        learning_rate=(1e-4, 1e-2),
        final_sparsity=(0.3, 0.9),
        pruning_begin=(0.0, 0.3),
        pruning_end=(0.6, 1.0),
        qat_epochs=(0, 1),
    ):
        self.learning_rate = learning_rate
        self.final_sparsity = final_sparsity
        self.pruning_begin = pruning_begin
        self.pruning_end = pruning_end
        self.qat_epochs = qat_epochs
        self._specs = {name: _normalize(name, getattr(self, name), name == "qat_epochs") for name in _SPECS}
        limits = {
            "learning_rate": (lambda lo, hi: lo > 0, "> 0"),
            "final_sparsity": (lambda lo, hi: 0 <= lo and hi < 1, "in [0, 1)"),
            "pruning_begin": (lambda lo, hi: 0 <= lo and hi < 1, "in [0, 1)"),
            "pruning_end": (lambda lo, hi: 0 < lo and hi <= 1, "in (0, 1]"),
            "qat_epochs": (lambda lo, hi: lo >= 0, ">= 0"),
        }
        for name, (ok, requirement) in limits.items():
            if not ok(*_possible(self._specs[name])):
                raise ValueError(f"Argument `{name}` must be {requirement}. Received: {name}={getattr(self, name)!r}")
        spec = self._specs["qat_epochs"]
        values = (spec[1],) if spec[0] == "fixed" else spec[1] if spec[0] == "choice" else ()
        if not all(float(v).is_integer() for v in values):
            raise ValueError(f"Argument `qat_epochs` must hold integers. Received: qat_epochs={qat_epochs!r}")
        if _possible(self._specs["pruning_begin"])[1] >= _possible(self._specs["pruning_end"])[0]:
            raise ValueError(
                "Arguments `pruning_begin` and `pruning_end` overlap: every possible begin must be "
                f"smaller than every possible end. Received: pruning_begin={pruning_begin!r}, "
                f"pruning_end={pruning_end!r}"
            )

    def declare(self, hp):
        """Registers the hyperparameters in a `keras_tuner.HyperParameters`."""
        for name in _SPECS:
            spec = self._specs[name]
            integer = name == "qat_epochs"
            if spec[0] == "fixed":
                hp.Fixed(name, int(spec[1]) if integer else float(spec[1]))
            elif spec[0] == "choice":
                hp.Choice(name, [int(v) if integer else float(v) for v in spec[1]])
            elif integer:
                hp.Int(name, int(spec[1]), int(spec[2]), step=int(spec[3] or 1))
            else:
                sampling = "log" if name == "learning_rate" and spec[3] is None else "linear"
                step = None if spec[3] is None else float(spec[3])
                hp.Float(name, float(spec[1]), float(spec[2]), step=step, sampling=sampling)

    def values(self, hp):
        """Returns `{name: value}` of this space's hyperparameters in `hp`."""
        return {name: hp.get(name) for name in _SPECS}

    def get_config(self):
        return {name: getattr(self, name) for name in _SPECS}

    @classmethod
    def from_config(cls, config):
        unknown = sorted(set(config) - set(_SPECS))
        if unknown:
            raise ValueError(
                f"Unknown search-space key `{unknown[0]}`. Valid keys: {', '.join(_SPECS)}."
            )
        return cls(**config)

    def __repr__(self):
        items = ", ".join(f"{name}={getattr(self, name)!r}" for name in _SPECS)
        return f"SearchSpace({items})"


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
