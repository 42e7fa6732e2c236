"""`edgekeras tune --config FILE.toml`: a keras-tuner search described by a TOML file.

The file has the [data] and [model] sections of `edgekeras run` configs plus
[tune], [tune.space] and [tune.budget]; `tune` loads the data once and runs an
`edgekeras.tuning.EdgeTuner` over it.

Example:

```python
from edgekeras.app.tune import load_tune_config, tune

tuner = tune(load_tune_config("configs/tune.toml"))
print(tuner.format_results())
```
"""

import dataclasses
import os

from edgekeras.app.config import ConfigError, parse_config, read_toml
from edgekeras.app.pipeline import build_model, load_data
from edgekeras.choices import CACHE_ENGINES, CONVERSIONS, ORACLES, POLICIES
from edgekeras.tuning import Budget, EdgeTuner, SearchSpace, make_oracle

__all__ = ["TuneSettings", "TuneConfig", "parse_tune_config", "load_tune_config", "tune"]


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """[tune]: the search itself (oracle, trial count, phases, where results go).

    TOML has no null: 0 means "not set" for `qat_steps_per_epoch`, and for
    the budgets in [tune.budget].

    Attributes:
        oracle: "random", "bayesian" or "hyperband".
        max_trials: trials to run (random, bayesian).
        max_epochs: the longest float phase a trial gets (hyperband).
        factor: Hyperband's reduction factor.
        initial_points: random trials before Bayesian optimization starts
            modelling the objective (0: keras-tuner's default, 3 per
            hyperparameter).
        seed: seed of the oracle and of every trial's weight init.
        directory: parent directory of the project directory.
        project_name: the project directory's name (resumes when it exists).
        overwrite: delete an existing project instead of resuming it.
        float_epochs: float epochs per trial (not for hyperband).
        prune_epochs: pruning epochs per trial.
        conversion: .tflite conversion of trials without QAT.
        int8_float_layers: layers post-training int8 files keep in float.
        cache_features: train float and pruning phases on cached activations
            of the frozen prefix (computed once per search).
        cache_engine: "litert" or "keras".
        qat_steps_per_epoch: batches per QAT epoch (0: the whole split).
        prune_policy: "all", "skip_first_last" or "pointwise".
        eval_threads: LiteRT threads for validation accuracy.
        latency_threads: LiteRT threads for batch-1 latency.
        latency_runs: timed latency runs (>= 50).
        save_models: keep each trial's Keras model (.h5).
        top: rows of the final table.
    """

    oracle: str = "random"
    max_trials: int = 20
    max_epochs: int = 3
    factor: int = 3
    initial_points: int = 0
    seed: int = 0
    directory: str = "runs/tune"
    project_name: str = "search"
    overwrite: bool = False
    float_epochs: int = 1
    prune_epochs: int = 1
    conversion: str = "int8"
    int8_float_layers: tuple = ()
    cache_features: bool = True
    cache_engine: str = "litert"
    qat_steps_per_epoch: int = 0
    prune_policy: str = "all"
    eval_threads: int = 2
    latency_threads: int = 1
    latency_runs: int = 50
    save_models: bool = True
    top: int = 10


_MINIMUMS = {
    "max_trials": 1,
    "max_epochs": 1,
    "factor": 2,
    "initial_points": 0,
    "float_epochs": 0,
    "prune_epochs": 0,
    "qat_steps_per_epoch": 0,
    "eval_threads": 1,
    "latency_threads": 1,
    "latency_runs": 50,
    "top": 1,
}


