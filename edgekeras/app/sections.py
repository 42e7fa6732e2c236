"""The sections of `edgekeras run` and `edgekeras tune` configs, one frozen dataclass each.

Every section is a dataclass whose fields are its keys (with their defaults)
and whose `check(section)` validates values that have the right type but may
be out of range or not among the accepted choices. `edgekeras.app.config`
parses a TOML table into any of them with one parser (`parse_section`): it
rejects unknown keys, converts each value to its field's type, builds the
section and calls `check`. Messages are in edgekeras' usual form ("Config
key `train.epochs` must be ... Received: train.epochs=...").

Option names come from `edgekeras.choices`, so nothing here imports
TensorFlow. The [data] and [model] sections, which say what goes in (the
images and the model), are in `edgekeras.app.inputs`.

Example:

```python
from edgekeras.app.sections import TrainSection

TrainSection(epochs=5).check("train")  # passes; epochs=-1 raises ConfigError
```
"""

import dataclasses

from edgekeras.choices import (
    ALLOCATIONS, CACHE_ENGINES, CHANNEL_ALLOCATIONS, CONVERSIONS, IO_DTYPES, OPTIMIZERS, ORACLES, POLICIES, STRATEGIES,
)
from edgekeras.app.variants import variant_name
from edgekeras.errors import EdgekerasError

__all__ = [
    "BoolOrAuto", "ConfigError", "RunSection", "TrainSection", "PruneSection", "QatSection",
    "ExportSection", "EvaluateSection", "ReportSection", "DistributeSection", "TuneSettings", "list_requirement",
]


class ConfigError(EdgekerasError, ValueError):
    """A config file is unreadable, has an unknown key or a bad value."""


def _fail(key, requirement, value):
    raise ConfigError(f"Config key `{key}` must be {requirement}. Received: {key}={value!r}")


LAYER_NAMES = "a list of layer names"


def _listed(default, requirement):
    """A list-valued key: TOML gives a list, the section keeps a tuple.

    `requirement` is the message both for a value that is no list and for a
    list with a bad item, so `"Conv1"` and `[""]` get the same error.
    """
    return dataclasses.field(default=default, metadata={"requirement": requirement})


def list_requirement(cls, key):
    """What a list-valued key of `cls` must be (see `_listed`), or None for other keys."""
    return next((f.metadata.get("requirement") for f in dataclasses.fields(cls) if f.name == key), None)


def _at_least(obj, section, **minimums):
    for key, minimum in minimums.items():
        value = getattr(obj, key)
        if value < minimum:
            _fail(f"{section}.{key}", f"an integer >= {minimum}", value)


def _positive(obj, section, *keys):
    for key in keys:
        if not getattr(obj, key) > 0:
            _fail(f"{section}.{key}", "> 0", getattr(obj, key))


def _one_of(obj, section, **choices):
    for key, allowed in choices.items():
        if getattr(obj, key) not in allowed:
            _fail(f"{section}.{key}", "one of " + ", ".join(repr(a) for a in allowed), getattr(obj, key))


def _non_empty(obj, section, *keys):
    for key in keys:
        if not getattr(obj, key):
            _fail(f"{section}.{key}", "a non-empty string", getattr(obj, key))


def _items(obj, section, key, valid):
    """Fails with the key's `requirement` unless `valid(item)` holds for every item."""
    values = getattr(obj, key)
    if not all(valid(value) for value in values):
        _fail(f"{section}.{key}", list_requirement(type(obj), key), list(values))


def _is_name(value):
    return isinstance(value, str) and bool(value)


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


class BoolOrAuto:
    """The type of a key that takes true, false or "auto" (decided when the run starts)."""


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
        cache_features: true: compute the activations of the frozen part
            of the model (everything before `model.trainable_from`, or the
            whole base) once, and train the trainable top on them; the float
            and pruning phases then cost a fraction of a full forward pass,
            and augmentation is limited to `cache_passes` fixed passes.
            false: train on the images, augmented afresh every epoch.
            "auto" (default): true on a machine without a GPU, false with
            one (where the full forward pass is cheap), decided when the
            run starts.
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
    cache_features: BoolOrAuto = "auto"
    cache_engine: str = "litert"
    cache_passes: int = 1

    def check(self, section):
        _at_least(self, section, epochs=0, steps_per_epoch=0, cache_passes=1)
        _one_of(self, section, optimizer=OPTIMIZERS, lr_schedule=LR_SCHEDULES, cache_engine=CACHE_ENGINES)
        _positive(self, section, "learning_rate")


