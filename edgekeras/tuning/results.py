"""What a search produced: each trial's `TrialResult`, read back and ranked.

Every trial writes its `TrialResult` to `<project_dir>/trial_<id>/result.json`.
`load_results` reads them all back, best first, from any process sharing the
project directory; `pareto_front` keeps the trials nothing beats on both
deployed accuracy and gzip size; `format_results` prints them as a table.

Example:

```python
from edgekeras.tuning import format_results, load_results

results = load_results("runs/tune/search")
print(format_results(results, top=5))
```
"""

import dataclasses
import glob
import math
import os

from edgekeras import pareto
from edgekeras.io import atomic_write_json, read_json

__all__ = ["RESULT_FILE", "SUMMARY_FILE", "TrialResult", "load_results", "pareto_front", "format_results", "write_summary"]

# The file name of a trial's `TrialResult`, inside its trial directory.
RESULT_FILE = "result.json"
# The file name of a search's summary, inside its project directory.
SUMMARY_FILE = "results.json"


@dataclasses.dataclass
class TrialResult:
    """What one trial produced, as stored in its `result.json`.

    Attributes:
        trial_id: keras-tuner's trial id.
        status: keras-tuner's trial status ("COMPLETED", "FAILED", ...).
        hyperparameters: `{name: value}` of the trial.
        metrics: `{name: value}` for every tag of `edgekeras.tuning.METRICS`.
        over_budget: names of the metrics over their budget (empty within).
        conversion: the .tflite conversion of the deployed file.
        epochs: `{phase: epochs}` the trial trained ("float", "prune", "qat").
        trial_dir: the trial's directory.
        tuner_id: the tuner process that ran it (distributed: "tuner0", ...).
        tflite_path: the deployed .tflite file.
        model_path: the saved Keras model (.h5), or "" if not saved.
        seconds: wall time of the trial.

    Example:

    ```python
    result = TrialResult(
        trial_id="0", status="COMPLETED", hyperparameters={"learning_rate": 1e-3},
        metrics={"score": 0.9, "val_tflite_accuracy": 0.9, "gzip_bytes": 1e6}, over_budget=[],
        conversion="int8", epochs={"float": 1, "prune": 1, "qat": 0}, trial_dir="runs/trial_0",
        tuner_id="tuner0", tflite_path="runs/trial_0/model.tflite", model_path="", seconds=12.0,
    )
    assert result.within_budget and result.score == 0.9
    ```
    """

    trial_id: str
    status: str
    hyperparameters: dict
    metrics: dict
    over_budget: list
    conversion: str
    epochs: dict
    trial_dir: str
    tuner_id: str
    tflite_path: str
    model_path: str
    seconds: float

    @property
    def score(self):
        """The objective value; -inf for a result without one."""
        return self.metrics.get("score", float("-inf"))

    @property
    def within_budget(self):
        """True when no metric is over its budget."""
        return not self.over_budget

    def to_dict(self):
        """The result as a JSON-ready dict (the content of `result.json`)."""
        return dataclasses.asdict(self)

    def summary_line(self):
        """One line for the search log: accuracies, size, latency, sparsity, score."""
        m = self.metrics
        mark = f"  OVER BUDGET ({', '.join(self.over_budget)})" if self.over_budget else ""
        return (
            f".tflite val accuracy {m['val_tflite_accuracy']:.4f} (Keras {m['val_keras_accuracy']:.4f}), "
            f"{int(m['gzip_bytes'])} B gzipped, {m['latency_ms']:.3g} ms, sparsity {m['sparsity']:.2f}, "
            f"score {m['score']:.4f} [{self.seconds:.0f} s]{mark}"
        )


