"""The exceptions fedsync raises.

Every exception derives from :class:`FedSyncError` *and* from the builtin that
matches its meaning (``ValueError``, ``OSError``, ``LookupError``, ...), so
callers can catch either, as with ``requests``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FedSyncError",
    "CodecError",
    "PayloadRejected",
    "SpecsMismatch",
    "RemoteError",
    "RemoteUnavailable",
    "RemoteTimeout",
    "RemoteBusy",
    "TrainingFailed",
    "RoundFailed",
    "EmptyRound",
    "UnknownBase",
    "BelowQuorum",
    "AdapterNotFound",
    "PluginError",
    "CheckpointError",
    "failure_reason",
]


class FedSyncError(Exception):
    """Base class of every error fedsync raises."""


class CodecError(FedSyncError, ValueError):
    """Bytes that are not a valid fedsync payload (truncated, oversized, garbage)."""


class PayloadRejected(FedSyncError, ValueError):
    """A well-formed payload that does not fit the FedData receiving it.

    ``url``: the device that refused it, when a :class:`fedsync.Remote` raised it (else ``None``).
    ``detail``: as :attr:`RemoteError.detail`, when a device's refusal was read (else ``None``).
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.detail: dict[str, Any] | None = None


class UnknownBase(PayloadRejected):
    """A model sent as a delta from a view this device does not hold (``409 unknown_base``).

    The coordinator then sends that device the whole model, in the same round (docs/compression.md).
    """


class SpecsMismatch(FedSyncError, ValueError):
    """Coordinator and device hold FedData of different specs (architectures).

    ``url``: the device whose specs differ, when one device raised it (else ``None``).
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class RemoteError(FedSyncError, OSError):
    """Talking to a remote device failed. ``url`` names the device.

    ``detail``: the JSON object of the device's refusal (at most 64 KiB, strict JSON with an
    ``"error"`` code and a ``"message"``), for callers that read more than the message (secure
    aggregation's ``"senders"``); ``None`` when the device answered no such object, or when this
    error was not a refusal. Unchecked beyond that: check any other field before use.
    """

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = message
        self.detail: dict[str, Any] | None = None


class RemoteUnavailable(RemoteError, ConnectionError):
    """The device could not be reached (refused, reset, unknown host)."""


class RemoteTimeout(RemoteError, TimeoutError):
    """The device did not answer within the configured timeout."""


class RemoteBusy(RemoteError):
    """The device is still working on an earlier repetition."""


class TrainingFailed(RemoteError):
    """The device's own ``receive``/``serialize`` raised; the message is the device's."""


class RoundFailed(FedSyncError, RuntimeError):
    """A round could not be merged; ``failures`` maps each device URL to why.

    When this is raised the coordinator's FedData is exactly as before the round.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        self.message = message  # without the failures' lines, which str() appends
        self.failures = dict(failures or {})
        detail = "".join(f"\n  {url}: {why}" for url, why in self.failures.items())
        super().__init__(message + detail)


class EmptyRound(RoundFailed):
    """Every device that answered reported 0 samples: nothing to merge, the FedData unchanged.

    ``reports``: each answering device's ``{"samples": 0, "metrics": {...}}``, in merge
    order. ``Federated(empty_rounds="keep")`` records such a round and goes on.
    """

    def __init__(self, message: str, failures: dict[str, str] | None = None, reports: Any = ()) -> None:
        super().__init__(message, failures)
        self.reports = list(reports)


class BelowQuorum(RoundFailed):
    """Fewer devices than the round's quorum (``min_results``) were reachable or answered; the FedData unchanged.

    ``Federated(empty_rounds="keep")`` records such a round as empty and goes on, as for :class:`EmptyRound`.
    """


class AdapterNotFound(FedSyncError, LookupError):
    """No installed adapter handles a specs token."""


class PluginError(FedSyncError, RuntimeError):
    """A plugin misbehaved (duplicate token, bad registration)."""


class CheckpointError(FedSyncError, ValueError):
    """A checkpoint that is damaged, edited, or does not fit the FedData it should restore.

    Also importable as ``fedsync.coordinator.checkpoint.CheckpointError``, where it was first defined.
    """


def failure_reason(exc: BaseException) -> str:
    """How a round names one device's failure: the error's type, then its reason.

    A :class:`RemoteError` gives its reason without the URL, which the failure
    map already has as its key: ``"RemoteTimeout: did not answer ... within 2s"``.
    """
    if isinstance(exc, RemoteError):
        return f"{type(exc).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
