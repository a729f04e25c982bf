"""Benchmark helpers: one JSON line per figure, collected into benchmarks/results.json by run_all."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

__all__ = ["emit", "rate"]


def emit(
    figure: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Print one JSON line: the figure, its value and unit, and the peer measured in this run.

    ``ratio`` is value / baseline_value (so > 1 means more of the unit than the peer).
    """
    row: dict[str, Any] = {"figure": figure, "value": value, "unit": unit}
    if baseline is not None and baseline_value:
        row.update(baseline=baseline, baseline_value=baseline_value, ratio=value / baseline_value)
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def rate(fn: Callable[[], Any], items: int, min_time: float = 1.0) -> float:
    """Items per second of ``fn`` (which processes ``items``), timed over at least ``min_time`` s."""
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return items * n / dt
