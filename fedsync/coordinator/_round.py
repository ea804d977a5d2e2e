"""A round's plumbing: what its per-device steps share, and how a device's failure reads.

:class:`fedsync.coordinator.federated.Federated` runs the round; this module holds the state its
worker threads share (download slots, the byte budget of whole replies, each
device's step), exact counts from fractions, and the texts that name a device's
failure.

Internal: the plumbing of :class:`fedsync.Federated`; its names may change without notice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .._util.json import shown
from .._util.workers import Workers, take
from ..errors import EmptyRound, RoundFailed, failure_reason
from ..protocol import Encoding
from ..wire.codec import SUPPORTED_DTYPES
from ..wire.replies import ReplyStream
from ..wire.transfer import LATE, Deadline
from .history import RoundResult

__all__ = [
    "exact_share",
    "sample_size",
    "scrub_failures",
    "scrubbed",
    "Budget",
    "Round",
    "ReplyDeadline",
    "close_reply",
    "close_waiting",
    "mismatch_message",
    "gather_reasons",
    "format_metrics",
    "round_name",
    "evaluation_name",
    "empty_round",
]


def round_name(number: int, rep: int) -> str:
    """A round as people count it in this run (its place in the history), with the protocol's repetition if it differs.

    Repetitions also count failed rounds and follow the devices (a fresh ``fit(3)``
    against devices that ran before starts above their last repetition), so a person's
    "round 3" may be repetition 10: ``"round 3 (repetition 10)"``.
    """
    return f"round {number}" if number == rep else f"round {number} (repetition {rep})"


def evaluation_name(merged: int) -> str:
    """An evaluation of the model after ``merged`` rounds of this run, as messages name it."""
    return f"the evaluation after round {merged}" if merged else "the evaluation of the initial model"


def exact_share(fraction: Any, count: int) -> int:
    """``ceil(fraction * count)`` computed exactly (``0.14 * 50`` is 7, not 8).

    ``fraction`` is read from its decimal text, as written: a float ``0.14`` is 7/50.
    """
    share = Fraction(str(fraction)) * count
    return -(-share.numerator // share.denominator)


def sample_size(share: Fraction, devices: int, min_results: int | None) -> int:
    """How many of ``devices`` remotes a round samples: ``ceil(share * devices)``, at least 1 and ``min_results``.

    At most ``devices``. ``Federated.sample`` draws this many; the ε of a round under
    central DP (``fedsync.coordinator._privacy``) takes ``sample_size / devices`` as its
    sampling rate, so both read this one function.
    """
    return min(devices, max(1, exact_share(share, devices), min_results or 1))


def scrub_failures(failures: dict[str, str], remotes: Iterable[Any]) -> dict[str, str]:
    """``failures`` with every remote's token removed from each text (in place; returned too).

    A hostile device can echo the token it was sent in any value it answers
    (an array or metric name, a header, a JSON field), which the texts quote.
    """
    cleaned = {}
    for key, text in failures.items():  # keys too: a path below an aggregator is the device's own text
        for remote in remotes:
            key, text = remote.scrub(key), remote.scrub(text)
        cleaned[key] = text
    failures.clear()
    failures.update(cleaned)
    return failures


def scrubbed(exc: RoundFailed, remotes: Iterable[Any]) -> RoundFailed:
    """``exc`` with its message and failures scrubbed of every remote's token (see :func:`scrub_failures`)."""
    scrub_failures(exc.failures, remotes)
    text = str(exc.args[0]) if exc.args else ""
    for remote in remotes:
        text = remote.scrub(text)
    exc.args = (text, *exc.args[1:])
    return exc


class Budget:
    """Bytes of whole replies held at once; a request over the total waits for all of it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    def acquire(self, nbytes: int, cancel: threading.Event) -> int | None:
        """Take ``nbytes`` (at most the total); ``None`` if the round ended meanwhile."""
        nbytes = min(nbytes, self.total)
        with self._changed:
            while self._free < nbytes:
                if cancel.is_set():
                    return None
                self._changed.wait(0.5)
            self._free -= nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        if nbytes:
            with self._changed:
                self._free += nbytes
                self._changed.notify_all()


@dataclass(frozen=True)
class ReplyDeadline(Deadline):
    """The round's :class:`Deadline` as one reply sees it: the same until the reply's reading starts.

    The merge reads replies one at a time, so a reply that answered in time may wait
    for it while another reply is read through the deadline and its grace period (a
    device that trickles its reply just faster than ``stall`` does). A reply whose
    reading starts (:meth:`start`) after the round's deadline therefore gets its own
    window of ``stall`` seconds from then (or what is left of the round's grace, if
    longer): ample to read bytes that already arrived, too short for a reply still
    trickling in. Each reply is bounded: by the round's deadline and grace if read
    in time, else by ``stall`` seconds; the round's wait past its deadline is at most
    the grace plus ``stall`` per reply that answered in time.
    """

    started: list[float] = field(default_factory=list, compare=False)
    """When reading started (one ``time.monotonic()`` value, once :meth:`start` was called)."""

    @classmethod
    def of(cls, deadline: Deadline) -> ReplyDeadline:
        """A reply's view of the round's ``deadline``."""
        return cls(deadline.at, deadline.grace, deadline.stall, deadline.expired)

    def start(self) -> None:
        """Reading this reply starts now (the first call counts)."""
        if not self.started:
            self.started.append(time.monotonic())

    def _end(self) -> float:
        end = self.at + self.grace
        if self.started and self.started[0] > self.at:
            end = max(end, self.started[0] + self.stall)
        return end

    def read_wait(self) -> float:
        """As :meth:`Deadline.read_wait`, the grace period ending at the reply's own window if later."""
        now = time.monotonic()
        return min(max(self.at - now, self.stall), self._end() - now)

    def request_timeout(self, longest: float) -> float:
        """As :meth:`Deadline.request_timeout`, within the reply's own window."""
        return max(0.05, min(longest, self._end() - time.monotonic()))


