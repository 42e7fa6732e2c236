"""Tests for edgekeras.app.variants: one home for the names of a run's .tflite variants."""

import ast
import dataclasses
import pathlib
import types

import pytest

from edgekeras.app import stages
from edgekeras.app.config import Config, ConfigError, parse_config
from edgekeras.app.roles import CANDIDATES
from edgekeras.app.variants import SOURCE_NAMES, SOURCES, parse_variant, variant_name, variant_needs, variants

APP = pathlib.Path(stages.__file__).parent
EVERY_VARIANT = [(source.name, conversion) for source in SOURCES for conversion in source.possible_conversions()]


def _all_on(**changes):
    """A config that trains every source, but for the sections' `changes`."""
    values = {"qat": {"epochs": 1, "quantize_float": True, "quantize_pruned": True}, "prune": {"enabled": True}}
    for section, keys in changes.items():
        values[section] = dict(values.get(section, {}), **keys)
    return parse_config(values)


@pytest.mark.parametrize("source, conversion", EVERY_VARIANT)
def test_every_name_reads_back_as_its_source_and_conversion(source, conversion):
    assert parse_variant(variant_name(source, conversion)) == (source, conversion)


def test_no_two_variants_share_a_name():
    names = [variant_name(source, conversion) for source, conversion in EVERY_VARIANT]
    assert len(set(names)) == len(names)


def test_sources_in_report_order_and_unknown_ones_refused():
    assert SOURCE_NAMES == ("float", "qat", "pruned", "pqat", "slim", "slim_pruned")
    message = r"Argument `source` must be one of float, qat, pruned, pqat, slim, slim_pruned\. Received: source='x'"
    with pytest.raises(ValueError, match=message):
        variant_name("x", "int8")
    assert parse_variant("qat_float32") is None and variant_needs("qat_float32") == ""


@pytest.mark.parametrize("switch_off", [{}, {"qat": {"epochs": 0}}, {"prune": {"enabled": False}, "report": {"pruned": ""}},
                                        {"qat": {"quantize_float": False}}, {"qat": {"quantize_pruned": False}}])
def test_the_export_stage_exports_what_the_config_names(switch_off):
    config = _all_on(**switch_off)
    trained = {source: None for source in SOURCE_NAMES}
    for _, source, _ in variants(config):
        trained[source] = f"model of {source}"
    jobs = stages._export_jobs(types.SimpleNamespace(config=config, models=trained))
    assert [name for name, _, _, _ in jobs] == config.variant_names()
    for name, model, conversion, source in jobs:
        assert (source, conversion) == parse_variant(name) and model == f"model of {source}"


def test_every_variant_a_config_makes_says_which_keys_make_it():
    config = _all_on()
    for name, source, conversion in variants(config):
        described = {s.name: s for s in SOURCES}[source]
        needs = variant_needs(name)
        assert all(f"`{key}`" in needs for key in described.requires)
        if isinstance(described.conversions, str):
            assert f"{conversion!r} in `{described.conversions}`" in needs


def test_a_role_naming_a_variant_the_config_does_not_make_names_the_keys():
    config = dataclasses.replace(Config(), report=dataclasses.replace(Config().report, pruned="pqat_int8"))
    config = dataclasses.replace(config, qat=dataclasses.replace(config.qat, quantize_pruned=False))
    with pytest.raises(ConfigError, match=r"'pqat_int8' needs `prune.enabled` = true, `qat.epochs` > 0 and "
                                          r"`qat.quantize_pruned` = true: set that"):
        config.check()


def test_auto_roles_choose_between_int8_files_of_a_post_training_and_a_qat_source():
    assert [parse_variant(name) for name in CANDIDATES["quantized"]] == [("float", "int8"), ("qat", "int8")]
    assert [parse_variant(name) for name in CANDIDATES["pruned_quantized"]] == [("pruned", "int8"), ("pqat", "int8")]


def _code_strings(path):
    """String constants of a module's code (docstrings left out), f-string pieces included."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("path", sorted(p for p in APP.glob("*.py") if p.name != "variants.py"), ids=lambda p: p.name)
def test_no_app_module_spells_a_variant_name(path):
    # A name spelled by hand ("qat_int8", f"pruned_{c}") is a second naming rule that a new source would miss.
    prefixes = {source.prefix for source in SOURCES if source.prefix}
    spelled = [
        text for text in _code_strings(path)
        if text in prefixes or (parse_variant(text) or ("float",))[0] != "float"
    ]
    assert spelled == []
