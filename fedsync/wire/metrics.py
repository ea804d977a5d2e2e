"""Sample counts and metrics: checked as they arrive, averaged by sample count.

Every number a peer reports (a device's sample count and metrics, in a reply's
metadata or an evaluation's JSON answer) passes :func:`checked_samples` and
:func:`checked_metrics` before any arithmetic touches it, so a hostile or
broken device cannot overflow a sum or turn an average into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._util.checks import is_int, is_number
from .._util.json import shown

__all__ = [
    "MAX_SAMPLES",
    "MAX_METRICS",
    "checked_samples",
    "checked_metrics",
    "weighted_means",
    "kept_metrics",
    "metric_totals",
    "top_metrics",
    "parse_counted",
]

MAX_SAMPLES = 2**53
"""The largest sample count a device may report.

Every integer up to it is exact in float64, and a sum of 2**10 such counts
still fits an int64: weights and totals never overflow.
"""

MAX_METRICS = 256
"""The most metrics one report may carry."""

MAX_METRIC_NAME = 200
"""The longest metric name, in characters."""


def checked_samples(value: Any, what: str = "samples") -> int:
    """``value`` as a sample count: an integer in ``[0, MAX_SAMPLES]``.

    Takes an ``int`` (not a ``bool``), a numpy integer, or a string of decimal
    digits (as payload metadata carries it).

    Raises:
        ValueError: naming ``what``, the bad value and the accepted range.
    """
    count: int | None = None
    if isinstance(value, str):
        if 0 < len(value) <= 17 and value.isascii() and value.isdigit():
            count = int(value)
    elif is_int(value) or type(value).__name__.startswith(("int", "uint")):  # a numpy integer too
        count = int(value)
    if count is None or not 0 <= count <= MAX_SAMPLES:
        raise ValueError(f"{what} must be a whole number of samples in [0, 2**53], got {shown(value, 40)}")
    return count


def checked_metrics(value: Any, what: str = "metrics", *, strict: bool = True) -> dict[str, float]:
    """``value`` as metrics: a mapping of names to finite floats.

    ``strict`` (for what a peer sent) accepts only ``int`` and ``float`` values
    (not ``bool``, not strings); otherwise anything ``float()`` takes, e.g. a
    numpy or torch scalar that a local ``train`` callback returned.

    Raises:
        ValueError: naming ``what`` and the first bad entry.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping of names to numbers, got {type(value).__name__}")
    if len(value) > MAX_METRICS:
        raise ValueError(f"{what} has {len(value)} entries, more than MAX_METRICS ({MAX_METRICS})")
    clean: dict[str, float] = {}
    for name, number in value.items():
        label = str(name)
        if not label or len(label) > MAX_METRIC_NAME:
            raise ValueError(f"{what}: metric names must have 1 to {MAX_METRIC_NAME} characters, got {label[:40]!r}")
        if strict and not is_number(number):
            raise ValueError(f"{what}: metric {label!r} must be a number, got {type(number).__name__}")
        try:
            converted = float(number)
        except (TypeError, ValueError, OverflowError):
            converted = math.nan
        if not math.isfinite(converted):
            raise ValueError(f"{what}: metric {label!r} must be a finite number, got {shown(number, 40)}")
        clean[label] = converted
    return clean


def weighted_means(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each metric's mean over ``records`` (``{"samples": n, "metrics": {...}}``), weighted by samples.

    A record with 0 samples contributes nothing, whatever its metrics. A metric
    only some devices report is averaged over those; a metric reported only by
    devices with 0 samples is left out. A record's own ``"weights"`` (an aggregator's
    reply: each metric's samples below it, :mod:`fedsync.wire.reports`) weigh its metrics
    instead of its samples, so a tree averages as the flat round does. At most ``MAX_METRICS``
    metrics are kept (:func:`kept_metrics`): what one device may report is what a merge may carry on.
    Values are expected checked (:func:`checked_metrics`): finite, so the weighted sum (``math.fsum``) is exact
    up to one rounding and cannot overflow for counts up to ``MAX_SAMPLES``.
    """
    names = kept_metrics(records)
    means = {}
    for name in names:
        pairs = [
            (float(r["metrics"][name]), int(r.get("weights", {}).get(name, r["samples"])))
            for r in records
            if r["samples"] > 0 and name in r["metrics"]
        ]
        weight = sum(s for _, s in pairs)
        # Weights as fractions of the total keep each product within the values' range, but
        # the rounded fractions may add up to a little over 1: values near float's maximum
        # then overflow fsum, so they are halved first. The exact mean lies between the
        # smallest and largest value, so it is clamped there (an overflow to inf included).
        try:
            mean = math.fsum(v * (s / weight) for v, s in pairs)
        except OverflowError:
            mean = 2.0 * math.fsum((v / 2.0) * (s / weight) for v, s in pairs)
        values = [v for v, _ in pairs]
        means[name] = min(max(mean, min(values)), max(values))
    return means


def kept_metrics(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names of the metrics a merge of ``records`` keeps, sorted: at most ``MAX_METRICS``.

    Devices may each report 256 metrics of their own names; their merge is sent on (the coordinator's
    next payload, an aggregator's reply), where more than 256 would be refused. Kept are the metrics with
    the most weight behind them (a record's ``weights``, else its samples), ties broken by name; records
    of 0 samples count for nothing.
    """
    return top_metrics(metric_totals(records))


def metric_totals(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each metric's weight over ``records``: a record's own ``weights`` where it has them, else its samples.

    Records of 0 samples count for nothing.
    """
    totals: dict[str, int] = {}
    for r in records:
        if r["samples"] > 0:
            own = r.get("weights", {})
            for name in r["metrics"]:
                totals[name] = totals.get(name, 0) + int(own.get(name, r["samples"]))
    return totals


def top_metrics(totals: Mapping[str, int]) -> list[str]:
    """The at most ``MAX_METRICS`` names of ``totals`` with the most weight (ties by name), sorted."""
    return sorted(sorted(totals, key=lambda name: (-totals[name], name))[:MAX_METRICS])


def parse_counted(value: Any, what: str = "train(model)") -> tuple[int, dict[str, float]]:
    """``n`` or ``(n, metrics)`` as returned by a train or evaluate callback.

    With ``n == 0`` the metrics are ignored (returned empty), whatever their values: they
    weigh nothing in any mean, and a metric of no samples is often NaN (flwrlabs/flower#7693).

    Raises:
        TypeError: ``value`` is not a sample count, optionally with a dict of metrics.
        ValueError: the count is over ``MAX_SAMPLES`` or a metric is not a finite number.
    """
    returned = value
    metrics: Any = {}  # checked below: a Mapping of finite numbers, or TypeError
    if isinstance(value, tuple) and len(value) == 2:
        value, metrics = value
    is_count = is_int(value) or type(value).__name__.startswith(("int", "uint"))  # a numpy integer too
    if not is_count or int(value) < 0 or not isinstance(metrics, Mapping):
        raise TypeError(
            f"{what} must return the number of samples it used, e.g. `return x.shape[0]`, or that number with a dict "
            f"of metrics, e.g. `return len(x), {{'loss': 0.12}}`; it returned {shown(returned, 80)}"
        )
    samples = checked_samples(value, f"{what}'s sample count")
    if samples == 0:
        return 0, {}  # they weigh nothing (and the mean of an empty split is NaN): ignored, not refused
    try:
        clean = checked_metrics(metrics, f"{what}'s metrics", strict=False)
    except ValueError as exc:
        raise ValueError(f"{exc}; return only finite numbers as metrics") from None
    return samples, clean