@dataclass
class Round:
    """What a round's per-device steps share."""

    rep: int
    number: int
    """The round as people count it (:func:`round_name`)."""
    specs: str
    payload: Encoding
    deadline: Deadline
    timeout: float
    cancel: threading.Event
    slots: threading.Semaphore
    budget: Budget
    arrivals: queue.Queue
    """``(remote, reply or exception, budget bytes held)`` as each device's part ends."""
    workers: Workers
    wait: float
    """The longest single long-poll."""
    merging: str | None = None
    """The device whose reply the merge holds (handed over, not yet released)."""
    phase: dict[str, str] = field(default_factory=dict)
    """Each device's step: ``queued``, ``sending``, ``training``, ``answered``: what a timeout means for it."""
    windows: dict[str, ReplyDeadline] = field(default_factory=dict)
    """Each device's view of the deadline for reading its reply (its long-poll's)."""
    payloads: dict[str, Encoding] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    """The view each device will hold once its payload is accepted (``download="delta"``, docs/compression.md)."""
    held: dict[str, str] = field(default_factory=dict)
    """The coordinator's belief of each device's view, shared with its handshakes: updated as payloads land."""
    """The payload of each device that gets another than ``payload`` (one that cannot decode its wire format)."""

    def download_slot(self) -> bool:
        """Wait for a download slot; ``False`` if the round ended meanwhile."""
        while not self.cancel.is_set():
            if self.slots.acquire(timeout=0.5):
                if not self.cancel.is_set():
                    return True
                self.slots.release()
        return False

    def overdue(self, url: str, *, failed: bool = False) -> str:
        """Why ``url`` has nothing to show when the round stops waiting for it, from the step it was at.

        ``failed``: the round stopped because its quorum was out of reach, not at its deadline.
        """
        when = "the round failed" if failed else "the round's deadline passed"
        step = self.phase.get(url, "queued")
        if step == "queued":
            return f"nothing was sent to it: {when} before its turn"
        if step == "sending":
            return f"RemoteTimeout: the payload was still being sent when {when}"
        if step == "answered":
            return f"RemoteTimeout: {LATE}" if not failed else "answered, but the round had already failed"
        if failed:
            return "still working when the round failed"
        return f"RemoteTimeout: no result for repetition {self.rep} within the round's timeout of {self.timeout:g}s"


def close_reply(reply: Any) -> None:
    """Close ``reply`` if it is a :class:`~fedsync.wire.replies.ReplyStream` (a whole reply needs nothing)."""
    if isinstance(reply, ReplyStream):
        reply.close()


def close_waiting(arrivals: queue.Queue) -> None:
    """Close replies opened for a round that no longer wants them."""
    while True:
        try:
            _, reply, _ = arrivals.get_nowait()
        except queue.Empty:
            return
        close_reply(reply)


def mismatch_message(url: str, expected: str, info: dict[str, Any], summary: dict[str, Any] | None) -> str:
    """What ``SpecsMismatch`` says of device ``url``, whose ``/info`` answered other specs than ``expected``.

    ``summary``: the coordinator's own ``FedData.summary``; the first weight whose name,
    shape or dtype differs from the device's is named when both summaries list weights.
    """
    message = f"{url} holds specs {shown(info['specs'], 200)} but the coordinator's are {expected!r}"
    theirs = info.get("summary")
    diff = first_difference(summary, theirs)
    if diff:
        return f"{message}; first difference: {diff}. {_SAME_DECLARATION}"
    frozen = frozen_difference(summary, theirs)
    if frozen:
        return f"{message}: {frozen}"
    ours_kind, their_kind = expected.partition(":")[0], str(info["specs"]).partition(":")[0]
    if ours_kind != their_kind:
        return (
            f"{message}: another kind of FedData ({shown(their_kind, 40)} against {ours_kind!r}). Declare the "
            "same FedData class (the same adapter) on both sides; nothing was sent."
        )
    if _weights(summary) is not None and _weights(summary) == _weights(theirs):
        return (
            f"{message}: the weights' names, shapes and dtypes are the same, so the device computed its specs by "
            'another rule (a device in another language: docs/protocol.md, "The specs of an array model") '
            "or from another architecture description (an adapter's). Nothing was sent."
        )
    return f"{message}. {_SAME_DECLARATION}"


