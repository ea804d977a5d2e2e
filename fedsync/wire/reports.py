"""What a reply's metadata says about the devices behind it, checked before any use.

Every array payload's ``__metadata__`` carries its sample count (``fedsync.samples``) and metrics
(``fedsync.metrics``). The reply of an aggregator (a node of a tree, docs/aggregators.md) stands for
several devices, and carries two more entries, both optional:

- ``fedsync.metric_weights``: each metric's own weight, the samples of the devices below that reported
  it. A metric only some devices report is then averaged over those devices, as the flat round does.
- ``fedsync.failures``: the devices below that failed this round, by path (``site-c``, or
  ``agg-2/site-c`` deeper down), with why. The coordinator records them under the aggregator's own name.

A hostile peer can write anything here: :func:`read_report` refuses every entry out of its bounds
with :class:`~fedsync.errors.PayloadRejected`, naming it, so the reply is that device's failure alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._util.checks import is_int
from .._util.json import loads_strict, shown
from ..errors import PayloadRejected
from .metrics import MAX_METRICS, checked_metrics, checked_samples, metric_totals, top_metrics
from .shapes import DeviceReport, EvaluationAnswer

__all__ = [
    "SAMPLES_KEY",
    "METRICS_KEY",
    "WEIGHTS_KEY",
    "FAILURES_KEY",
    "MAX_FAILURES",
    "MAX_PATH",
    "MAX_REASON",
    "read_report",
    "evaluation_report",
    "report_metadata",
    "metric_weights",
    "node_name",
]

SAMPLES_KEY = "fedsync.samples"
METRICS_KEY = "fedsync.metrics"
WEIGHTS_KEY = "fedsync.metric_weights"
FAILURES_KEY = "fedsync.failures"

MAX_FAILURES = 256
"""The most failures below it one reply may name (an aggregator names the first 256, sorted by path)."""
MAX_PATH = 300
"""The longest path of a device below an aggregator, in characters."""
MAX_REASON = 1000
"""The longest reason of a failure below an aggregator, in characters (longer ones are cut when written)."""
FAILURES_BYTES = 256 * 1024
"""The most bytes the failures below take in a reply's header, escaped as the header escapes them.

