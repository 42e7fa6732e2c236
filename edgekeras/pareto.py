"""The Pareto front of deployed models: nothing else is both more accurate and cheaper."""

__all__ = ["COSTS", "pareto_front"]

# What a variant costs: its download (gzip bytes) or its batch-1 latency.
COSTS = ("gzip_bytes", "latency_ms")


def pareto_front(variants, cost="gzip_bytes"):
    """Names of the variants no other variant beats on both accuracy and `cost`.

    Args:
        variants: dicts with `name`, `accuracy` and the `cost` key.
        cost: `"gzip_bytes"` (the download) or `"latency_ms"`.

    Returns:
        The names on the front, in the order of `variants`.

    Raises:
        ValueError: `cost` is not one of `COSTS`.

    Example:

    ```python
    rows = [{"name": "a", "accuracy": 0.9, "gzip_bytes": 10}, {"name": "b", "accuracy": 0.8, "gzip_bytes": 20}]
    assert pareto_front(rows) == ["a"]
    ```
    """
    if cost not in COSTS:
        raise ValueError(f"Argument `cost` must be one of {', '.join(COSTS)}. Received: cost={cost!r}")
    front = []
    for v in variants:
        dominated = any(
            o["accuracy"] >= v["accuracy"]
            and o[cost] <= v[cost]
            and (o["accuracy"] > v["accuracy"] or o[cost] < v[cost])
            for o in variants
        )
        if not dominated:
            front.append(v["name"])
    return front
