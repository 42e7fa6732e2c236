"""The Pareto front of deployed models: nothing else is both more accurate and smaller."""

__all__ = ["pareto_front"]


def pareto_front(variants):
    """Names of the variants no other variant beats on both accuracy and gzip size."""
    front = []
    for v in variants:
        dominated = any(
            o["accuracy"] >= v["accuracy"]
            and o["gzip_bytes"] <= v["gzip_bytes"]
            and (o["accuracy"] > v["accuracy"] or o["gzip_bytes"] < v["gzip_bytes"])
            for o in variants
        )
        if not dominated:
            front.append(v["name"])
    return front
