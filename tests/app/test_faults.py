"""Fault injection, the small case: a real `edgekeras run` killed with SIGKILL, then resumed.

The slow sweep (every phase boundary plus random points, on real CIFAR-10) is
`benchmarks/fault_injection.py` (`make faults`).
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from edgekeras.app.config import config_to_toml
from edgekeras.app.pipeline import verify_run_dir

from test_pipeline import tiny_config

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def run_command(config_path, *, kill_at=None, timeout=600):
    """Runs `edgekeras run`; with `kill_at`, SIGKILLs it when a line contains that text.

    Returns `(killed, output)`.
    """
    environment = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgekeras", "run", "--config", str(config_path), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if kill_at is not None and kill_at in line:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=timeout)
                return True, "".join(lines)
        assert process.wait(timeout=timeout) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    return False, "".join(lines)


# Four real runs in subprocesses (~4 min on 2 cores): `make test-slow`. The default suite's resume test
# (tests/app/test_pipeline.py) kills a run in-process during export.
@pytest.mark.slow
def test_sigkill_during_training_and_export_then_resume(tiny_tfds_dir, tmp_path):
    config = tiny_config(tiny_tfds_dir, tmp_path, evaluate={"progress": False})
    path = tmp_path / "tiny.toml"
    path.write_text(config_to_toml(config))
    run_dir = tmp_path / "tiny"

    killed, _ = run_command(path, kill_at="QAT of the pqat model")
    assert killed
    state = json.loads((run_dir / "state.json").read_text())
    assert not state["finished"] and state["exports"] == {}

    killed, output = run_command(path, kill_at="exported int8")
    assert killed and "resuming the run" in output and "reusing the cached train activations" in output
    before, after = output.split("QAT of the pqat model")
    assert " - loss: " in after and " - loss: " not in before  # only the killed phase trains again

    killed, output = run_command(path)
    assert not killed and "reusing tflite/float32.tflite" in output and "reusing tflite/int8.tflite" in output
    assert verify_run_dir(run_dir) == []
    report = json.loads((run_dir / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["float32", "int8", "qat_int8", "pruned_float32", "pqat_int8"]
    assert json.loads((run_dir / "state.json").read_text())["attempts"] == 3

    _, output = run_command(path)
    assert "nothing to do" in output and "| pqat_int8 |" in output
