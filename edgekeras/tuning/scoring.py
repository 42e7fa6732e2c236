"""How each `EdgeTuner` trial's deployed file is made and scored.

What ships is the .tflite file, whose accuracy can differ from the Keras
model's after pruning and quantization, so a trial is judged on that file:
`TrialScoring.export` writes it (`edgekeras.litert.export_tflite`: int8 from
the QAT ranges when QAT ran, else the configured conversion) and
`TrialScoring.score` runs it with LiteRT on the **validation** data
(`edgekeras.litert.evaluate_tflite`: accuracy, gzip size, latency, sparsity)
and folds the `Budget` into the objective "score".

Example:

```python
import numpy as np
from edgekeras import keras
from edgekeras.tuning import Budget
from edgekeras.tuning.scoring import TrialScoring

inputs = keras.Input((8, 8, 3))
model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
images, labels = np.random.rand(32, 8, 8, 3).astype("float32"), np.random.randint(0, 2, 32)
scoring = TrialScoring(conversion="dynamic_int8", budget=Budget(max_gzip_bytes=50_000), eval_threads=1)
scoring.export(model, "/tmp/trial.tflite", {"qat": 0}, images, (images, labels))
metrics = scoring.score("/tmp/trial.tflite", (images, labels), histories={})
print(metrics["score"], metrics["within_budget"])
```
"""

from edgekeras.litert import check_conversion, check_float_layers, evaluate_tflite, export_tflite
from edgekeras.tuning.budget import Budget

__all__ = ["TrialScoring"]


def _check_budget(budget):
    """Returns `budget`, or an unlimited `Budget()` for None."""
    if budget is None:
        return Budget()
    if not isinstance(budget, Budget):
        raise ValueError(f"Argument `budget` must be an edgekeras.tuning.Budget or None. Received: budget={budget!r}")
    return budget


def _check_latency_runs(latency_runs):
    # Fewer timed runs make the median too noisy to compare trials by.
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 50:
        raise ValueError(f"Argument `latency_runs` must be an integer >= 50. Received: latency_runs={latency_runs!r}")


def _validation_images(validation_data):
    """The inputs of `validation_data`, a dataset or an `(x, y)` pair."""
    if isinstance(validation_data, tuple):
        return validation_data[0]
    return validation_data


def _last_validation_accuracy(histories):
    """The Keras `val_accuracy` after the last phase that validated, else NaN."""
    accuracy = float("nan")
    for history in histories.values():
        accuracy = history.get("val_accuracy", [accuracy])[-1]
    return accuracy


class TrialScoring:
    """The export and scoring settings of a search.

    Args:
        conversion: the .tflite conversion of trials without QAT (one of
            `edgekeras.litert.CONVERSIONS`); QAT trials export "int8".
        float_layers: layers that post-training `int8` files keep in float
            (selective quantization, see `edgekeras.litert.convert`).
        budget: a `Budget`, or None for no limits.
        representative_examples: calibration images for post-training int8.
        eval_threads: LiteRT threads for the accuracy pass.
        latency_threads: LiteRT threads for the batch-1 latency.
        latency_runs: timed latency runs (>= 50).

    Example:

    ```python
    scoring = TrialScoring(conversion="float16", budget=Budget(max_latency_ms=5.0))
    ```
    """

    def __init__(
        self,
        *,
        conversion="int8",
        float_layers=(),
        budget=None,
        representative_examples=256,
        eval_threads=2,
        latency_threads=1,
        latency_runs=50,
    ):
        check_conversion(conversion)
        self.budget = _check_budget(budget)
        _check_latency_runs(latency_runs)
        self.float_layers = check_float_layers(float_layers)
        self.conversion = conversion
        self.representative_examples = representative_examples
        self.eval_threads = eval_threads
        self.latency_threads = latency_threads
        self.latency_runs = latency_runs

    def export(self, model, tflite_path, epochs, calibration_data, validation_data):
        """Exports the deployed .tflite file, verified against the Keras model.

        Args:
            model: the deployed Keras model.
            tflite_path: where to write the file.
            epochs: `{phase: epochs}` the model trained.
            calibration_data: representative images for post-training int8.
            validation_data: data the exported file is verified on.

        Returns:
            The conversion the file was made with.
        """
        quantization_aware = bool(epochs.get("qat"))
        # QAT learned int8 ranges: only an int8 file deploys what it trained.
        conversion = "int8" if quantization_aware else self.conversion
        export_tflite(
            model,
            tflite_path,
            conversion,
            representative_data=calibration_data,
            representative_examples=self.representative_examples,
            verify_data=_validation_images(validation_data),
            # Applied to post-training int8 only: export_tflite knows a QAT model.
            float_layers=self.float_layers,
        )
        return conversion

    def score(self, tflite_path, validation_data, histories):
        """Evaluates the .tflite file on the validation data and applies the budget.

        Args:
            tflite_path: the deployed file.
            validation_data: a dataset of `(images, labels)` or an `(x, y)` pair.
            histories: `{phase: history dict}` of the training, for the Keras
                validation accuracy beside the file's.

        Returns:
            `{metric: value}` for every tag of `edgekeras.tuning.METRICS`.
        """
        evaluation = evaluate_tflite(
            tflite_path,
            validation_data,
            num_threads=self.eval_threads,
            latency_threads=(self.latency_threads,),
            latency_runs=self.latency_runs,
            progress=False,
        )
        metrics = {
            "val_tflite_accuracy": float(evaluation.accuracy),
            "val_keras_accuracy": float(_last_validation_accuracy(histories)),
            "sparsity": float(evaluation.sparsity),
            "gzip_bytes": float(evaluation.gzip_bytes),
            "size_bytes": float(evaluation.size_bytes),
            "latency_ms": float(evaluation.latency[self.latency_threads].median_ms),
        }
        metrics["within_budget"] = 0.0 if self.budget.violations(metrics) else 1.0
        metrics["score"] = self.budget.score(metrics["val_tflite_accuracy"], metrics)
        return metrics
