"""Every Python block of the README and of the docs pages runs in a test, or says why it does not.

A block runs in the default suite unless the line before it is a marker:

    <!-- not run: why -->
    <!-- run by tests/<file>.py::<test> (why) -->

The unmarked blocks of one page run in order as one script (later blocks use
what earlier ones defined), in a fresh directory, on the tiny data they make;
the two pages that run quantization-aware training twice are `slow`.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- (?:(?P<not_run>not run): (?P<why>[^\n]*?)|run by (?P<test>tests/[\w/]+\.py::\w+)[^\n]*?) -->\n)?"
    r"```python\n(?P<code>.*?)```",
    re.S,
)


def blocks(text):
    """`[(marker, code)]` of the Python blocks of a Markdown text; marker is None, "not run: ..." or a test id."""
    found = []
    for match in BLOCK.finditer(text):
        marker = f"not run: {match.group('why')}" if match.group("not_run") else match.group("test")
        found.append((marker, match.group("code")))
    return found


def page_id(page):
    return str(page.relative_to(ROOT))


ALL_BLOCKS = [(page, index, marker, code) for page in PAGES for index, (marker, code) in enumerate(blocks(page.read_text()))]
RUN_PAGES = [page for page in PAGES if any(marker is None for marker, _ in blocks(page.read_text()))]
# Pages whose code trains with quantization-aware training twice, or measures a latency table and
# trains with QAT: about 35 s each on 2 idle cores.
SLOW_PAGES = ("docs/guides/channels.md", "docs/guides/phases.md", "docs/guides/qat-export.md")


def test_the_parser_sees_markers():
    text = (
        "```python\nrun = 1\n```\n"
        "<!-- not run: needs a camera -->\n```python\ncamera()\n```\n"
        "<!-- run by tests/test_readme.py::test_x (slow) -->\n```python\nx = 2\n```\n"
    )
    assert blocks(text) == [(None, "run = 1\n"), ("not run: needs a camera", "camera()\n"),
                            ("tests/test_readme.py::test_x", "x = 2\n")]


def test_the_docs_have_code_that_runs():
    assert len(ALL_BLOCKS) > 15 and len(RUN_PAGES) > 8


@pytest.mark.parametrize("page, index, marker, code", ALL_BLOCKS, ids=lambda v: page_id(v) if isinstance(v, pathlib.Path) else None)
def test_every_block_compiles(page, index, marker, code):
    compile(code, f"{page_id(page)} block {index}", "exec")


@pytest.mark.parametrize(
    "page, index, marker", [(p, i, m) for p, i, m, _ in ALL_BLOCKS if m], ids=lambda v: page_id(v) if isinstance(v, pathlib.Path) else None
)
def test_a_marked_block_says_why_or_names_its_test(page, index, marker):
    if marker.startswith("not run: "):
        assert len(marker) > len("not run: ") + 15, f"{page_id(page)} block {index}: say why it is not run"
        return
    path, name = marker.split("::")
    source = ROOT / path
    assert source.is_file() and re.search(rf"^def {name}\(", source.read_text(), flags=re.M), (
        f"{page_id(page)} block {index} names {marker}, which does not exist"
    )
    assert page_id(page) in source.read_text() or page.name in source.read_text(), f"{marker} does not read {page_id(page)}"


def run_script(code, cwd, env=None, timeout=600):
    script = cwd / "page.py"
    script.write_text(code)
    env = dict(os.environ, **(env or {}))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=pytest.mark.slow) if page_id(p) in SLOW_PAGES else p for p in RUN_PAGES], ids=page_id
)
def test_the_pages_code_runs(page, tmp_path):
    code = "\n".join(code for marker, code in blocks(page.read_text()) if marker is None)
    result = run_script(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def keras3_guide_block():
    page = ROOT / "docs" / "guides" / "keras3.md"
    return next(code for marker, code in blocks(page.read_text()) if marker and marker.endswith("::test_keras3_guide_example_runs"))


@pytest.mark.slow
@pytest.mark.real_data
def test_keras3_guide_example_runs(shared_data, tmp_path):
    # The whole recipe on a Keras 3 MobileNetV2 in docs/guides/keras3.md, on the real CIFAR-10 copy.
    result = run_script(keras3_guide_block(), tmp_path, timeout=1800,
                        env={"TFDS_DATA_DIR": str(shared_data["tfds"]), "EDGEKERAS_WEIGHTS": str(shared_data["weights"])})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prune_preserve sparsity after each phase" in result.stdout
    accuracy = float(re.search(r"int8 test accuracy: ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.6, result.stdout[-2000:]
    assert (tmp_path / "runs" / "readme_keras3" / "pqat_int8.tflite").is_file()
