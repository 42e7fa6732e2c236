"""The names of a run's .tflite variants: which trained model, converted how.

A variant is one trained model of the run (its *source*) converted one way:
"int8" is the float model's int8 file, "pruned_float32" the pruned model's
float32 file, "qat_int8" the quantization-aware model's int8 file. `SOURCES`
lists the sources in report order, each with the prefix of its variants'
names, the conversions it is exported with and the config keys that make the
run train it; a new source is one more `Source` there. The config checks
(`edgekeras.app.config`), the report's "auto" roles (`edgekeras.app.roles`)
and the export stage (`edgekeras.app.stages`) all name variants through this
module. Nothing here imports TensorFlow.

Example:

```python
from edgekeras.app.variants import parse_variant, variant_name

variant_name("pruned", "int8")  # 'pruned_int8'
parse_variant("pqat_int8")  # ('pqat', 'int8')
```
"""

import dataclasses

from edgekeras.choices import CONVERSIONS

__all__ = ["SOURCES", "SOURCE_NAMES", "Source", "parse_variant", "variant_name", "variant_needs", "variants"]


@dataclasses.dataclass(frozen=True)
class Source:
    """One trained model of a run, and how its variants are named and made.

    Attributes:
        name: the model's name (`context.models` key, `models/<name>`).
        prefix: what its variants' names start with ("" for the float model).
        conversions: the config key that lists its conversions (e.g.
            "export.conversions"), or the tuple of its fixed ones (a QAT
            model has one: "int8").
        requires: config keys that must all be true (non-zero) for the run
            to train it.
        needs: `requires` as a message states them ("" when none).
    """

    name: str
    prefix: str
    conversions: object
    requires: tuple = ()
    needs: str = ""

    def possible_conversions(self):
        """The conversions any config may give it."""
        return CONVERSIONS if isinstance(self.conversions, str) else tuple(self.conversions)

    def conversions_of(self, config):
        """The conversions `config` exports it with."""
        return tuple(_value(config, self.conversions)) if isinstance(self.conversions, str) else tuple(self.conversions)

    def trained_by(self, config):
        """Whether `config` trains this model."""
        return all(_value(config, key) for key in self.requires)


# Report order. The name of a variant is its source's prefix and its conversion.
SOURCES = (
    Source("float", "", "export.conversions"),
    Source("qat", "qat_", ("int8",), ("qat.epochs", "qat.quantize_float"), "`qat.epochs` > 0 and `qat.quantize_float` = true"),
    Source("pruned", "pruned_", "export.pruned_conversions", ("prune.enabled",), "`prune.enabled` = true"),
    Source("pqat", "pqat_", ("int8",), ("prune.enabled", "qat.epochs", "qat.quantize_pruned"),
           "`prune.enabled` = true, `qat.epochs` > 0 and `qat.quantize_pruned` = true"),
    Source("slim", "slim_", "channels.conversions", ("channels.enabled",), "`channels.enabled` = true"),
    Source("slim_pruned", "slim_pruned_", "channels.prune_conversions", ("channels.enabled", "channels.prune"),
           "`channels.enabled` = true and `channels.prune` = true"),
)
SOURCE_NAMES = tuple(source.name for source in SOURCES)
_BY_NAME = {source.name: source for source in SOURCES}


def _value(config, key):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def variant_name(source, conversion):
    """The name of `source`'s variant of `conversion`, e.g. ("pruned", "int8") -> "pruned_int8".

    Args:
        source: one of `SOURCE_NAMES`.
        conversion: a conversion (`edgekeras.choices.CONVERSIONS`).

    Returns:
        The variant's name (also its file's: `tflite/<name>.tflite`).

    Raises:
        ValueError: an unknown source.

    Example:

    ```python
    variant_name("float", "int8")  # 'int8'
    ```
    """
    if source not in _BY_NAME:
        raise ValueError(f"Argument `source` must be one of {', '.join(SOURCE_NAMES)}. Received: source={source!r}")
    return _BY_NAME[source].prefix + conversion


def variants(config, trained=None):
    """`[(name, source, conversion)]` of every variant a run exports, in report order.

    Args:
        config: a `edgekeras.app.config.Config`.
        trained: the names of the sources the run has a model of (the export
            stage's); default: those `config` trains.

    Returns:
        A list of `(variant name, source name, conversion)`.

    Example:

    ```python
    [name for name, _, _ in variants(Config())]  # ['float32', ..., 'qat_int8', 'pruned_float32', ...]
    ```
    """
    return [
        (source.prefix + conversion, source.name, conversion)
        for source in SOURCES
        if (source.trained_by(config) if trained is None else source.name in trained)
        for conversion in source.conversions_of(config)
    ]


def parse_variant(name):
    """`(source, conversion)` of the variant `name`, or None for a name no config makes.

    Example:

    ```python
    parse_variant("pruned_sparse_float32")  # ('pruned', 'sparse_float32')
    ```
    """
    for source in SOURCES:
        conversion = name[len(source.prefix):]
        if name.startswith(source.prefix) and conversion in source.possible_conversions():
            return source.name, conversion
    return None


def variant_needs(name):
    """The config keys that make the variant `name`, for a message; "" for a name no config makes.

    Example:

    ```python
    variant_needs("qat_int8")  # '`qat.epochs` > 0 and `qat.quantize_float` = true'
    ```
    """
    parsed = parse_variant(name)
    if parsed is None:
        return ""
    source, conversion = _BY_NAME[parsed[0]], parsed[1]
    listed = [f"{conversion!r} in `{source.conversions}`"] if isinstance(source.conversions, str) else []
    return " and ".join([source.needs] * bool(source.needs) + listed)
