"""The README's fit-loop example runs as written (real CIFAR-10 copy and weights); its headline table is the committed report's."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_fit_loop_example():
    assert any("MagnitudePruning" in block and "EdgeTrainer" in block for block in python_blocks())


@pytest.mark.slow
@pytest.mark.real_data
def test_readme_fit_loop_example_runs(shared_data, tmp_path):
    tfds_dir, weights = shared_data["tfds"], shared_data["weights"]
    # README.md marks this block "run by tests/test_readme.py::test_readme_fit_loop_example_runs".
    block = next(b for b in python_blocks() if "MagnitudePruning" in b and "EdgeTrainer" in b)
    script = tmp_path / "example.py"
    script.write_text(block)
    env = dict(os.environ, TFDS_DATA_DIR=str(tfds_dir), EDGEKERAS_WEIGHTS=str(weights))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prune_preserve sparsity after each phase" in result.stdout
    assert (tmp_path / "runs" / "readme" / "pqat.h5").is_file()


def test_readme_result_tables_match_the_reference_reports():
    # Published figures come from benchmarks/results/<config>/report.json (benchmarks/readme_tables.py).
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "<!-- headline: default -->" in README.read_text()