_CHOICES = {
    "oracle": ORACLES,
    "cache_engine": CACHE_ENGINES,
    "prune_policy": POLICIES,
}


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A validated `edgekeras tune` config.

    Attributes:
        data: [data], as in `edgekeras run` configs (`edgekeras.app.config.DataSection`).
        model: [model], as in `edgekeras run` configs (`ModelSection`).
        tune: [tune] (`TuneSettings`).
        space: [tune.space] as a `SearchSpace`.
        budget: [tune.budget] as a `Budget`.
        source: the file it came from.
    """

    data: object
    model: object
    tune: TuneSettings
    space: SearchSpace
    budget: Budget
    source: str = "<dict>"

    @property
    def project_dir(self):
        return os.path.join(self.tune.directory, self.tune.project_name)


def _config_error(key, requirement, value):
    return ConfigError(f"Config key `{key}` must be {requirement}. Received: {key}={value!r}")


def _parse_settings(values):
    fields = {field.name: field for field in dataclasses.fields(TuneSettings)}
    unknown = sorted(set(values) - set(fields) - {"space", "budget"})
    if unknown:
        raise ConfigError(
            f"Unknown key `{unknown[0]}` in section [tune]. Valid keys of [tune]: "
            f"{', '.join(sorted(fields))}, and the tables [tune.space] and [tune.budget]."
        )
    settings = {}
    for name, value in values.items():
        if name in ("space", "budget"):
            continue
        kind = type(fields[name].default)
        if kind is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise _config_error(f"tune.{name}", "a list of layer names", value)
            value = tuple(value)
        if kind is bool and not isinstance(value, bool):
            raise _config_error(f"tune.{name}", "true or false", value)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _config_error(f"tune.{name}", "an integer", value)
        if kind is str and not isinstance(value, str):
            raise _config_error(f"tune.{name}", "a string", value)
        settings[name] = value
    result = TuneSettings(**settings)
    for name, minimum in _MINIMUMS.items():
        if getattr(result, name) < minimum:
            raise _config_error(f"tune.{name}", f"an integer >= {minimum}", getattr(result, name))
    for name, allowed in {**_CHOICES, "conversion": CONVERSIONS}.items():
        if getattr(result, name) not in allowed:
            raise _config_error(f"tune.{name}", "one of " + ", ".join(repr(a) for a in allowed), getattr(result, name))
    for name in ("directory", "project_name"):
        if not getattr(result, name):
            raise _config_error(f"tune.{name}", "a non-empty string", getattr(result, name))
    return result


def parse_tune_config(values, source="<dict>"):
    """Validates a tune config given as a dict (as `tomllib` parses it).

    The file has the [data] and [model] sections of `edgekeras run` configs
    plus [tune], [tune.space] and [tune.budget].

    Raises:
        edgekeras.app.config.ConfigError: an unknown section or key, or a bad
            value (the message names the key).
    """
    if not isinstance(values, dict):
        raise ConfigError(f"A config must be a table of sections. Received: {values!r}")
    unknown = sorted(set(values) - {"data", "model", "tune"})
    if unknown:
        raise ConfigError(
            f"Unknown section `{unknown[0]}` in {source}. A tune config has the sections "
            "[data], [model] (as in `edgekeras run` configs) and [tune], [tune.space], [tune.budget]."
        )
    base = parse_config({key: values[key] for key in ("data", "model") if key in values}, source=source)
    section = values.get("tune", {})
    if not isinstance(section, dict):
        raise ConfigError(f"Config section [tune] in {source} must be a table. Received: tune={section!r}")
    settings = _parse_settings(section)
    space_values = section.get("space", {})
    if not isinstance(space_values, dict):
        raise _config_error("tune.space", "a table", space_values)
    try:
        space = SearchSpace.from_config(space_values)
    except ValueError as error:
        raise ConfigError(f"Config table [tune.space] in {source}: {error}") from error
    budget_values = section.get("budget", {})
    unknown = sorted(set(budget_values) - {"max_gzip_bytes", "max_latency_ms"}) if isinstance(budget_values, dict) else ["?"]
    if unknown:
        raise ConfigError(
            f"Unknown key `{unknown[0]}` in table [tune.budget] of {source}. Valid keys: max_gzip_bytes, max_latency_ms."
        )
    for key, value in budget_values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _config_error(f"tune.budget.{key}", "a number >= 0 (0: no limit)", value)
    budget = Budget(**{key: value for key, value in budget_values.items() if value})
    return TuneConfig(data=base.data, model=base.model, tune=settings, space=space, budget=budget, source=source)


def load_tune_config(path):
    """Reads and validates a tune config TOML file (see `parse_tune_config`).

    Example:

    ```python
    config = load_tune_config("configs/tune.toml")
    print(config.tune.max_trials, config.space)
    ```
    """
    path = os.fspath(path)
    return parse_tune_config(read_toml(path), source=path)


def tune(config, *, overwrite=None, verbose=1):
    """Runs the search a `TuneConfig` describes; returns the `EdgeTuner`.

    Data are loaded once, and with `tune.cache_features` the frozen prefix's
    activations are computed once, for all trials.

    Args:
        config: a `TuneConfig` (see `load_tune_config`).
        overwrite: override `tune.overwrite`.
        verbose: print keras-tuner's trial tables and one line per trial.

    Example:

    ```python
    tuner = tune(load_tune_config("configs/tune.toml"))
    print(tuner.format_results())
    ```
    """
    section, model_section, settings = config.data, config.model, config.tune
    data = load_data(section, seed=settings.seed)
    if data.validation is None:
        raise ConfigError(
            "Config key `data.validation_size` must be > 0 for tuning: trials are scored on the validation "
            "split, never on the test split. Received: data.validation_size=0"
        )

    def build(hp):
        return build_model(model_section, data.num_classes, section.image_size)

    extra = {}
    if settings.oracle == "bayesian" and settings.initial_points:
        extra["num_initial_points"] = settings.initial_points
    oracle = make_oracle(
        settings.oracle,
        max_trials=settings.max_trials,
        max_epochs=settings.max_epochs,
        factor=settings.factor,
        seed=settings.seed,
        **extra,
    )
    tuner = EdgeTuner(
        oracle,
        build,
        search_space=config.space,
        float_epochs=settings.float_epochs,
        prune_epochs=settings.prune_epochs,
        conversion=settings.conversion,
        float_layers=settings.int8_float_layers,
        budget=config.budget,
        prune_policy=settings.prune_policy,
        cache_features=settings.cache_features,
        cache_engine=settings.cache_engine,
        qat_steps_per_epoch=settings.qat_steps_per_epoch or None,
        eval_threads=settings.eval_threads,
        latency_threads=settings.latency_threads,
        latency_runs=settings.latency_runs,
        seed=settings.seed,
        save_models=settings.save_models,
        directory=settings.directory,
        project_name=settings.project_name,
        overwrite=settings.overwrite if overwrite is None else overwrite,
        verbose=verbose,
    )
    if verbose:
        print(
            f"[edgekeras tune] {settings.oracle} search in {tuner.project_dir}: {data.num_train} training / "
            f"{data.num_validation} validation {data.name} images at {section.image_size}px; "
            f"{config.space}; {config.budget}",
            flush=True,
        )
    tuner.search(data.train, validation_data=data.validation)
    return tuner
