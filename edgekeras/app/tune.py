"""`edgekeras tune --config FILE.toml`: a keras-tuner search described by a TOML file.

`tune` loads the data once and runs an `edgekeras.tuning.EdgeTuner` over
them; every trial builds the [model] section's model afresh (an
architecture, a factory of yours, which gets the trial's `hp` if it takes
it, or a model file). The config (the [data] and [model] sections of `edgekeras run` configs
plus [tune], [tune.space] and [tune.budget]) is read by
`edgekeras.app.tune_config`; its names are re-exported here.

Example:

```python
from edgekeras.app.tune import load_tune_config, tune

tuner = tune(load_tune_config("configs/tune.toml"))
print(tuner.format_results())
```
"""

from edgekeras.app.config import ConfigError
from edgekeras.app.factories import build_model, load_data
from edgekeras.app.tune_config import TuneConfig, TuneSettings, load_tune_config, parse_tune_config
from edgekeras.tuning import EdgeTuner, make_oracle

__all__ = ["TuneSettings", "TuneConfig", "parse_tune_config", "load_tune_config", "tune"]


def _oracle(settings):
    extra = {}
    if settings.oracle == "bayesian" and settings.initial_points:
        extra["num_initial_points"] = settings.initial_points
    return make_oracle(
        settings.oracle,
        max_trials=settings.max_trials,
        max_epochs=settings.max_epochs,
        factor=settings.factor,
        seed=settings.seed,
        **extra,
    )


def tune(config, *, overwrite=None, verbose=1):
    """Runs the search a `TuneConfig` describes; returns the `EdgeTuner`.

    Data are loaded once, and with `tune.cache_features` the frozen prefix's
    activations are computed once, for all trials.

    Args:
        config: a `TuneConfig` (see `load_tune_config`).
        overwrite: override `tune.overwrite`.
        verbose: print keras-tuner's trial tables and one line per trial.

    Returns:
        The `EdgeTuner`, its search finished (`results()`, `project_dir`).

    Raises:
        ConfigError: `data.validation_size` is 0 (trials are scored on the
            validation split).

    Example:

    ```python
    tuner = tune(load_tune_config("configs/tune.toml"))
    print(tuner.format_results())
    ```
    """
    section, model_section, settings = config.data, config.model, config.tune
    data = load_data(section, seed=settings.seed, model=model_section)
    if data.validation is None:
        raise ConfigError(
            "Config key `data.validation_size` must be > 0 for tuning: trials are scored on the validation "
            "split, never on the test split. Received: data.validation_size=0"
        )

    def build(hp):
        # A factory that takes `hp` declares its own hyperparameters in it.
        return build_model(model_section, data.num_classes, section.image_size, hp=hp)

    tuner = EdgeTuner(
        _oracle(settings),
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
        channel_epochs=settings.channel_epochs,
        channel_steps_per_epoch=settings.channel_steps_per_epoch or None,
        channel_allocation=settings.channel_allocation,
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
            f"{data.num_validation} validation {data.name} images at {section.image_size}px "
            f"(scaled {data.normalization!r}); "
            f"{config.space}; {config.budget}",
            flush=True,
        )
    tuner.search(data.train, validation_data=data.validation)
    return tuner
