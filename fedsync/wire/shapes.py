"""The shapes of the dicts fedsync hands out: a device's JSON answers and the history's per-device rows.

Type checkers read these :class:`~typing.TypedDict` classes; at run time they
are plain dicts (``isinstance`` does not apply), checked where they arrive
(:class:`fedsync.Remote`, :class:`fedsync.History`). docs/protocol.md is the wire
reference; these mirror it.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["DeviceInfo", "EvaluationAnswer", "DeviceReport", "MergeReport"]


class _DeviceInfoChecked(TypedDict):
    specs: str
    """The device's FedData architecture text, 1 to 4096 characters.

    Checked by :meth:`fedsync.transports.remote.Remote.info`.
    """
    repetition: int
    """The last repetition the device accepted, an integer in ``[0, 2**53]`` (checked); 0 before any."""


class DeviceInfo(_DeviceInfoChecked, total=False):
    """``GET /info``: a device's handshake, as :meth:`fedsync.Remote.info` returns it.

    Only ``specs`` and ``repetition`` are checked by the coordinator; the other
    keys are what a fedsync device sends, for display (``fedsync info``, the
    status page), and may be absent or anything when a peer is not fedsync.
    """

    protocol: int
    """The wire protocol's version (1)."""
    fedsync: str
    """The device's fedsync version (PEP 440)."""
    type: str
    """The FedData's class name, e.g. ``"FedTorch"``."""
    state: str
    """``"idle"``, ``"training"`` or ``"failed"`` (the last job raised)."""
    rounds_served: int
    """Training jobs finished since the device started."""
    last_error: str | None
    """The last job's ``"ExceptionType: message"``, or ``None``."""
    last_seconds: float | None
    """The last job's wall time in seconds, or ``None`` before any job."""
    samples: int | None
    """The FedData's ``samples`` (training examples on the device), or ``None`` if it has none."""
    summary: Any
    """The FedData's ``summary(repetition)``: any JSON value (for FedArrays, names, shapes, dtypes)."""
    aggregator: bool
    """``true`` for an aggregator (a node of a tree, docs/aggregators.md); absent means ``false``."""
    capabilities: dict[str, Any]
    """What the device can do: ``wire_formats`` it decodes, ``evaluate``, ``secure_aggregation`` (docs/protocol.md)."""


class _Counted(TypedDict):
    samples: int
    """Examples behind the device's reply (training) or evaluation, an integer in ``[0, 2**53]``."""
    metrics: dict[str, float]
    """The device's own finite metrics by name (unitless, as its callback returned them)."""


class EvaluationAnswer(_Counted, total=False):
    """``POST /<rep>/evaluate``'s answer, as :meth:`fedsync.Remote.evaluate` returns it (checked): ``samples``
    (examples the device evaluated on, in ``[0, 2**53]``) and ``metrics`` (at most 256 finite numbers by name)."""

    weights: dict[str, int]
    """An aggregator's answer only: each metric's weight, the samples of the devices below that reported it."""


class DeviceReport(_Counted, total=False):
    """One device's row in :attr:`fedsync.coordinator.history.RoundResult.devices` and
    :attr:`~fedsync.coordinator.history.EvaluationResult.devices`: ``samples`` and ``metrics``.

    The two optional keys come only with an aggregator's reply (:mod:`fedsync.wire.reports`), and the
    history keeps neither: failures below go to the round's ``failures``, by path.
    """

    weights: dict[str, int]
    """Each metric's weight, the samples of the devices below that reported it."""
    below: dict[str, str]
    """The devices below the aggregator that failed, by path (``site-c``), with why."""


class MergeReport(TypedDict):
    """``FedArrays.last_merge`` after a merge: what :class:`fedsync.Federated` records for the round."""

    samples: int
    """Total examples over the merged replies (not capped; ``FedArrays.samples`` is capped at 2**53)."""
    metrics: dict[str, float]
    """Sample-weighted means of the devices' metrics (:func:`fedsync.wire.metrics.weighted_means`)."""
    devices: list[DeviceReport]
    """One row per merged reply, in the order the replies were merged."""
    weights: dict[str, int]
    """Each metric's weight: the samples behind the reports of it (:func:`fedsync.wire.reports.metric_weights`)."""
