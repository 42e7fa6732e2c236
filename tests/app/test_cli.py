import os
import subprocess
import sys

import pytest

from edgekeras import EdgekerasError
from edgekeras.app import commands
from edgekeras.app.cli import main


def test_train_prints_test_accuracy(tiny_tfds_dir, capsys):
    status = main(
        [
            "train", "--dataset", "edgekeras_tiny_images", "--data-dir", tiny_tfds_dir, "--no-download",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--validation-size", "12",
        ]
    )
    assert status == 0
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith("test accuracy:")]
    assert line and "on 20 edgekeras_tiny_images test images" in line[0]
    assert 0.0 <= float(line[0].split()[2]) <= 1.0


def test_missing_data_is_one_clear_line_and_status_2(tmp_path, capsys):
    status = main(["train", "--data-dir", str(tmp_path), "--no-download", "--weights", "none"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekeras train: error: Dataset 'cifar10' is not prepared") and "Traceback" not in err


def test_missing_weights_file(tiny_tfds_dir, capsys):
    status = main(
        [
            "train", "--dataset", "edgekeras_tiny_images", "--data-dir", tiny_tfds_dir, "--weights", "/no/such.h5",
            "--validation-size", "12", "--image-size", "32",
        ]
    )
    assert status == 2
    assert "Received: weights='/no/such.h5'" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "edgekeras", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: edgekeras" in result.stdout and "train" in result.stdout


def test_an_edgekeras_error_is_one_line_and_status_2(monkeypatch, capsys):
    def refuse(args):
        raise EdgekerasError("Config key `x` must be y. Received: x=1")

    monkeypatch.setattr(commands, "run", refuse)
    assert main(["run", "--config", "any.toml"]) == 2
    assert capsys.readouterr().err == "edgekeras run: error: Config key `x` must be y. Received: x=1\n"


@pytest.mark.parametrize("bug", [ValueError("a library bug"), TypeError("another bug")])
def test_any_other_error_keeps_its_traceback(monkeypatch, bug):
    # Only errors edgekeras raises on purpose are shortened; a bug must show where it is.
    def crash(args):
        raise bug

    monkeypatch.setattr(commands, "run", crash)
    with pytest.raises(type(bug), match=str(bug)):
        main(["run", "--config", "any.toml"])


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\nfrom edgekeras.app.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: edgekeras" in result.stdout


@pytest.mark.parametrize("argument, value", [("--image-size", "0"), ("--epochs", "-1"), ("--batch-size", "many")])
def test_bad_numbers_are_usage_errors(argument, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", argument, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argument}: must be" in err and repr(value) in err and "Traceback" not in err


NATIVE_START_UP = ("oneDNN", "cuInit", "absl::InitializeLog", "cpu_feature_guard", "cuda drivers")


def _cli(*arguments):
    # TensorFlow's own defaults (conftest sets TF_CPP_MIN_LOG_LEVEL for the tests), so that
    # it prints its start-up lines and only the CLI can hide them.
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    return subprocess.run(
        [sys.executable, "-m", "edgekeras", *arguments], capture_output=True, text=True, timeout=300, env=environment
    )


def test_commands_hide_tensorflow_start_up_lines_unless_verbose(tmp_path):
    missing = str(tmp_path / "missing.toml")
    quiet = _cli("run", "--config", missing)
    assert quiet.returncode == 2
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekeras run: error:"), quiet.stderr[-2000:]
    assert not any(marker in quiet.stderr for marker in NATIVE_START_UP)

    verbose = _cli("run", "--config", missing, "--verbose")
    assert verbose.returncode == 2
    assert verbose.stderr.splitlines()[-1] == lines[0]
    # TensorFlow prints them on loading (absl's pre-initialisation warning, oneDNN's note); --verbose shows them.
    assert any(marker in verbose.stderr for marker in NATIVE_START_UP), verbose.stderr[-2000:]


@pytest.mark.parametrize("flags, verbose", [([], False), (["--verbose"], True)])
def test_run_verbose_reaches_the_pipeline_and_its_full_epoch_line(monkeypatch, flags, verbose):
    from edgekeras.app import stages
    from edgekeras.callbacks import EpochLine

    seen = {}

    def fake_run(config, **kwargs):
        seen.update(kwargs)
        raise EdgekerasError("stopped here")

    monkeypatch.setattr(commands.pipeline, "run", fake_run)
    assert main(["run", "--config", "configs/demo.toml", *flags]) == 2
    assert seen["verbose"] is verbose
    context = stages.RunContext(None, False, None, False, False, None, 0.0, verbose=verbose)
    context.path = lambda *parts: "logs"
    from edgekeras.compat import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    lines = [c for c in stages._fit_callbacks(context, "train", model) if isinstance(c, EpochLine)]
    assert [line.full for line in lines] == ([True] if verbose else [])