def load_results(project_dir):
    """Reads every trial's `result.json` (and status) from a project directory.

    Works for any process sharing the directory (a distributed worker, a
    later session), and for a search that is still running. A result file
    that cannot be read (being written, truncated) is skipped.

    Args:
        project_dir: `<directory>/<project_name>` of the search.

    Returns:
        A list of `TrialResult`, best score first.

    Example:

    ```python
    best = load_results("runs/tune/search")[0]
    print(best.trial_id, best.tflite_path)
    ```
    """
    results = []
    for path in glob.glob(os.path.join(os.fspath(project_dir), "trial_*", RESULT_FILE)):
        data = read_json(path)
        if data is None:
            continue
        # result.json is written before keras-tuner records how the trial
        # ended, so keras-tuner's own trial.json decides the status.
        state = read_json(os.path.join(os.path.dirname(path), "trial.json")) or {}
        data["status"] = state.get("status", data.get("status", "COMPLETED"))
        results.append(TrialResult(**data))
    return sorted(results, key=lambda r: (-r.score, r.trial_id))


def pareto_front(results):
    """The results no other beats on both deployed accuracy and gzip size.

    Args:
        results: `TrialResult`s with "val_tflite_accuracy" and "gzip_bytes"
            metrics.

    Returns:
        The results on the front, in the order given.

    Example:

    ```python
    front = pareto_front(load_results("runs/tune/search"))
    ```
    """
    variants = [
        {"name": r.trial_id, "accuracy": r.metrics["val_tflite_accuracy"], "gzip_bytes": r.metrics["gzip_bytes"]}
        for r in results
    ]
    names = set(pareto.pareto_front(variants))
    return [r for r in results if r.trial_id in names]


def _table_row(result, hyperparameter_names, front_ids):
    """The cells of one result's row in `format_results`."""
    m = result.metrics
    notes = []
    if result.trial_id in front_ids:
        notes.append("pareto")
    if result.over_budget:
        notes.append("over budget: " + ", ".join(result.over_budget))
    cells = [
        result.trial_id,
        f"{m['score']:.4f}",
        f"{m['val_tflite_accuracy']:.4f}",
        "-" if math.isnan(m["val_keras_accuracy"]) else f"{m['val_keras_accuracy']:.4f}",
        f"{m['gzip_bytes'] / 1000:.1f}",
        f"{m['latency_ms']:.3g}",
        f"{m['sparsity']:.2f}",
    ]
    for name in hyperparameter_names:
        value = result.hyperparameters.get(name, "")
        cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
    cells.append("; ".join(notes))
    return cells


def format_results(results, top=10, front=None):
    """A text table of the best `top` results (a Pareto-front mark per row).

    Args:
        results: `TrialResult`s, best first (as `load_results` returns them).
        top: how many rows to print.
        front: the Pareto front, if already computed (default: computed
            from `results`).

    Returns:
        The table as one string, a header and a rule line first.

    Example:

    ```python
    print(format_results(load_results("runs/tune/search"), top=5))
    ```
    """
    front_ids = {r.trial_id for r in (pareto_front(results) if front is None else front)}
    # Hyperband's bookkeeping values (tuner/epochs, ...) are not choices.
    names = sorted({name for r in results for name in r.hyperparameters if not name.startswith("tuner/")})
    header = ["trial", "score", "tflite acc", "keras acc", "gzip KB", "ms", "sparsity", *names, "notes"]
    rows = [_table_row(result, names, front_ids) for result in results[:top]]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_summary(project_dir, results, *, objective, budget):
    """Writes the search's summary, `<project_dir>/results.json` (atomic).

    Args:
        project_dir: `<directory>/<project_name>` of the search.
        results: the finished `TrialResult`s, best first.
        objective: the oracle's `keras_tuner.Objective`.
        budget: the search's `Budget`.

    Returns:
        The path written.

    Example:

    ```python
    from edgekeras.tuning import OBJECTIVE, Budget

    write_summary("runs/tune/search", load_results("runs/tune/search"), objective=OBJECTIVE, budget=Budget())
    ```
    """
    return atomic_write_json(
        os.path.join(os.fspath(project_dir), SUMMARY_FILE),
        {
            "objective": {"name": objective.name, "direction": objective.direction},
            "budget": budget.get_config(),
            "best_trial": results[0].trial_id if results else None,
            "pareto_front": [r.trial_id for r in pareto_front(results)],
            "trials": [r.to_dict() for r in results],
        },
    )
