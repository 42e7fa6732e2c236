"""`edgekeras run` configuration: a TOML file, validated section by section.

A config has the sections below; every key is optional and has the default
shown by `edgekeras.app.config.default_config_toml()`. Unknown sections and
unknown keys are errors naming the key and the section, so a typo never
silently falls back to a default. Values are checked for type and range with
messages in edgekeras' usual form ("Config key `train.epochs` must be ...
Received: ...").

```toml
[run]       # name (run directory runs/<name>/), output_dir, seed
[data]      # TFDS dataset or image directory, resolution, batch size, splits, normalization, augmentation
[model]     # architecture (MobileNetV2/V3, EfficientNet, ResNet50), your factory or model file; weights, fine-tuning
[train]     # float phase: epochs, optimizer, learning rate, feature caching
[prune]     # pruning phase: target sparsity, schedule, policy, epochs
[qat]       # quantization-aware fine-tuning of the float and pruned models
[export]    # which .tflite conversions, int8 input/output type, verification
[evaluate]  # split, threads, latency runs
[report]    # which variant holds each of the seed's four roles ("auto": the better int8 file on validation)
[distribute] # tf.distribute strategy: default, mirrored, multi_worker (TF_CONFIG)
```

TOML has no null: 0 means "all" for the `max_*` and `steps_per_epoch` keys,
and "" means "not set" for `data.dataset` (cifar10 unless `data.directory`),
`data.data_dir`, `model.architecture` (mobilenet_v2 unless `model.factory` or
`model.file`) and `model.trainable_from` (the whole base frozen).

The section dataclasses and their checks live in `edgekeras.app.sections`
and `edgekeras.app.inputs` ([data], [model]) (re-exported here); `parse_section` is the one parser of every section, also
of the [data], [model] and [tune] sections of `edgekeras tune` configs
(`edgekeras.app.tune_config`). Nothing here imports TensorFlow.

Example:

```python
from edgekeras.app.config import load_config

config = load_config("configs/demo.toml")
print(config.train.epochs, config.variant_names())
```
"""

import dataclasses
import difflib
import math
import os
import tomllib
import typing

from edgekeras.app.channel_section import ChannelsSection
from edgekeras.app.inputs import DataSection, ModelSection, check_inputs
from edgekeras.app.roles import AUTO, CANDIDATES, auto_candidates, resolve
from edgekeras.app.sections import (
    BoolOrAuto,
    ConfigError,
    DistributeSection,
    EvaluateSection,
    ExportSection,
    PruneSection,
    QatSection,
    ReportSection,
    RunSection,
    TrainSection,
    _fail,
    list_requirement,
)
from edgekeras.app.variants import variant_needs, variants

__all__ = [
    "ConfigError",
    "RunSection",
    "DataSection",
    "ModelSection",
    "TrainSection",
    "PruneSection",
    "QatSection",
    "ExportSection",
    "EvaluateSection",
    "ReportSection",
    "DistributeSection",
    "Config",
    "load_config",
    "parse_config",
    "parse_section",
    "read_toml",
    "config_to_toml",
    "default_config_toml",
]


