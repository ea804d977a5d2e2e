"""Sample-weighted aggregation of the metrics devices report."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["weighted_means", "parse_counted"]


def weighted_means(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each metric's mean over ``records`` (``{"samples": n, "metrics": {...}}``), weighted by samples.

    A metric only some devices report is averaged over those; if all of them
    report 0 samples it is a plain mean.
    """
    names = sorted({name for r in records for name in r["metrics"]})
    means = {}
    for name in names:
        pairs = [(float(r["metrics"][name]), int(r["samples"])) for r in records if name in r["metrics"]]
        weight = sum(s for _, s in pairs)
        if weight:
            means[name] = math.fsum(v * s for v, s in pairs) / weight
        else:
            means[name] = math.fsum(v for v, _ in pairs) / len(pairs)
    return means


def parse_counted(value: Any, what: str = "train(model)") -> tuple[int, dict[str, float]]:
    """``n`` or ``(n, metrics)`` as returned by a train or evaluate callback."""
    metrics: Any = {}
    if isinstance(value, tuple) and len(value) == 2:
        value, metrics = value
    is_count = isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))
    if isinstance(value, bool) or not is_count or int(value) < 0 or not isinstance(metrics, Mapping):
        raise TypeError(
            f"{what} must return the number of samples it used, e.g. `return x.shape[0]`, "
            f"or that number with a dict of metrics, e.g. `return len(x), {{'loss': 0.12}}`; got {value!r}"
        )
    try:
        clean = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError):
        raise TypeError(f"{what}'s metrics must map names to numbers, got {metrics!r}") from None
    return int(value), clean