PRUNE_SCHEDULES = ("polynomial", "constant")
_CONVERSION_LIST = f"a list of {', '.join(CONVERSIONS)}"


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
        allocation: "uniform" (every pruned layer at the target, as TFMOT
            does) or "global" (one magnitude ranking over all pruned
            weights: the big 1x1 layers give up more than small ones).
        max_layer_sparsity: with "global", no layer goes beyond this
            fraction of zeros (0: no bound).
        lr_schedule: "constant" or "cosine" (decay to 0 over the phase,
            after the warm-up).
        warmup_fraction: share of the phase whose learning rate rises
            linearly from 0 (only with "cosine").
        trainable_from: first layer the pruning phase fine-tunes ("": the
            same layers as the float phase). Earlier than
            `model.trainable_from`, it lets a recipe with a frozen base
            prune (and so fine-tune) the base; its activations are cached
            at that cut like the float phase's.
        distill_weight: share of the pruning loss that follows the float
            model's softened outputs (knowledge distillation; 0: labels only).
        temperature: the softening temperature of the distillation.
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
    allocation: str = "uniform"
    max_layer_sparsity: float = 0.0
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    trainable_from: str = ""
    distill_weight: float = 0.0
    temperature: float = 4.0

    def check(self, section):
        if not 0.0 <= self.distill_weight <= 1.0:
            _fail(f"{section}.distill_weight", "in [0, 1]", self.distill_weight)
        for key in ("target_sparsity", "initial_sparsity", "warmup_fraction"):
            if not 0.0 <= getattr(self, key) < 1.0:
                _fail(f"{section}.{key}", "in [0, 1)", getattr(self, key))
        if self.enabled and self.target_sparsity == 0.0:
            _fail(f"{section}.target_sparsity", "> 0 when pruning is enabled", self.target_sparsity)
        if self.initial_sparsity > self.target_sparsity:
            _fail(f"{section}.initial_sparsity", f"<= target_sparsity ({self.target_sparsity})", self.initial_sparsity)
        if not 0.0 < self.ramp_fraction <= 1.0:
            _fail(f"{section}.ramp_fraction", "in (0, 1]", self.ramp_fraction)
        _one_of(self, section, schedule=PRUNE_SCHEDULES, policy=POLICIES, allocation=ALLOCATIONS,
                lr_schedule=LR_SCHEDULES)
        if self.max_layer_sparsity and not (
            self.allocation == "global" and self.target_sparsity <= self.max_layer_sparsity < 1.0
        ):
            _fail(f"{section}.max_layer_sparsity",
                  f'0 (no bound) or in [target_sparsity, 1) with allocation = "global" '
                  f"(target_sparsity={self.target_sparsity}, allocation={self.allocation!r})", self.max_layer_sparsity)
        if self.warmup_fraction and self.lr_schedule != "cosine":
            _fail(f"{section}.warmup_fraction", '0 unless lr_schedule = "cosine"', self.warmup_fraction)
        _at_least(self, section, mask_updates=1, epochs=1 if self.enabled else 0)
        _positive(self, section, "learning_rate", "power", "temperature")


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
        lr_schedule: "constant" or "cosine" (decay to 0 over the QAT steps,
            so the last steps move the weights, and the ranges they fix, the
            least).
        quantize_float: QAT the float (unpruned) model: variant "qat_int8".
        quantize_pruned: QAT the pruned model with the prune-preserving
            scheme: variant "pqat_int8".
        skip_layers: layers left in float during QAT, e.g. a conv layer
            with its BatchNorm and activation: TFMOT quantizes a BatchNorm
            only together with the conv before it. They stay float in the
            QAT .tflite files only as a run from the model's input on: the
            converter quantizes a float layer whose input and output both
            carry QAT ranges.
        distill_weight: share of the QAT loss that follows the outputs of
            the model being quantized (its float self: knowledge
            distillation; 0: labels only). The teacher runs on every batch.
        temperature: the softening temperature of the distillation.
    """

    epochs: int = 1
    steps_per_epoch: int = 0
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    quantize_float: bool = True
    quantize_pruned: bool = True
    skip_layers: tuple = _listed((), LAYER_NAMES)
    distill_weight: float = 0.0
    temperature: float = 4.0

    def check(self, section):
        _at_least(self, section, epochs=0, steps_per_epoch=0)
        _positive(self, section, "learning_rate", "temperature")
        _one_of(self, section, lr_schedule=LR_SCHEDULES)
        _items(self, section, "skip_layers", _is_name)
        if not 0.0 <= self.distill_weight <= 1.0:
            _fail(f"{section}.distill_weight", "in [0, 1]", self.distill_weight)


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

    conversions: tuple = _listed(("float32", "float16", "dynamic_int8", "int8"), _CONVERSION_LIST)
    pruned_conversions: tuple = _listed(("float32", "sparse_float32", "int8"), _CONVERSION_LIST)
    io_dtype: str = "float32"
    representative_examples: int = 256
    verify_examples: int = 256
    min_agreement: float = 0.0
    int8_float_layers: tuple = _listed((), LAYER_NAMES)

    def check(self, section):
        _items(self, section, "int8_float_layers", _is_name)
        if self.int8_float_layers and self.io_dtype != "float32":
            _fail(f"{section}.int8_float_layers", 'empty unless io_dtype = "float32"', list(self.int8_float_layers))
        for key in ("conversions", "pruned_conversions"):
            _items(self, section, key, lambda value: value in CONVERSIONS)
            values = getattr(self, key)
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
    latency_threads: tuple = _listed((1, 2), "a non-empty list of positive integers")
    latency_runs: int = 50
    warmup: int = 10
    progress: bool = True

    def check(self, section):
        _one_of(self, section, split=("test", "validation"))
        _at_least(self, section, max_examples=0, num_threads=1, latency_runs=50, warmup=0)
        if not self.latency_threads:
            _fail(f"{section}.latency_threads", list_requirement(type(self), "latency_threads"), [])
        _items(self, section, "latency_threads", lambda t: not isinstance(t, bool) and isinstance(t, int) and t >= 1)


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """[report]: which variant holds each of the report's four roles.

    Values are variant names: float conversions by their name ("int8"),
    pruned ones as "pruned_<conversion>", QAT ones "qat_int8" and
    "pqat_int8"; "" leaves the role empty. `quantized` and
    `pruned_quantized` also take "auto" (their default): the role goes to
    whichever int8 file ("int8" or "qat_int8"; "pruned_int8" or
    "pqat_int8") is more accurate on the validation split, a tie to the
    post-training one (see `edgekeras.app.roles`).

    Attributes:
        original: the float reference variant, e.g. "float32".
        quantized: the quantized model's file, or "auto" ("int8" or
            "qat_int8", whichever is more accurate on the validation split).
        pruned: the pruned model's file, e.g. "pruned_float32".
        pruned_quantized: the pruned and quantized model's file, or "auto"
            ("pruned_int8" or "pqat_int8", chosen on the validation split).
    """

    original: str = variant_name("float", "float32")
    quantized: str = "auto"
    pruned: str = variant_name("pruned", "float32")
    pruned_quantized: str = "auto"

    def check(self, section):
        pass  # whether each role names an exported variant depends on other sections: `Config.check`


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
    devices: tuple = _listed((), 'a list of device names such as "/gpu:0"')
    communication: str = "auto"

    def check(self, section):
        _one_of(self, section, strategy=STRATEGIES, communication=("auto", "ring", "nccl"))
        _items(self, section, "devices", _is_name)
        if self.devices and self.strategy != "mirrored":
            _fail(f"{section}.devices", 'empty unless strategy = "mirrored"', list(self.devices))


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """[tune] of `edgekeras tune` configs: the search (oracle, trial count, phases, where results go).

    The sub-tables [tune.space] and [tune.budget] are not keys: `edgekeras.app.tune_config` parses them into a
    `edgekeras.tuning.SearchSpace` and a `Budget`. TOML has no null: 0 means "not set" for `initial_points` and `*_steps_per_epoch`.

    Attributes:
        oracle: "random", "bayesian" or "hyperband".
        max_trials: trials to run (random, bayesian).
        max_epochs: the longest float phase a trial gets (hyperband).
        factor: Hyperband's reduction factor.
        initial_points: random trials before Bayesian optimization models the objective (0: keras-tuner's default, 3 per hyperparameter).
        seed: seed of the oracle and of every trial's weight init.
        directory: parent directory of the project directory.
        project_name: the project directory's name (resumes when it exists).
        overwrite: delete an existing project instead of resuming it.
        float_epochs: float epochs per trial (not for hyperband).
        prune_epochs: pruning epochs per trial.
        conversion: .tflite conversion of trials without QAT.
        int8_float_layers: layers post-training int8 files keep in float.
        cache_features: train float and pruning phases on cached activations of the frozen prefix (once per search).
        cache_engine: "litert" or "keras".
        qat_steps_per_epoch: batches per QAT epoch (0: the whole split).
        channel_epochs: epochs of the channel-pruning phase of trials whose [tune.space] `target_latency` is below 1.
        channel_steps_per_epoch: batches per epoch of that phase, and of the pruning phase after it when caching (0: the whole split).
        channel_allocation: "latency" (by channel importance per latency saved) or "uniform" (one share for every group).
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
    int8_float_layers: tuple = _listed((), LAYER_NAMES)
    cache_features: bool = True
    cache_engine: str = "litert"
    qat_steps_per_epoch: int = 0
    channel_epochs: int = 1
    channel_steps_per_epoch: int = 0
    channel_allocation: str = "latency"
    prune_policy: str = "all"
    eval_threads: int = 2
    latency_threads: int = 1
    latency_runs: int = 50
    save_models: bool = True
    top: int = 10

    def check(self, section):
        _items(self, section, "int8_float_layers", _is_name)
        _at_least(
            self, section, max_trials=1, max_epochs=1, factor=2, initial_points=0, float_epochs=0, prune_epochs=0,
            qat_steps_per_epoch=0, channel_epochs=1, channel_steps_per_epoch=0, eval_threads=1, latency_threads=1, latency_runs=50, top=1,
        )
        _one_of(self, section, oracle=ORACLES, cache_engine=CACHE_ENGINES, prune_policy=POLICIES, conversion=CONVERSIONS,
                channel_allocation=CHANNEL_ALLOCATIONS)
        _non_empty(self, section, "directory", "project_name")