_SECTIONS = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "prune": PruneSection,
    "channels": ChannelsSection,
    "qat": QatSection,
    "export": ExportSection,
    "evaluate": EvaluateSection,
    "report": ReportSection,
    "distribute": DistributeSection,
}


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole, validated `edgekeras run` config (one attribute per section)."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    prune: PruneSection = PruneSection()
    channels: ChannelsSection = ChannelsSection()
    qat: QatSection = QatSection()
    export: ExportSection = ExportSection()
    evaluate: EvaluateSection = EvaluateSection()
    report: ReportSection = ReportSection()
    distribute: DistributeSection = DistributeSection()
    source: str = dataclasses.field(default="<defaults>", compare=False)

    @property
    def run_dir(self):
        return os.path.join(self.run.output_dir, self.run.name)

    def variant_names(self):
        """Names of the variants this config exports, in report order."""
        return [name for name, _, _ in variants(self)]

    def roles(self, choices=None):
        """{variant name: role} for every exported variant.

        Args:
            choices: {role: choice} of the "auto" roles, as the `choose_roles`
                stage makes them and state.json records them (see
                `edgekeras.app.roles`). An "auto" role with one candidate
                needs no choice; one not chosen yet is left empty.
        """
        names = self.variant_names()
        roles = {name: "other" for name in names}
        auto = auto_candidates(self.report, names)
        resolved = resolve(self.report, names, choices or {})
        for role in ("original", "quantized", "pruned", "pruned_quantized"):
            name = resolved[role] if role in auto else getattr(self.report, role)
            if name:
                roles[name] = role
        return roles

    def check(self):
        """Checks what one section cannot: the data fit the model, each `report` role names an exported variant, once.

        Raises:
            ConfigError: naming the key at fault and how to fix it.
        """
        check_inputs(self.data, self.model)
        produced = self.variant_names()
        used = {}
        for role in ("original", "quantized", "pruned", "pruned_quantized"):
            name = getattr(self.report, role)
            if not name or (name == AUTO and role in CANDIDATES):
                continue
            if name not in produced:
                needs = variant_needs(name)
                fix = f"{name!r} needs {needs}: set that, or" if needs else "Name one of those, or"
                if name == AUTO:
                    fix = '"auto" is for `report.quantized` and `report.pruned_quantized` only: name a variant, or'
                raise ConfigError(
                    f"Config key `report.{role}` must name a variant this config exports "
                    f"({', '.join(produced)}). Received: report.{role}={name!r}. "
                    f'{fix} set `report.{role}` to "".'
                )
            if name in used:
                raise ConfigError(
                    f"Config key `report.{role}` names {name!r}, which already holds the role "
                    f"{used[name]!r} (`report.{used[name]}`); each variant holds at most one role. "
                    f'Received: report.{role}={name!r}. Set one of the two keys to another variant or to "".'
                )
            used[name] = role
        if not self.report.original:
            raise ConfigError(
                'Config key `report.original` must name the float reference variant, e.g. "float32". '
                "Received: report.original=''"
            )
        self._check_auto_roles(produced)

    def _check_auto_roles(self, produced):
        """An "auto" role with two candidates is chosen on the validation split: there must be one."""
        for role, names in auto_candidates(self.report, produced).items():
            if len(names) > 1 and not self.data.validation_size:
                raise ConfigError(
                    f"Config key `report.{role}` must name a variant when there is no validation split: "
                    f'"auto" chooses between {names[0]!r} and {names[1]!r} by their accuracy on the validation '
                    f"split, never on the test split. Received: report.{role}='auto', data.validation_size=0. "
                    f'Name the variant (report.{role} = "{names[0]}" or "{names[1]}") or set '
                    "`data.validation_size` > 0."
                )