A writer leaves out the failures past it (saying how many) rather than send a header its parent refuses: with
metrics and their weights (each at most 256 names of 200 characters) it stays within the 1 MiB of metadata a
model's payload may carry.
"""


def read_report(metadata: Mapping[str, str]) -> DeviceReport:
    """The report a payload's metadata carries: samples and metrics, and an aggregator's weights and failures.

    Returns a :class:`~fedsync.wire.shapes.DeviceReport`; ``weights`` and ``below`` are there only if
    the metadata had them.

    Raises:
        PayloadRejected: samples not a whole number in ``[0, 2**53]``; metrics not a strict JSON object
            (unique keys, no ``NaN``) of at most 256 finite numbers; a metric's weight not an integer in
            ``[1, samples]`` or for a metric the reply does not carry; failures not an object of at most
            ``MAX_FAILURES`` printable paths (``MAX_PATH`` characters) to strings (``MAX_REASON``).
    """
    try:
        samples = checked_samples(metadata.get(SAMPLES_KEY, "0"), f"payload metadata {SAMPLES_KEY!r}")
        metrics = checked_metrics(_object(metadata, METRICS_KEY), f"payload metadata {METRICS_KEY!r}")
    except ValueError as exc:
        raise PayloadRejected(
            f"{exc}; expected e.g. {{{SAMPLES_KEY!r}: '60000', {METRICS_KEY!r}: '{{\"loss\": 0.12}}'}}"
        ) from None
    report: DeviceReport = {"samples": samples, "metrics": metrics}
    if WEIGHTS_KEY in metadata:
        report["weights"] = _weights(
            _object(metadata, WEIGHTS_KEY), samples, metrics, f"payload metadata {WEIGHTS_KEY!r}"
        )
    if FAILURES_KEY in metadata:
        report["below"] = _failures(_object(metadata, FAILURES_KEY))
    return report


def evaluation_report(answer: Any) -> EvaluationAnswer:
    """An evaluation's JSON answer, checked: ``samples`` (a JSON integer), ``metrics`` and optional ``weights``.

    An aggregator's answer carries each metric's own weight, as its training reply does.

    Raises:
        ValueError: naming the first field out of its bounds (as :func:`read_report` bounds them).
    """
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
    if not is_int(answer.get("samples")):  # JSON carries a count as a number, not text
        raise ValueError(f"samples must be a whole number, got {shown(answer.get('samples'), 40)}")
    samples = checked_samples(answer["samples"], "samples")
    report: EvaluationAnswer = {"samples": samples, "metrics": checked_metrics(answer.get("metrics"), "metrics")}
    if answer.get("weights") is not None:
        if not isinstance(answer["weights"], dict):
            raise ValueError(f"weights must be a JSON object, got {type(answer['weights']).__name__}")
        report["weights"] = _weights(answer["weights"], samples, report["metrics"], "weights")
    return report


def report_metadata(report: DeviceReport) -> dict[str, str]:
    """The metadata entries of ``report`` (checked values), as :func:`read_report` reads them back.

    Failures beyond ``MAX_FAILURES`` (by path) are left out, and reasons are cut to ``MAX_REASON`` characters.
    """
    metadata = {SAMPLES_KEY: str(report["samples"]), METRICS_KEY: json.dumps(report["metrics"])}
    if "weights" in report:
        metadata[WEIGHTS_KEY] = json.dumps(report["weights"])
    if "below" in report:
        metadata[FAILURES_KEY] = json.dumps(_fitting(report["below"]))
    return metadata


def _fitting(below: Mapping[str, str]) -> dict[str, str]:
    """The failures below, cut to ``MAX_PATH``/``MAX_REASON`` characters and to ``FAILURES_BYTES`` of header.

    Sorted by path; past ``MAX_FAILURES`` entries or the byte budget, one last entry says how many were left out.
    """
    kept: dict[str, str] = {}
    used = 2
    items = sorted(below.items())
    for index, (path, why) in enumerate(items):
        entry = {path[:MAX_PATH]: why[:MAX_REASON]}
        size = len(json.dumps(json.dumps(entry))) - 2  # as the header carries it: escaped twice
        if len(kept) == MAX_FAILURES - 1 or used + size > FAILURES_BYTES - 200:
            left = len(items) - index
            kept["+more"] = f"{left} more device(s) below failed; left out: a reply names at most what fits its header"
            break
        kept.update(entry)
        used += size
    return kept


def metric_weights(records: Iterable[DeviceReport]) -> dict[str, int]:
    """Each metric's weight over ``records``: the samples behind every report of it.

    A record's own ``weights`` count where it has them (an aggregator's reply), else its samples; records
    of 0 samples weigh nothing. :func:`fedsync.wire.metrics.weighted_means` averages with the same weights.
    """
    totals = metric_totals(records)
    return {name: totals[name] for name in top_metrics(totals)}  # the metrics weighted_means keeps


def node_name(url: str) -> str:
    """How a device's URL reads in a path below an aggregator: ``dial://site-c`` is ``site-c``.

    ``http(s)://host:port/base`` is ``host:port/base``; a URL without a scheme is itself.
    """
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    return (parts.netloc + parts.path).rstrip("/") or url


def _object(metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    """``metadata[key]`` as a strict JSON object (``{}`` when absent)."""
    text = metadata.get(key, "{}")
    try:
        value = loads_strict(
            text,
            duplicate=lambda name: PayloadRejected(f"payload metadata {key!r} names the key {shown(name)} twice"),
            constant=lambda name: PayloadRejected(f"payload metadata {key!r} holds {name}, not a finite number"),
        )
    except PayloadRejected:
        raise
    except (ValueError, RecursionError):
        raise PayloadRejected(f"payload metadata {key!r} is not JSON: {shown(text, 60)}") from None
    if not isinstance(value, dict):
        raise PayloadRejected(f"payload metadata {key!r} must be a JSON object, got {type(value).__name__}")
    return value


def _weights(value: dict[str, Any], samples: int, metrics: Mapping[str, float], what: str) -> dict[str, int]:
    if len(value) > MAX_METRICS:
        raise PayloadRejected(f"{what} has {len(value)} entries, more than {MAX_METRICS}")
    weights = {}
    for name, weight in value.items():
        if name not in metrics:
            raise PayloadRejected(f"{what} weighs the metric {shown(name)}, which the reply does not carry")
        if not is_int(weight) or not 1 <= weight <= max(samples, 1):
            raise PayloadRejected(
                f"{what}: the weight of {shown(name)} must be a whole number of samples "
                f"in [1, {samples}] (the reply's samples), got {shown(weight, 40)}"
            )
        weights[name] = int(weight)
    return weights


def _failures(value: dict[str, Any]) -> dict[str, str]:
    if len(value) > MAX_FAILURES:
        raise PayloadRejected(
            f"payload metadata {FAILURES_KEY!r} names {len(value)} failures, more than {MAX_FAILURES}"
        )
    for path, why in value.items():
        if not 0 < len(path) <= MAX_PATH or not path.isprintable():
            raise PayloadRejected(
                f"payload metadata {FAILURES_KEY!r}: a path must be 1 to {MAX_PATH} printable characters, "
                f"got {shown(path)}"
            )
        if not isinstance(why, str) or len(why) > MAX_REASON:
            raise PayloadRejected(
                f"payload metadata {FAILURES_KEY!r}: the failure of {shown(path)} must be a text of at most "
                f"{MAX_REASON} characters, got {shown(why, 40)}"
            )
    # A reason is shown in logs and consoles: control characters (an escape sequence, a newline that
    # would fake a log line) are escaped, not refused, since an honest reason may span lines.
    return {path: shown(why, 2 * MAX_REASON, quote=False) for path, why in value.items()}
