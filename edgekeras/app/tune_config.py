"""`edgekeras tune` configs: [data], [model] and [tune], plus [tune.space] and [tune.budget].

[data] and [model] are the sections of `edgekeras run` configs (any TFDS
dataset or image directory; an architecture, a factory of yours, which may
take the trial's `hp`, or a model file); [tune] is
`edgekeras.app.sections.TuneSettings`. All three go through the same parser
as run configs (`edgekeras.app.config.parse_section`), so they refuse unknown
keys and bad values with the same messages. The sub-tables become library
objects: [tune.space] an `edgekeras.tuning.SearchSpace` (which validates its
own ranges) and [tune.budget] a `Budget`.

This module is separate from `edgekeras.app.config` because those library
objects come from `edgekeras.tuning`, which imports keras-tuner and so
TensorFlow; reading a run config must not.

Example:

```python
from edgekeras.app.tune_config import load_tune_config

config = load_tune_config("configs/tune.toml")
print(config.tune.oracle, config.space, config.budget)
```
"""

import dataclasses
import os

from edgekeras.app.config import ConfigError, parse_section, read_toml
from edgekeras.app.inputs import DataSection, ModelSection, check_inputs
from edgekeras.app.sections import TuneSettings, _fail
from edgekeras.tuning import Budget, SearchSpace

__all__ = ["TuneSettings", "TuneConfig", "parse_tune_config", "load_tune_config"]

_SECTIONS = {"data": DataSection, "model": ModelSection, "tune": TuneSettings}
# Sub-tables of [tune] that are parsed into library objects, not `TuneSettings` keys.
_TABLES = ("space", "budget")
_BUDGET_KEYS = ("max_gzip_bytes", "max_latency_ms")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A validated `edgekeras tune` config.

    Attributes:
        data: [data], as in `edgekeras run` configs (`edgekeras.app.inputs.DataSection`).
        model: [model], as in `edgekeras run` configs (`ModelSection`).
        tune: [tune] (`TuneSettings`).
        space: [tune.space] as a `SearchSpace`.
        budget: [tune.budget] as a `Budget`.
        source: the file it came from.
    """

    data: DataSection
    model: ModelSection
    tune: TuneSettings
    space: SearchSpace
    budget: Budget
    source: str = "<dict>"

    @property
    def project_dir(self):
        return os.path.join(self.tune.directory, self.tune.project_name)


def _parse_space(values, source):
    if not isinstance(values, dict):
        _fail("tune.space", "a table", values)
    try:
        return SearchSpace.from_config(values)
    except ValueError as error:
        raise ConfigError(f"Config table [tune.space] in {source}: {error}") from error


def _parse_budget(values, source):
    if not isinstance(values, dict):
        _fail("tune.budget", "a table", values)
    unknown = sorted(set(values) - set(_BUDGET_KEYS))
    if unknown:
        raise ConfigError(
            f"Unknown key `{unknown[0]}` in table [tune.budget] of {source}. Valid keys: {', '.join(_BUDGET_KEYS)}."
        )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            _fail(f"tune.budget.{key}", "a number >= 0 (0: no limit)", value)
    # TOML has no null: 0 is "no limit", which `Budget` spells None.
    return Budget(**{key: value for key, value in values.items() if value})


def parse_tune_config(values, source="<dict>"):
    """Validates a tune config given as a dict (as `tomllib` parses it).

    Args:
        values: {section name: {key: value}} with the sections [data],
            [model] and [tune] (which holds the tables `space` and `budget`).
        source: where it came from, for error messages.

    Returns:
        A `TuneConfig`.

    Raises:
        edgekeras.app.config.ConfigError: an unknown section or key, or a bad
            value (the message names the key).

    Example:

    ```python
    config = parse_tune_config({"tune": {"oracle": "bayesian", "space": {"qat_epochs": 0}}})
    ```
    """
    if not isinstance(values, dict):
        raise ConfigError(f"A config must be a table of sections. Received: {values!r}")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"Unknown section `{unknown[0]}` in {source}. A tune config has the sections "
            "[data], [model] (as in `edgekeras run` configs) and [tune], [tune.space], [tune.budget]."
        )
    sections = {
        name: parse_section(name, cls, values.get(name, {}), source, tables=_TABLES if name == "tune" else ())
        for name, cls in _SECTIONS.items()
    }
    check_inputs(sections["data"], sections["model"])
    # parse_section has made sure that [tune] is a table.
    tune = values.get("tune", {})
    return TuneConfig(
        **sections,
        space=_parse_space(tune.get("space", {}), source),
        budget=_parse_budget(tune.get("budget", {}), source),
        source=source,
    )


def load_tune_config(path):
    """Reads and validates a tune config TOML file (see `parse_tune_config`).

    Args:
        path: the .toml file.

    Returns:
        A `TuneConfig` whose `source` is `path`.

    Raises:
        edgekeras.app.config.ConfigError: the file is missing, unreadable or
            not valid TOML, or fails validation.

    Example:

    ```python
    config = load_tune_config("configs/tune.toml")
    print(config.tune.max_trials, config.space)
    ```
    """
    path = os.fspath(path)
    return parse_tune_config(read_toml(path), source=path)
