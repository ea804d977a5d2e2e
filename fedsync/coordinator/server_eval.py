"""Server-side evaluation: the merged global model measured on data the coordinator holds.

Flower calls it ``evaluate_fn``; so does fedsync: ``Federated(...,
evaluate_fn=fn, evaluate_fn_every=n)`` calls ``fn(model, server_round)`` after
every n-th merged round. ``model`` is what the devices' ``train`` gets: the
torch module or Keras model of ``FedTorch``/``FedKeras``, the arrays of
``FedArrays``, or the FedData itself for a custom FedData; ``server_round`` is
the repetition just merged. It returns a dict of metrics, or Flower's
``(loss, metrics)`` pair (the loss is recorded as ``"loss"``), or ``None``.

The result lands in ``RoundResult.server_evaluation`` (a
:class:`~fedsync.coordinator.history.ServerEvaluation`), apart from federated evaluation on
the devices (``RoundResult.evaluation``). An exception in ``fn``, or metrics that
are not finite numbers, is logged with its traceback and recorded as that
evaluation's ``error``: the round stays merged, recorded and checkpointed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._util.checks import is_int
from ..data.arrays import FedArrays
from ..wire.metrics import checked_metrics
from .history import MAX_ERROR, ServerEvaluation

__all__ = ["EvaluateFn", "evaluate_on_server", "checked_every", "model_of"]

logger = logging.getLogger("fedsync")

EvaluateFn = Callable[[Any, int], Any]
"""``evaluate_fn(model, server_round) -> metrics | (loss, metrics) | None``."""


def checked_every(every: Any) -> int:
    """``evaluate_fn_every`` as a positive integer.

    Raises:
        ValueError: not an integer >= 1.
    """
    if not is_int(every) or every < 1:
        raise ValueError(f"evaluate_fn_every must be an integer >= 1 (1: after every round), got {every!r}")
    return every


def model_of(data: Any) -> Any:
    """What ``evaluate_fn`` is given: an array FedData's model, else the FedData itself."""
    return data.model if isinstance(data, FedArrays) else data


def evaluate_on_server(
    evaluate_fn: EvaluateFn, data: Any, repetition: int, *, number: int | None = None
) -> ServerEvaluation:
    """Run ``evaluate_fn(model_of(data), repetition)`` and record what it gave; never raises ``Exception``.

    ``number``: the round as people count it in this run, for the log (default: ``repetition``).
    """
    named = f"round {number if number is not None else repetition}"
    started = time.monotonic()
    result = ServerEvaluation(repetition=repetition)
    try:
        result.metrics = _metrics(evaluate_fn(model_of(data), repetition))
    except Exception as exc:  # user code: the merged round must not be lost to it
        logger.exception("server-side evaluate_fn failed after %s; the round is kept", named)
        result.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    result.seconds = time.monotonic() - started
    if result.error is None:
        logger.info(
            "server evaluation after %s: %s",
            named,
            ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()),
        )
    return result


def _metrics(value: Any) -> dict[str, float]:
    """Metrics from ``evaluate_fn``'s return value.

    Raises:
        TypeError: not a dict, a ``(loss, dict)`` pair or ``None``.
        ValueError: a metric is not a finite number.
    """
    if value is None:
        return {}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        loss, metrics = value
        return checked_metrics({"loss": loss, **metrics}, "evaluate_fn's (loss, metrics)", strict=False)
    if isinstance(value, Mapping):
        return checked_metrics(value, "evaluate_fn's metrics", strict=False)
    raise TypeError(
        f"evaluate_fn(model, server_round) must return a dict of metrics, e.g. {{'accuracy': 0.93}}, "
        f"or Flower's (loss, metrics) pair; got {type(value).__name__}"
    )
