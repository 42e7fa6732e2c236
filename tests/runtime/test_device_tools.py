import json
import shutil
import subprocess

import numpy as np
import pytest

from edgekeras.app.cli import main
from edgekeras.runtime import TFLiteFileError, benchmark, c_header, evaluate_folder, measure_latency, write_c_header


def test_benchmark_reports_percentiles_and_memory(colour_models):
    result = benchmark(colour_models["int8"], threads=(1, 2), runs=20, warmup=2)
    assert set(result.latency) == {1, 2}
    for latency in result.latency.values():
        assert 0 < latency.min_ms <= latency.median_ms <= latency.p90_ms <= latency.p99_ms <= latency.max_ms
        assert latency.runs == 20
    assert result.input_shapes == [[1, 16, 16, 3]] and result.input_dtypes == ["float32"]
    assert result.memory["peak_rss_mib"] >= result.memory["after_run"] > 0
    assert json.loads(json.dumps(result.to_dict()))["latency"]["1"]["runs"] == 20


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"threads": ()}, r"Argument `threads` must name at least one"),
        ({"threads": (0,)}, r"Argument `threads` must be a positive integer"),
        ({"runs": 0}, r"Argument `runs` must be a positive integer. Received: runs=0"),
        ({"warmup": -1}, r"Argument `warmup` must be a non-negative integer. Received: warmup=-1"),
    ],
)
def test_benchmark_argument_errors(colour_models, arguments, match):
    with pytest.raises(ValueError, match=match):
        benchmark(colour_models["int8"], **arguments)


def test_measure_latency_of_a_loaded_model(colour_models):
    assert measure_latency(colour_models["float32"], runs=5, warmup=0).runs == 5


@pytest.mark.parametrize("name", ["float32", "int8"])
def test_evaluate_folder_scores_the_trained_model(colour_models, colour_folder, name):
    result = evaluate_folder(colour_models[name], colour_folder, normalization="minus_one_to_one")
    assert result.examples == 30 and result.accuracy >= 0.9
    assert set(result.per_class) == {"blue", "green", "red"}


def test_evaluate_folder_with_more_classes_than_outputs(colour_models, colour_folder):
    with pytest.raises(ValueError, match=r"has 4 classes but the model has 3 outputs"):
        evaluate_folder(colour_models["int8"], colour_folder, class_names=["blue", "green", "red", "black"])


def test_c_header_holds_the_bytes_and_compiles(colour_models, tmp_path):
    data = colour_models["int8"].read_bytes()
    header = tmp_path / "colour_model.h"
    assert write_c_header(colour_models["int8"], header) == "colour_model"
    text = header.read_text()
    assert f"static const unsigned int colour_model_len = {len(data)};" in text
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to check that the header compiles")
    program = tmp_path / "check.c"
    program.write_text(
        '#include <stdio.h>\n#include "colour_model.h"\n'
        "int main(void) { unsigned long sum = 0; for (unsigned int i = 0; i < colour_model_len; i++) "
        'sum = sum * 31 + colour_model[i]; printf("%u %lu %d", colour_model_len, sum, (int)((unsigned long)colour_model % 16)); '
        "return 0; }\n"
    )
    subprocess.run([compiler, "-std=c11", "-o", str(tmp_path / "check"), str(program)], check=True, cwd=tmp_path)
    length, checksum, misalignment = subprocess.run(
        [str(tmp_path / "check")], capture_output=True, text=True, check=True
    ).stdout.split()
    expected = 0
    for byte in data:
        expected = (expected * 31 + byte) % 2**64
    assert (int(length), int(checksum), int(misalignment)) == (len(data), expected, 0)


def test_c_header_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Argument `name` must be a C identifier \(.*\). Received: name='1x'"):
        c_header(b"\0" * 8, "1x")
    not_tflite = tmp_path / "notes.tflite"
    not_tflite.write_bytes(b"hello world, not a flatbuffer")
    with pytest.raises(TFLiteFileError, match=r"Argument `tflite_path` is not a valid .tflite model"):
        write_c_header(not_tflite, tmp_path / "x.h")
    assert not (tmp_path / "x.h").exists()


def test_cli_bench_evaluate_and_c_array(colour_models, colour_folder, tmp_path, capsys):
    assert main(["bench", str(colour_models["int8"]), "--threads", "1", "--runs", "5", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| threads | median ms | p90 ms | p99 ms" in out and "peak" in out
    assert json.loads((tmp_path / "b.json").read_text())["latency"]["1"]["runs"] == 5

    assert main(["evaluate", str(colour_models["int8"]), "--images", str(colour_folder)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "top-1 accuracy" in line and "/30)" in line

    assert main(["c-array", str(colour_models["int8"]), "--output", str(tmp_path / "m.h")]) == 0
    assert "const unsigned char m[]" in capsys.readouterr().out


def test_cli_device_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "none.tflite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgekeras bench: error: Argument `model` must be a .tflite file") and err.count("\n") == 1
    assert main(["evaluate", str(tmp_path / "none.tflite"), "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("edgekeras evaluate: error:")


def test_image_batches_are_what_the_model_was_trained_on(colour_models, colour_folder):
    # The folder's preprocessing, run through the float file, agrees with the Keras-side scaling.
    from edgekeras.runtime import TFLiteModel, image_folder

    folder = image_folder(colour_folder, 16)
    batch, labels = next(folder.batches(30))
    predictions = np.argmax(TFLiteModel(colour_models["float32"]).predict(batch), axis=-1)
    assert np.mean(predictions == labels) >= 0.9
