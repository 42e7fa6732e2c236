"""docs/errors.md: every test it names exists."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


def references():
    return sorted(set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", DOC.read_text())))


def test_the_doc_names_tests():
    assert len(references()) > 30


@pytest.mark.parametrize("path, name", references(), ids=lambda value: str(value))
def test_named_test_exists(path, name):
    source = ROOT / path
    assert source.is_file(), f"{path} does not exist"
    assert re.search(rf"^def {name}\(", source.read_text(), flags=re.M), f"{path} has no test {name}"
