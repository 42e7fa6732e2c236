"""Tests of `Budget`: trials over budget rank below every trial within it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekeras.tuning import Budget


@given(
    inside=st.floats(0.0, 1.0),
    outside=st.floats(0.0, 1.0),
    over=st.floats(1.0 + 1e-9, 1e6, exclude_min=True),
)
def test_over_budget_never_beats_within_budget(inside, outside, over):
    budget = Budget(max_gzip_bytes=1000, max_latency_ms=5.0)
    ok = budget.score(inside, {"gzip_bytes": 1000, "latency_ms": 5.0})
    bad = budget.score(outside, {"gzip_bytes": 1000 * over, "latency_ms": 1.0})
    assert ok == inside
    assert bad < 0 <= ok


def test_budget_marks_the_metrics_over_their_limit():
    budget = Budget(max_gzip_bytes=1000, max_latency_ms=5.0)
    assert budget.violations({"gzip_bytes": 1500, "latency_ms": 9.0}) == ["gzip_bytes", "latency_ms"]
    assert budget.violations({"gzip_bytes": 900, "latency_ms": 1.0}) == []
    # The closer to the budget, the better an over-budget trial scores.
    assert budget.score(0.5, {"gzip_bytes": 1100, "latency_ms": 1.0}) > budget.score(0.5, {"gzip_bytes": 1500, "latency_ms": 1.0})
    assert Budget().violations({"gzip_bytes": 1e12, "latency_ms": 1e6}) == []


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"max_gzip_bytes": 0}, r"`max_gzip_bytes` must be a positive number or None. Received: max_gzip_bytes=0"),
        ({"max_latency_ms": -1.0}, r"`max_latency_ms` must be a positive number or None"),
        ({"max_gzip_bytes": "1MB"}, r"Received: max_gzip_bytes='1MB'"),
    ],
)
def test_budget_rejects_bad_limits(arguments, match):
    with pytest.raises(ValueError, match=match):
        Budget(**arguments)
