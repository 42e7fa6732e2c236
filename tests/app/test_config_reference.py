"""docs/reference/config.md is what `edgekeras.app.config_reference` writes from the section dataclasses."""

import dataclasses
import pathlib
import re

import pytest

from edgekeras.app import config_reference
from edgekeras.app.config import _SECTIONS as RUN_SECTIONS
from edgekeras.app.sections import TuneSettings, TrainSection

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "reference" / "config.md"
SECTIONS = {**RUN_SECTIONS, "tune": TuneSettings}


def test_the_committed_page_is_the_generators_output():
    assert PAGE.read_text() == config_reference.render(), (
        "docs/reference/config.md is out of date: "
        "python -m edgekeras.app.config_reference > docs/reference/config.md"
    )


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_key_has_a_row_with_a_description(name):
    table = config_reference.describe_section(name, SECTIONS[name])
    for field in dataclasses.fields(SECTIONS[name]):
        row = re.search(rf"^\| `{field.name}` \|.*\| (.*) \|$", table, flags=re.M)
        assert row, f"[{name}] has no row for `{field.name}`"
        assert row.group(1).strip(), f"[{name}].{field.name} has no description in the section's Attributes"


def test_accepted_values_come_from_the_checks():
    table = config_reference.describe_section("train", TrainSection)
    assert re.search(r"^\| `optimizer` \| string \| `\"adam\"` \| one of 'adam', 'sgd' \|", table, flags=re.M)
    assert re.search(r"^\| `epochs` \| integer \| `3` \| an integer >= 0 \|", table, flags=re.M)


def test_tune_tables_list_the_library_arguments():
    page = config_reference.render()
    for key in ("learning_rate", "final_sparsity", "pruning_begin", "pruning_end", "qat_epochs",
                "max_gzip_bytes", "max_latency_ms"):
        assert f"| `{key}` |" in page