_SAME_DECLARATION = "Declare the same FedData (same architecture) on both sides; nothing was sent."


def _weights(summary: Any) -> list[tuple[Any, Any, Any]] | None:
    """A summary's weights as ``(name, shape, dtype)`` triples, or ``None`` when it lists none readable."""
    try:
        return [(w["name"], tuple(w["shape"]), w["dtype"]) for w in summary["weights"]]
    except Exception:  # free-form JSON from a peer
        return None


def frozen_difference(ours: Any, theirs: Any) -> str | None:
    """What differs in the frozen part (``shared="trainable"``) when the weights that travel agree."""
    try:
        mine, other = ours.get("frozen"), theirs.get("frozen")
        if mine == other or _weights(ours) != _weights(theirs):
            return None
        if other is None or mine is None:
            side = "the device" if other is None else "the coordinator"
            return (
                f"the travelling weights agree, but {side} declares no frozen part (shared= differs); nothing was sent."
            )
        return (
            f"the frozen parameters differ ({shown(other.get('sha256'), 60)} on the device, {mine.get('sha256')} here):"
            " "
            "another base model, or other frozen weights. When only some arrays travel, every device must load the "
            "same base; nothing was sent."
        )
    except Exception:  # a device's summary is free-form JSON
        return None


def first_difference(ours: Any, theirs: Any) -> str | None:
    """The first weight whose name, shape or dtype differs between two summaries (the device's may be anything)."""
    mine, other = _weights(ours), _weights(theirs)
    if mine is None or other is None:
        return None
    try:
        for a, b in zip(mine, other, strict=False):  # unequal lengths are named below
            if a != b:
                if a[0] != b[0]:
                    return f"expected weight {a[0]!r}, device has {shown(b[0], 200)}"
                dtype = shown(b[2], 40) if not isinstance(b[2], str) or len(b[2]) > 40 else b[2]
                if b[2] not in SUPPORTED_DTYPES:  # not a dtype the protocol carries: say so, not "another shape"
                    return (
                        f"{a[0]}: the device's dtype {dtype} is none the protocol carries "
                        f"({', '.join(SUPPORTED_DTYPES)}); expected {a[2]}"
                    )
                return f"{a[0]}: expected {a[1]} {a[2]}, device has {shown(b[1], 80)} {dtype}"
        if len(mine) != len(other):
            return f"expected {len(mine)} weights, device has {len(other)}"
    except Exception:  # a device's summary is free-form JSON: no diff rather than an error
        return None
    return None


def gather_reasons(state: Round, pending: set[str], result: RoundResult, grace: float = 2.0) -> None:
    """The round has failed: wait briefly (never past its deadline) so the error can say why the others failed too."""
    until = min(state.deadline.at, time.monotonic() + grace)
    while pending:
        try:
            remote, reply, held = take(state.arrivals, max(0.0, until - time.monotonic()))
        except queue.Empty:
            break
        pending.discard(remote.url)
        if isinstance(reply, BaseException):
            result.failures[remote.url] = failure_reason(reply)
        else:
            close_reply(reply)
            state.budget.release(held)
            state.slots.release()
            result.failures[remote.url] = "answered, but the round had already failed"
    for url in sorted(pending):
        result.failures[url] = state.overdue(url, failed=True)


def format_metrics(metrics: dict[str, float]) -> str:
    """Metrics as one short line for the log."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no metrics"


def empty_round(result: RoundResult, exc: RoundFailed, started: float) -> RoundResult:
    """``result`` of a round kept as empty: every device that answered reported 0 samples, or too few answered.

    The FedData is unchanged (the merge committed nothing). For an :class:`EmptyRound`, each answering
    device's report (``exc.reports``, in merge order) is recorded as a merged round's would be; below the
    quorum (:class:`~fedsync.errors.BelowQuorum`) ``devices`` stays empty and ``failures`` says who failed.
    No metric weighs anything, so ``metrics`` stays empty.
    """
    result.empty = True
    result.samples = 0
    result.failures.update(exc.failures)
    reports = exc.reports if isinstance(exc, EmptyRound) else []
    if reports and len(reports) == len(result.answered):
        result.devices = {
            url: {"samples": report["samples"], "metrics": dict(report["metrics"])}
            for url, report in zip(result.answered, reports, strict=True)
        }
    result.seconds = time.monotonic() - started
    return result
