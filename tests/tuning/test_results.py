"""Tests of the search results: `TrialResult`, `load_results`, `pareto_front`, `format_results`."""

import json
import math

from edgekeras.tuning import OBJECTIVE, Budget, TrialResult, format_results, load_results, pareto_front
from edgekeras.tuning.results import write_summary


def _result(trial_id, accuracy, gzip_bytes, *, over_budget=(), keras_accuracy=0.5, **hyperparameters):
    metrics = {
        "val_tflite_accuracy": accuracy,
        "val_keras_accuracy": keras_accuracy,
        "sparsity": 0.5,
        "gzip_bytes": float(gzip_bytes),
        "size_bytes": float(gzip_bytes) * 2,
        "latency_ms": 1.5,
        "within_budget": 0.0 if over_budget else 1.0,
        "score": accuracy - 2.0 if over_budget else accuracy,
    }
    return TrialResult(
        trial_id=trial_id, status="COMPLETED", hyperparameters=dict(hyperparameters), metrics=metrics,
        over_budget=list(over_budget), conversion="int8", epochs={"float": 1, "prune": 1, "qat": 0},
        trial_dir=f"trial_{trial_id}", tuner_id="tuner0", tflite_path=f"trial_{trial_id}/model.tflite",
        model_path="", seconds=3.0,
    )


def _write(project, result, status=None):
    trial_dir = project / f"trial_{result.trial_id}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text(json.dumps(result.to_dict()))
    if status is not None:
        (trial_dir / "trial.json").write_text(json.dumps({"status": status}))


def test_load_results_ranks_best_first_and_takes_the_status_from_keras_tuner(tmp_path):
    _write(tmp_path, _result("0", 0.6, 1000))
    _write(tmp_path, _result("1", 0.9, 2000), status="COMPLETED")
    _write(tmp_path, _result("2", 0.8, 500), status="FAILED")
    (tmp_path / "trial_3").mkdir()
    (tmp_path / "trial_3" / "result.json").write_text('{"trial_id": "3", ')  # torn write: skipped
    results = load_results(tmp_path)
    assert [r.trial_id for r in results] == ["1", "2", "0"]
    assert [r.status for r in results] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert results[0] == _result("1", 0.9, 2000)


def test_load_results_of_an_empty_project_is_empty(tmp_path):
    assert load_results(tmp_path / "missing") == []


def test_pareto_front_keeps_the_trials_nothing_beats_on_accuracy_and_size():
    results = [_result("0", 0.9, 2000), _result("1", 0.8, 1000), _result("2", 0.7, 1500), _result("3", 0.9, 2500)]
    assert [r.trial_id for r in pareto_front(results)] == ["0", "1"]


def test_format_results_marks_the_front_and_the_budget():
    results = [
        _result("0", 0.9, 2000, learning_rate=0.001, **{"tuner/epochs": 2}),
        _result("1", 0.7, 3000, over_budget=["gzip_bytes"], keras_accuracy=math.nan, learning_rate=0.01),
    ]
    lines = format_results(results).splitlines()
    assert lines[0].split() == [
        "trial", "score", "tflite", "acc", "keras", "acc", "gzip", "KB", "ms", "sparsity", "learning_rate", "notes",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:2] == ["0", "0.9000"] and lines[2].endswith("pareto")
    assert " - " in lines[3] and lines[3].endswith("over budget: gzip_bytes")
    assert "tuner/epochs" not in lines[0]
    assert len(format_results(results, top=1).splitlines()) == 3


def test_trial_result_properties_and_summary_line():
    within, over = _result("0", 0.9, 2000), _result("1", 0.7, 3000, over_budget=["gzip_bytes"])
    assert within.within_budget and not over.within_budget
    assert within.score == 0.9 and over.score < 0
    assert ".tflite val accuracy 0.9000 (Keras 0.5000), 2000 B gzipped" in within.summary_line()
    assert over.summary_line().endswith("OVER BUDGET (gzip_bytes)")


def test_write_summary_records_the_ranking_and_the_front(tmp_path):
    results = [_result("1", 0.9, 2000), _result("0", 0.8, 1000), _result("2", 0.7, 1500)]
    write_summary(tmp_path, results, objective=OBJECTIVE, budget=Budget(max_gzip_bytes=2e6))
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["objective"] == {"name": "score", "direction": "max"}
    assert summary["budget"] == {"max_gzip_bytes": 2_000_000, "max_latency_ms": None}
    assert summary["best_trial"] == "1" and summary["pareto_front"] == ["1", "0"]
    assert [t["trial_id"] for t in summary["trials"]] == ["1", "0", "2"]
