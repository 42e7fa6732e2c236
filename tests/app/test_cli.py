import subprocess
import sys

from edgekeras.app.cli import main


def test_train_prints_test_accuracy(tiny_tfds_dir, capsys):
    status = main(
        [
            "train", "--dataset", "edgekeras_tiny_images", "--data-dir", tiny_tfds_dir, "--no-download",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--validation-size", "12",
        ]
    )
    assert status == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("test accuracy:")]
    assert line and "on 20 edgekeras_tiny_images test images" in line[0]
    assert 0.0 <= float(line[0].split()[2]) <= 1.0


def test_missing_data_is_one_clear_line_and_status_2(tmp_path, capsys):
    status = main(["train", "--data-dir", str(tmp_path), "--no-download", "--weights", "none"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekeras train: error: Dataset 'cifar10' is not prepared") and "Traceback" not in err


def test_missing_weights_file(tiny_tfds_dir, capsys):
    status = main(
        ["train", "--dataset", "edgekeras_tiny_images", "--data-dir", tiny_tfds_dir, "--weights", "/no/such.h5", "--validation-size", "12",
         "--image-size", "32"]
    )
    assert status == 2
    assert "Received: weights='/no/such.h5'" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "edgekeras", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: edgekeras" in result.stdout and "train" in result.stdout
