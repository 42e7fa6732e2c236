"""`edgekeras run` configuration: a TOML file, validated section by section.

A config has the sections below; every key is optional and has the default
shown by `edgekeras.app.config.default_config_toml()`. Unknown sections and
unknown keys are errors naming the key and the section, so a typo never
silently falls back to a default. Values are checked for type and range with
messages in edgekeras' usual form ("Config key `train.epochs` must be ...
Received: ...").

```toml
[run]       # name (run directory runs/<name>/), output_dir, seed
[data]      # TFDS dataset, resolution, batch size, splits, augmentation
[model]     # MobileNetV2 transfer model: weights, where fine-tuning starts
[train]     # float phase: epochs, optimizer, learning rate, feature caching
[prune]     # pruning phase: target sparsity, schedule, policy, epochs
[qat]       # quantization-aware fine-tuning of the float and pruned models
[export]    # which .tflite conversions, int8 input/output type, verification
[evaluate]  # split, threads, latency runs
[report]    # which variant holds each of the seed's four roles
[distribute] # tf.distribute strategy: default, mirrored, multi_worker (TF_CONFIG)
```

TOML has no null: 0 means "all" for the `max_*` and `steps_per_epoch` keys,
and "" means "not set" for `data.data_dir` and `model.trainable_from`.

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

from edgekeras.choices import CACHE_ENGINES, CONVERSIONS, IO_DTYPES, POLICIES, STRATEGIES
from edgekeras.errors import EdgekerasError

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
    "config_to_toml",
    "default_config_toml",
]


class ConfigError(EdgekerasError, ValueError):
    """A config file is unreadable, has an unknown key or a bad value."""


def _fail(key, requirement, value):
    raise ConfigError(f"Config key `{key}` must be {requirement}. Received: {key}={value!r}")


@dataclasses.dataclass(frozen=True)
class RunSection:
    """[run]: where the run goes.

    Attributes:
        name: run name; artifacts go to `<output_dir>/<name>/`.
        output_dir: parent directory of run directories.
        seed: seed for weights init, shuffling and augmentation.
    """

    name: str = "default"
    output_dir: str = "runs"
    seed: int = 0

    def check(self, section):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            _fail(f"{section}.name", "a non-empty name without '/'", self.name)
        if not self.output_dir:
            _fail(f"{section}.output_dir", "a non-empty path", self.output_dir)


@dataclasses.dataclass(frozen=True)
class DataSection:
    """[data]: arguments of `edgekeras.data.load_image_data`.

    Attributes:
        dataset: TFDS dataset name.
        data_dir: TFDS data dir; "" uses $TFDS_DATA_DIR, then TFDS' default.
        download: let TFDS download the dataset if it is not prepared.
        image_size: side of the square model input.
        batch_size: batch size of every phase and of evaluation.
        validation_size: examples held out from the end of the training split.
        max_train_examples: use only the first N training examples (0: all).
        augment: random pad-crop + flip of training images.
        shuffle_buffer: shuffle buffer of the training pipeline.
    """

    dataset: str = "cifar10"
    data_dir: str = ""
    download: bool = True
    image_size: int = 160
    batch_size: int = 64
    validation_size: int = 5000
    max_train_examples: int = 0
    augment: bool = True
    shuffle_buffer: int = 10000

    def check(self, section):
        if not self.dataset:
            _fail(f"{section}.dataset", "a TFDS dataset name", self.dataset)
        _at_least(self, section, image_size=32, batch_size=1, validation_size=0, max_train_examples=0, shuffle_buffer=1)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """[model]: arguments of `edgekeras.models.build_transfer_model`.

    Attributes:
        alpha: MobileNetV2 width multiplier.
        weights: "imagenet" ($EDGEKERAS_WEIGHTS when set, else download),
            "none" (random init) or the path of a no-top .h5 file.
        trainable_from: first fine-tuned base layer, e.g. "block_13_expand";
            "" freezes the whole base (only the classifier trains).
        train_batchnorm: train BatchNormalization layers of the fine-tuned part.
        dropout: dropout before the classifier.
    """

    alpha: float = 1.0
    weights: str = "imagenet"
    trainable_from: str = ""
    train_batchnorm: bool = False
    dropout: float = 0.0

    def check(self, section):
        if self.alpha <= 0:
            _fail(f"{section}.alpha", "> 0", self.alpha)
        if not self.weights:
            _fail(f"{section}.weights", '"imagenet", "none" or a .h5 path', self.weights)
        if not 0.0 <= self.dropout < 1.0:
            _fail(f"{section}.dropout", "in [0, 1)", self.dropout)


OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """[train]: the float training phase.

    Attributes:
        epochs: float training epochs (0: skip, e.g. to prune a trained model).
        optimizer: "adam" or "sgd" (with momentum 0.9), for every phase.
        learning_rate: peak learning rate of the float phase.
        lr_schedule: "constant" or "cosine" (decay to 0 over the phase).
        steps_per_epoch: batches per epoch (0: the whole training split).
        cache_features: compute the activations of the frozen part of the
            model (everything before `model.trainable_from`, or the whole
            base) once, and train the trainable top on them. The float and
            pruning phases then cost a fraction of a full forward pass.
        cache_engine: "litert" (the frozen part converted to .tflite and run
            by XNNPACK, ~4x faster on CPU) or "keras".
        cache_passes: passes over the training split to cache; with
            `data.augment`, each pass is a different augmentation.
    """

    epochs: int = 3
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    steps_per_epoch: int = 0
    cache_features: bool = True
    cache_engine: str = "litert"
    cache_passes: int = 1

    def check(self, section):
        _at_least(self, section, epochs=0, steps_per_epoch=0, cache_passes=1)
        _one_of(self, section, optimizer=OPTIMIZERS, lr_schedule=LR_SCHEDULES, cache_engine=CACHE_ENGINES)
        _positive(self, section, "learning_rate")


PRUNE_SCHEDULES = ("polynomial", "constant")


@dataclasses.dataclass(frozen=True)
class PruneSection:
    """[prune]: the pruning phase (magnitude pruning, `EdgeTrainer`).

    Attributes:
        enabled: run the pruning phase and export pruned variants.
        target_sparsity: final fraction of zeros of the pruned layers.
        initial_sparsity: sparsity at the start of a polynomial ramp.
        schedule: "polynomial" (ramp from initial to target) or "constant".
        ramp_fraction: share of the phase the polynomial ramp takes; the rest
            fine-tunes at the target sparsity.
        power: exponent of the polynomial ramp.
        mask_updates: how many times the masks are recomputed over the ramp.
        epochs: pruning-phase epochs.
        learning_rate: learning rate of the pruning phase.
        policy: which layers: "all", "skip_first_last" or "pointwise".
            Frozen layers are never pruned (they could not recover).
    """

    enabled: bool = True
    target_sparsity: float = 0.75
    initial_sparsity: float = 0.0
    schedule: str = "polynomial"
    ramp_fraction: float = 0.67
    power: float = 3.0
    mask_updates: int = 10
    epochs: int = 2
    learning_rate: float = 3e-4
    policy: str = "all"

    def check(self, section):
        for key in ("target_sparsity", "initial_sparsity"):
            if not 0.0 <= getattr(self, key) < 1.0:
                _fail(f"{section}.{key}", "in [0, 1)", getattr(self, key))
        if self.enabled and self.target_sparsity == 0.0:
            _fail(f"{section}.target_sparsity", "> 0 when pruning is enabled", self.target_sparsity)
        if self.initial_sparsity > self.target_sparsity:
            _fail(f"{section}.initial_sparsity", f"<= target_sparsity ({self.target_sparsity})", self.initial_sparsity)
        if not 0.0 < self.ramp_fraction <= 1.0:
            _fail(f"{section}.ramp_fraction", "in (0, 1]", self.ramp_fraction)
        _one_of(self, section, schedule=PRUNE_SCHEDULES, policy=POLICIES)
        _at_least(self, section, mask_updates=1, epochs=1 if self.enabled else 0)
        _positive(self, section, "learning_rate")
        _positive(self, section, "power")


@dataclasses.dataclass(frozen=True)
class QatSection:
    """[qat]: quantization-aware fine-tuning (TFMOT, through `EdgeTrainer`).

    QAT always runs on the whole model with uncached data (the quantized
    network is the whole network); `steps_per_epoch` bounds its cost.

    Attributes:
        epochs: QAT epochs (0: no QAT; quantized variants come from
            post-training int8 calibration only).
        steps_per_epoch: batches per QAT epoch (0: the whole training split).
        learning_rate: QAT learning rate (small: the weights are trained).
        quantize_float: QAT the float (unpruned) model: variant "qat_int8".
        quantize_pruned: QAT the pruned model with the prune-preserving
            scheme: variant "pqat_int8".
        skip_layers: layers left in float during QAT (and so in the QAT
            .tflite files), e.g. a conv layer with its BatchNorm and
            activation: TFMOT quantizes a BatchNorm only together with the
            conv before it.
    """

    epochs: int = 1
    steps_per_epoch: int = 0
    learning_rate: float = 1e-4
    quantize_float: bool = True
    quantize_pruned: bool = True
    skip_layers: tuple = ()

    def check(self, section):
        _at_least(self, section, epochs=0, steps_per_epoch=0)
        _positive(self, section, "learning_rate")
        if any(not isinstance(name, str) or not name for name in self.skip_layers):
            _fail(f"{section}.skip_layers", "a list of layer names", list(self.skip_layers))


@dataclasses.dataclass(frozen=True)
class ExportSection:
    """[export]: which .tflite files to write and how to verify them.

    Attributes:
        conversions: conversions of the float model; each file is named
            after its conversion (e.g. "int8.tflite").
        pruned_conversions: conversions of the pruned model, named
            "pruned_<conversion>".
        io_dtype: input/output dtype of int8 files: "float32", "int8", "uint8".
        representative_examples: training images used for int8 calibration.
        verify_examples: validation images each file is checked on.
        min_agreement: refuse a file whose top-1 agreement with the Keras
            model is below this (0 disables the check).
        int8_float_layers: layers that post-training `int8` files keep in
            float (selective quantization, see `edgekeras.litert.convert`);
            needs io_dtype = "float32".
    """

    conversions: tuple = ("float32", "float16", "dynamic_int8", "int8")
    pruned_conversions: tuple = ("float32", "sparse_float32", "int8")
    io_dtype: str = "float32"
    representative_examples: int = 256
    verify_examples: int = 256
    min_agreement: float = 0.0
    int8_float_layers: tuple = ()

    def check(self, section):
        if any(not isinstance(name, str) or not name for name in self.int8_float_layers):
            _fail(f"{section}.int8_float_layers", "a list of layer names", list(self.int8_float_layers))
        if self.int8_float_layers and self.io_dtype != "float32":
            _fail(f"{section}.int8_float_layers", 'empty unless io_dtype = "float32"', list(self.int8_float_layers))
        for key in ("conversions", "pruned_conversions"):
            values = getattr(self, key)
            for value in values:
                if value not in CONVERSIONS:
                    _fail(f"{section}.{key}", f"a list of {', '.join(CONVERSIONS)}", list(values))
            if len(set(values)) != len(values):
                _fail(f"{section}.{key}", "a list without duplicates", list(values))
        if "float32" not in self.conversions:
            _fail(f"{section}.conversions", 'a list that includes "float32" (the reference)', list(self.conversions))
        _one_of(self, section, io_dtype=IO_DTYPES)
        _at_least(self, section, representative_examples=1, verify_examples=1)
        if not 0.0 <= self.min_agreement <= 1.0:
            _fail(f"{section}.min_agreement", "in [0, 1]", self.min_agreement)


@dataclasses.dataclass(frozen=True)
class EvaluateSection:
    """[evaluate]: LiteRT evaluation of every exported file.

    Attributes:
        split: "test" (final numbers) or "validation".
        max_examples: evaluate on the first N examples (0: the whole split).
        num_threads: interpreter threads for the accuracy pass.
        latency_threads: thread counts to measure batch-1 latency with.
        latency_runs: timed runs per thread count (>= 50).
        warmup: untimed runs first.
        progress: show progress bars.
    """

    split: str = "test"
    max_examples: int = 0
    num_threads: int = 2
    latency_threads: tuple = (1, 2)
    latency_runs: int = 50
    warmup: int = 10
    progress: bool = True

    def check(self, section):
        _one_of(self, section, split=("test", "validation"))
        _at_least(self, section, max_examples=0, num_threads=1, latency_runs=50, warmup=0)
        if not self.latency_threads or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in self.latency_threads):
            _fail(f"{section}.latency_threads", "a non-empty list of positive integers", list(self.latency_threads))


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """[report]: which variant holds each of the seed's four roles.

    Values are variant names: float conversions by their name ("int8"),
    pruned ones as "pruned_<conversion>", QAT ones "qat_int8" and
    "pqat_int8"; "" leaves the role empty.
    """

    original: str = "float32"
    quantized: str = "qat_int8"
    pruned: str = "pruned_float32"
    pruned_quantized: str = "pqat_int8"

    def check(self, section):
        pass


@dataclasses.dataclass(frozen=True)
class DistributeSection:
    """[distribute]: the `tf.distribute` strategy training runs under.

    Attributes:
        strategy: "default" (one device), "mirrored" (`MirroredStrategy`
            over the local devices) or "multi_worker"
            (`MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`:
            start the same command once per worker, each with its own
            `TF_CONFIG`; only the chief writes the run directory).
        devices: for "mirrored", device names such as ["/gpu:0", "/gpu:1"]
            ([]: every local GPU, else the CPU).
        communication: for "multi_worker": "auto", "ring" (CPUs) or "nccl".
    """

    strategy: str = "default"
    devices: tuple = ()
    communication: str = "auto"

    def check(self, section):
        _one_of(self, section, strategy=STRATEGIES, communication=("auto", "ring", "nccl"))
        if any(not isinstance(d, str) or not d for d in self.devices):
            _fail(f"{section}.devices", "a list of device names such as \"/gpu:0\"", list(self.devices))
        if self.devices and self.strategy != "mirrored":
            _fail(f"{section}.devices", 'empty unless strategy = "mirrored"', list(self.devices))


def _at_least(obj, section, **minimums):
    for key, minimum in minimums.items():
        value = getattr(obj, key)
        if value < minimum:
            _fail(f"{section}.{key}", f"an integer >= {minimum}", value)


def _positive(obj, section, key):
    if not getattr(obj, key) > 0:
        _fail(f"{section}.{key}", "> 0", getattr(obj, key))


def _one_of(obj, section, **choices):
    for key, allowed in choices.items():
        if getattr(obj, key) not in allowed:
            _fail(f"{section}.{key}", "one of " + ", ".join(repr(a) for a in allowed), getattr(obj, key))


_SECTIONS = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "prune": PruneSection,
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
        names = list(self.export.conversions)
        if self.qat.epochs and self.qat.quantize_float:
            names.append("qat_int8")
        if self.prune.enabled:
            names += [f"pruned_{c}" for c in self.export.pruned_conversions]
            if self.qat.epochs and self.qat.quantize_pruned:
                names.append("pqat_int8")
        return names

    def roles(self):
        """{variant name: role} for every exported variant."""
        roles = {name: "other" for name in self.variant_names()}
        for role in ("original", "quantized", "pruned", "pruned_quantized"):
            name = getattr(self.report, role)
            if name:
                roles[name] = role
        return roles

    def check(self):
        produced = self.variant_names()
        used = {}
        for role in ("original", "quantized", "pruned", "pruned_quantized"):
            name = getattr(self.report, role)
            if not name:
                continue
            if name not in produced:
                needs = _variant_needs(name)
                fix = f"{name!r} needs {needs}: set that, or" if needs else "Name one of those, or"
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
            raise ConfigError('Config key `report.original` must name the float reference variant, e.g. "float32". Received: report.original=\'\'')


def _variant_needs(name):
    """The config keys that make the variant `name`, or "" for a name no config makes."""
    if name == "qat_int8":
        return "`qat.epochs` > 0 and `qat.quantize_float` = true"
    if name == "pqat_int8":
        return "`prune.enabled` = true, `qat.epochs` > 0 and `qat.quantize_pruned` = true"
    if name.startswith("pruned_") and name[len("pruned_"):] in CONVERSIONS:
        return f"`prune.enabled` = true and {name[len('pruned_'):]!r} in `export.pruned_conversions`"
    if name in CONVERSIONS:
        return f"{name!r} in `export.conversions`"
    return ""


def _convert(value, hint, key):
    """Checks a TOML value against a dataclass field type; returns it converted."""
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
            _fail(key, "a list", value)
        return tuple(value)
    raise TypeError(f"unsupported config field type {hint!r} for {key}")  # pragma: no cover


def _parse_section(name, cls, values, source):
    if not isinstance(values, dict):
        raise ConfigError(f"Config section [{name}] in {source} must be a table. Received: {name}={values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"Unknown key `{unknown[0]}` in section [{name}] of {source}. "
            f"Valid keys of [{name}]: {', '.join(sorted(fields))}.{_did_you_mean(unknown[0], fields)}"
        )
    converted = {key: _convert(value, hints[key], f"{name}.{key}") for key, value in values.items()}
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
    sections = {name: _parse_section(name, cls, values.get(name, {}), source) for name, cls in _SECTIONS.items()}
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


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def config_to_toml(config, header=""):
    """Writes a `Config` back as TOML (every key, defaults included).

    `load_config` of the result gives an equal `Config`.
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
