"""`Budget`: the size and latency limits a deployed model must meet.

A search ranks trials by one number, the oracle's objective. `Budget.score`
folds the limits into that number: a trial within budget scores its
validation accuracy, a trial over budget scores below 0, so the oracle never
prefers a model that cannot ship.

Example:

```python
from edgekeras.tuning import Budget

budget = Budget(max_gzip_bytes=2_000_000)
print(budget.score(0.9, {"gzip_bytes": 1_500_000, "latency_ms": 3.0}))  # 0.9
```
"""

import numbers

__all__ = ["Budget"]


def _check_optional_positive(value, argument):
    """Returns `value` if it is None or a positive real number, else raises."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"Argument `{argument}` must be a positive number or None. Received: {argument}={value!r}")
    return value


class Budget:
    """Limits a deployed model must meet: gzip size and batch-1 latency.

    A trial within budget scores its validation accuracy (in [0, 1]). A trial
    over budget scores `accuracy - 1 - min(excess, 1)`, where `excess` is the
    largest relative overshoot (`value / limit - 1`): always below 0, so it
    can never beat a trial within budget, and better the closer it gets to
    the budget, which gives Bayesian optimization a slope to follow.

    Args:
        max_gzip_bytes: largest allowed gzip -9 size of the .tflite file, in
            bytes, or None.
        max_latency_ms: largest allowed median batch-1 latency, in ms, or None.

    Example:

    ```python
    budget = Budget(max_gzip_bytes=2_000_000, max_latency_ms=15.0)
    budget.score(0.9, {"gzip_bytes": 2_500_000, "latency_ms": 10.0})  # -0.35
    ```
    """

    _LIMITS = (("max_gzip_bytes", "gzip_bytes"), ("max_latency_ms", "latency_ms"))

    def __init__(self, max_gzip_bytes=None, max_latency_ms=None):
        # TOML and JSON hand over 2e6 as a float; a byte count reads better whole.
        if isinstance(max_gzip_bytes, float) and max_gzip_bytes.is_integer():
            max_gzip_bytes = int(max_gzip_bytes)
        self.max_gzip_bytes = _check_optional_positive(max_gzip_bytes, "max_gzip_bytes")
        self.max_latency_ms = _check_optional_positive(max_latency_ms, "max_latency_ms")

    def _overshoots(self, metrics):
        """`{metric: value / limit - 1}` for each metric over its limit."""
        overshoots = {}
        for limit_name, metric in self._LIMITS:
            limit = getattr(self, limit_name)
            if limit is not None and metrics[metric] > limit:
                overshoots[metric] = metrics[metric] / limit - 1.0
        return overshoots

    def violations(self, metrics):
        """Names of the metrics over their limit.

        Args:
            metrics: `{metric: value}` holding "gzip_bytes" and "latency_ms".

        Returns:
            A list such as `["gzip_bytes"]`; empty within budget.
        """
        return list(self._overshoots(metrics))

    def excess(self, metrics):
        """The largest relative overshoot over the limits (0 within budget).

        Args:
            metrics: `{metric: value}` holding "gzip_bytes" and "latency_ms".

        Returns:
            A float >= 0.
        """
        return max(self._overshoots(metrics).values(), default=0.0)

    def score(self, accuracy, metrics):
        """The objective value of a trial (see the class docstring).

        Args:
            accuracy: the deployed model's validation accuracy, in [0, 1].
            metrics: `{metric: value}` holding "gzip_bytes" and "latency_ms".

        Returns:
            `accuracy` within budget, else a number below 0.
        """
        excess = self.excess(metrics)
        if excess <= 0:
            return float(accuracy)
        return float(accuracy) - 1.0 - min(excess, 1.0)

    def get_config(self):
        """Returns the limits as a dict, for `from_config` and results.json."""
        return {"max_gzip_bytes": self.max_gzip_bytes, "max_latency_ms": self.max_latency_ms}

    @classmethod
    def from_config(cls, config):
        """Re-creates a `Budget` from `get_config()`'s dict."""
        return cls(**config)

    def __repr__(self):
        return f"Budget(max_gzip_bytes={self.max_gzip_bytes!r}, max_latency_ms={self.max_latency_ms!r})"