def _convert(value, hint, key, list_of=None):
    """Checks a TOML value against a dataclass field type; returns it converted.

    `list_of` is what a list-valued key must be, for the message when the
    value is no list (see `edgekeras.app.sections.list_requirement`).
    """
    if hint is BoolOrAuto:
        if not isinstance(value, bool) and value != "auto":
            _fail(key, 'true, false or "auto"', value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, "a number", value)
        if not math.isfinite(value):  # TOML has nan and inf literals
            _fail(key, "a finite number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(key, "a string", value)
        return value
    if hint is tuple:
        if not isinstance(value, list):
            _fail(key, list_of or "a list", value)
        return tuple(value)
    if hint is dict:
        if not isinstance(value, dict):
            _fail(key, "a table", value)
        return dict(value)
    raise TypeError(f"unsupported config field type {hint!r} for {key}")  # pragma: no cover


def parse_section(name, cls, values, source, *, tables=()):
    """Validates one TOML table as the section dataclass `cls`: the one parser of every config.

    Unknown keys are refused, each value is checked against its field's type
    (and converted: lists to tuples, integers to floats), then `cls.check`
    checks ranges and choices.

    Args:
        name: the section's name in messages, e.g. "train" or "tune".
        cls: a section dataclass of `edgekeras.app.sections`.
        values: the table, as `tomllib` parses it.
        source: where it came from, for messages.
        tables: sub-tables of this table (such as [tune.space]) that the
            caller parses: skipped here, and listed as valid in messages.

    Returns:
        An instance of `cls`.

    Raises:
        ConfigError: `values` is no table, or has an unknown key or a bad value.

    Example:

    ```python
    train = parse_section("train", TrainSection, {"epochs": 5}, "<dict>")
    ```
    """
    if not isinstance(values, dict):
        raise ConfigError(f"Config section [{name}] in {source} must be a table. Received: {name}={values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields - set(tables))
    if unknown:
        also = f", and the tables {', '.join(f'[{name}.{table}]' for table in tables)}" if tables else ""
        raise ConfigError(
            f"Unknown key `{unknown[0]}` in section [{name}] of {source}. "
            f"Valid keys of [{name}]: {', '.join(sorted(fields))}{also}.{_did_you_mean(unknown[0], fields)}"
        )
    converted = {
        key: _convert(value, hints[key], f"{name}.{key}", list_requirement(cls, key))
        for key, value in values.items()
        if key not in tables
    }
    section = cls(**converted)
    section.check(name)
    return section


def _did_you_mean(key, valid):
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return f" Did you mean `{close[0]}`?" if close else ""


def parse_config(values, source="<dict>"):
    """Validates a config given as a dict (as `tomllib` parses it).

    Args:
        values: {section name: {key: value}}.
        source: where it came from, for error messages.

    Returns:
        A `Config`.

    Raises:
        ConfigError: an unknown section or key, or a bad value.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"A config must be a table of sections. Received: {values!r}")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        key = unknown[0]
        if isinstance(values[key], dict):
            hint = _did_you_mean(key, _SECTIONS)
        else:
            owners = [f"[{s}]" for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            hint = f" `{key}` is a key of {', '.join(owners)}: write it below that table's header." if owners else ""
        raise ConfigError(
            f"Unknown {'section' if isinstance(values[key], dict) else 'key'} `{key}` at the top level of "
            f"{source}. Valid sections: {', '.join('[' + s + ']' for s in _SECTIONS)}.{hint}"
        )
    sections = {name: parse_section(name, cls, values.get(name, {}), source) for name, cls in _SECTIONS.items()}
    config = Config(**sections, source=source)
    config.check()
    return config


def load_config(path):
    """Reads and validates a TOML config file.

    Args:
        path: the .toml file.

    Returns:
        A `Config`.

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML, or
            fails validation (the message names the key and its section).

    Example:

    ```python
    config = load_config("configs/seed.toml")
    ```
    """
    path = os.fspath(path)
    return parse_config(read_toml(path), source=path)


def read_toml(path):
    """Reads a TOML file into a dict.

    Args:
        path: the .toml file.

    Returns:
        The file's tables and keys, as `tomllib` parses them.

    Raises:
        ConfigError: the file is missing or unreadable, not UTF-8, or not
            valid TOML.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as error:
        raise ConfigError(f"Argument `config` names a file that does not exist. Received: config={path!r}") from error
    except OSError as error:  # a directory, no permission, an I/O error
        raise ConfigError(
            f"Argument `config` names a file that cannot be read ({error.strerror or error}). Received: config={path!r}"
        ) from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"Config file {path!r} is not valid TOML: it is not UTF-8 text ({error}). Save it as UTF-8."
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"Config file {path!r} is not valid TOML: {error}") from error


def _toml_char(char):
    # TOML basic strings: escape the quote, the backslash and control characters.
    if char in '"\\':
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def _toml_key(key):
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_value(key)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def config_to_toml(config, header=""):
    """Writes a `Config` back as TOML (every key, defaults included).

    Args:
        config: a `Config`.
        header: text written first, each line as a TOML comment.

    Returns:
        The TOML text; `load_config` of it gives an equal `Config`.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    for name in _SECTIONS:
        section = getattr(config, name)
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for field in dataclasses.fields(section):
            lines.append(f"{field.name} = {_toml_value(getattr(section, field.name))}")
    return "\n".join(lines) + "\n"


def default_config_toml():
    """The default config as TOML: every section and key with its default."""
    return config_to_toml(Config(), header="edgekeras run: default values of every key")
