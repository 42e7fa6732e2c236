"""Fuzzing the config loader: any TOML input gives a valid `Config` or a `ConfigError` naming a key.

The generated configs mix the real sections and keys (with values near their
limits and values of every TOML type), unknown keys, unknown sections, nested
tables and sections that are not tables. Whatever comes in, `parse_config`,
`load_config` and `read_toml` must either return a valid config or raise
`ConfigError` (a `ValueError`) whose message names a key of the input, never
another exception. Runs are deterministic (`derandomize=True`) and write no
example database.
"""

import dataclasses
import datetime
import re
import string
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekeras.app.config import Config, ConfigError, config_to_toml, load_config, parse_config, read_toml
from edgekeras.distribute import STRATEGIES
from edgekeras.litert import CONVERSIONS, IO_DTYPES

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# {section: {key: default}} of every section of a run config.
SECTIONS = {
    field.name: {f.name: getattr(field.default, f.name) for f in dataclasses.fields(field.default)}
    for field in dataclasses.fields(Config)
    if field.name != "source"
}
# Strings the loader gives a meaning to, so that generated configs reach the
# cross-key checks, not only the type checks.
WORDS = sorted(
    {*CONVERSIONS, *IO_DTYPES, *STRATEGIES, *(f"pruned_{c}" for c in CONVERSIONS), "qat_int8", "pqat_int8",
     "adam", "sgd", "constant", "cosine", "litert", "keras", "polynomial", "all", "skip_first_last", "pointwise",
     "test", "validation", "auto", "ring", "nccl", "imagenet", "none", "cifar10", "block_16_expand", "/gpu:0",
     "", "a/b", ".."}
)

keys = st.text(alphabet=string.ascii_letters + string.digits + "_-. é", max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(WORDS),
    st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))])),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)


def plausible(default):
    """Values of the key's own type, around the limits the loader checks."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-2, 70) | st.sampled_from([0, 1, 32, 50, 10_000])
    if isinstance(default, float):
        return st.floats(-0.5, 2.0) | st.sampled_from([0.0, 0.5, 0.999, 1.0, 1e-4])
    if isinstance(default, str):
        return st.sampled_from(WORDS)
    return st.lists(st.sampled_from(WORDS) | st.integers(-1, 4), max_size=5)  # tuple keys


# Hypothesis favours the ends of a range, so a middle value marks the rare case.
rarely = st.integers(0, 9).map(lambda i: i == 5)


@st.composite
def configs(draw):
    """A dict as `tomllib` returns it: mostly real keys with plausible values, sometimes not."""
    values = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4)):
        if draw(rarely):
            values[section] = draw(toml_values)  # often not a table
            continue
        table = {}
        for key in draw(st.lists(st.sampled_from(sorted(SECTIONS[section])), unique=True, max_size=3)):
            table[key] = draw(toml_values if draw(rarely) else plausible(SECTIONS[section][key]))
        if draw(rarely):
            table[draw(keys)] = draw(toml_values)  # an unknown key, or a real one with any value
        values[section] = table
    if draw(rarely):
        values[draw(keys)] = draw(toml_values)  # an unknown section or top-level key
    return values


def input_paths(values):
    """Every key of the input, as "section" and "section.key"."""
    paths = set()
    for key, value in values.items():
        paths.add(key)
        if isinstance(value, dict):
            paths.update(f"{key}.{sub}" for sub in value)
    return paths


def named_paths(message):
    """The keys an error message names: `key`, `section.key`, "Unknown key `k` in section [s]", "Config section [s]"."""
    named = set(re.findall(r"`([^`]*)`", message))
    named.update(f"{s}.{k}" for k, s in re.findall(r"Unknown key `([^`]*)` in section \[([^\]]*)\]", message))
    named.update(re.findall(r"Config section \[([^\]]*)\]", message))
    return named


def check_outcome(values, load):
    """`load(values)` gives a valid Config, or a ConfigError naming a key of `values`."""
    try:
        config = load(values)
    except ConfigError as error:
        message = str(error)
        assert named_paths(message) & input_paths(values), f"the message names no key of the input: {message}"
        return None
    # Anything else propagates and fails the test.
    assert isinstance(config, Config)
    config.check()
    # A valid config survives being written out and read back.
    assert parse_config(tomllib.loads(config_to_toml(config))) == config
    return config


@FUZZ
@given(configs())
def test_parse_config_returns_a_config_or_a_config_error_naming_a_key(values):
    check_outcome(values, parse_config)


def _toml_string(text):
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )
    return f'"{escaped}"'


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # nan, inf and -inf are TOML too
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_string(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def to_toml_text(values):
    """TOML text for `values`: top-level keys first, then one [table] per section."""
    lines = [f"{_toml_string(k)} = {_toml(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for name, table in values.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_string(name)}]")
            lines.extend(f"{_toml_string(k)} = {_toml(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


@FUZZ
@given(values=configs())
def test_load_config_of_toml_files(values, tmp_path):
    path = tmp_path / "fuzz.toml"
    path.write_text(to_toml_text(values), encoding="utf-8")
    parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    config = check_outcome(parsed, lambda _: load_config(path))
    if config is not None:
        assert config.source == str(path)


def _mangled_toml(data):
    """Valid config text with a few bytes dropped or inserted."""
    raw = bytearray(data.draw(st.sampled_from([b"", b"[train]\nepochs = 1\n", b"[prune]\ntarget_sparsity = 0.5\nepochs = 2\n"])))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) and position < len(raw):
            del raw[position]
        else:
            inserted = st.binary(min_size=1, max_size=2) | st.sampled_from([b"[", b"]", b"=", b'"', b"\n", b"\xff"])
            raw[position:position] = data.draw(inserted)
    return bytes(raw)


@FUZZ
@given(data=st.data())
def test_read_toml_of_any_bytes(data, tmp_path):
    raw = data.draw(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode), st.just(None)))
    if raw is None:
        raw = _mangled_toml(data)
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    try:
        values = read_toml(path)
    except ConfigError as error:
        assert "is not valid TOML" in str(error) and str(path) in str(error), str(error)
        return
    assert isinstance(values, dict)
    check_outcome(values, parse_config)
