"""One device's part of a round: the steps the round's workers run, and the merge's side of them.

:func:`submit`, then :func:`poll` until the result is ready, then :func:`deliver` it to the
round's ``arrivals`` queue, where :func:`collect` hands it to the merge. Every step ends by
queuing the next or by putting the device's reply or error in ``arrivals``, except when the
round is over. The long-poll that finds a reply ready brings its headers; its body waits
unread in the socket until one of the round's download ``slots`` is free (the merge frees it
after folding the reply in), and, for whole replies, until the round's byte ``budget`` has
room for its Content-Length.

Internal: the per-device pipeline of :class:`fedsync.coordinator.federated.Federated`; its
names may change without notice.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

from .._util.workers import take
from ..errors import BelowQuorum, PayloadRejected, RemoteBusy, RemoteError, RemoteTimeout, failure_reason
from ..protocol import Encoding, FedData
from ..transports.remote import Remote, size
from ..wire.config import Config
from ..wire.http import ErrorCode
from ..wire.replies import ReplyStream
from ..wire.transfer import STALL
from ._round import ReplyDeadline, Round, close_reply, gather_reasons, round_name
from .history import RoundResult

__all__ = ["submit", "poll", "deliver", "collect"]


def submit(data: FedData, state: Round, remote: Remote, config: Config) -> None:
    """Send the round's payload to ``remote``, then queue its first long-poll behind the other submissions."""
    state.phase[remote.url] = "sending"
    try:
        left = state.deadline.left()
        if left <= 0:
            raise RemoteTimeout(remote.url, "nothing was sent to it: the round's deadline passed before its turn")
        wait = max(0.1, min(remote.timeout, left))
        try:
            payload = state.payloads.get(remote.url, state.payload)
            try:
                remote.submit(state.rep, payload, state.specs, timeout=wait, config=config, deadline=state.deadline)
            except RemoteError as exc:
                if (exc.detail or {}).get("error") != ErrorCode.UNKNOWN_BASE:
                    raise
                state.held.pop(remote.url, None)  # it restarted, or lost its view: the whole model, this round
                state.views.pop(remote.url, None)
                remote.submit(
                    state.rep, state.payload, state.specs, timeout=wait, config=config, deadline=state.deadline
                )
            if remote.url in state.views:
                state.held[remote.url] = state.views[remote.url]
        except RemoteTimeout:
            raise RemoteTimeout(remote.url, f"did not accept the payload within {wait:.3g}s") from None
    except Exception as exc:
        state.arrivals.put((remote, exc, 0))
        return
    state.phase[remote.url] = "training"
    state.workers.submit(poll, data, state, remote)  # behind the other submissions


def poll(data: FedData, state: Round, remote: Remote) -> None:
    """One long-poll; queues the next one behind the other devices' unless the result is ready."""
    reply: ReplyStream | None = None
    try:
        if state.cancel.is_set():
            return
        left = state.deadline.left()
        if left <= 0:
            raise RemoteTimeout(
                remote.url, f"no result for repetition {state.rep} within the round's timeout of {state.timeout:g}s"
            )
        wait = min(state.wait, left)
        timeout = min(wait + remote.timeout, left + STALL)
        window = state.windows[remote.url] = ReplyDeadline.of(state.deadline)
        reply = remote.open_result(state.rep, wait, timeout=timeout, deadline=window)
        if reply is None:
            state.workers.submit(poll, data, state, remote)
            return
        state.phase[remote.url] = "answered"
        if not state.download_slot():
            close_reply(reply)
            return
    except Exception as exc:
        close_reply(reply)
        state.arrivals.put((remote, exc, 0))
        return
    deliver(data, state, remote, reply)


def deliver(data: FedData, state: Round, remote: Remote, stream: ReplyStream) -> None:
    """Holding a download slot: hand a stream over, or download a whole reply within the budget and check it."""
    held = 0
    try:
        if data.accepts_streams:  # a stream is checked by the merge as it reads
            state.arrivals.put((remote, stream, 0))
            return
        taken = state.budget.acquire(len(stream), state.cancel)
        if taken is None:
            close_reply(stream)
            state.slots.release()
            return
        held = taken
        state.windows[remote.url].start()
        reply = remote.download(stream, as_view=data.accepts_views)
        try:
            data.check(reply, state.rep)
        except ValueError as exc:
            raise PayloadRejected(f"reply rejected: {exc}") from None
        state.arrivals.put((remote, reply, held))
    except Exception as exc:
        close_reply(stream)
        state.budget.release(held)
        state.slots.release()
        state.arrivals.put((remote, exc, 0))


def collect(
    state: Round, remotes: list[Remote], needed: int, result: RoundResult, sent: int, known: set[str]
) -> Iterator[Encoding | ReplyStream]:
    """Yield replies in arrival order; raise RoundFailed once the quorum is out of reach.

    Streamed replies the merge rejected (:meth:`ReplyStream.reject`) move from
    ``answered`` to ``failures`` when the merge asks for the next one. A device that
    failed otherwise than busy leaves ``known`` (the devices whose handshake holds), so
    the next round asks for its handshake again: it may have restarted.
    """
    pending = {r.url for r in remotes}
    streams: list[ReplyStream] = []
    # Past the deadline, replies in their grace period may still arrive.
    until = state.deadline.at + state.deadline.grace + STALL + 1.0

    def settle() -> bool:
        """Count rejected streams as failures; ``False`` once the quorum is out of reach."""
        for stream in [s for s in streams if s.rejected is not None]:
            streams.remove(stream)
            result.answered.remove(stream.url)
            result.failures[stream.url] = f"PayloadRejected: reply rejected: {stream.rejected}"
        return len(result.answered) + len(pending) >= needed

    while pending:
        try:
            remote, reply, held = take(state.arrivals, max(0.0, until - time.monotonic()))
        except queue.Empty:
            for url in sorted(pending):
                result.failures[url] = state.overdue(url)
            break
        pending.discard(remote.url)
        if isinstance(reply, BaseException):
            result.failures[remote.url] = failure_reason(reply)
            if not isinstance(reply, RemoteBusy):
                known.discard(remote.url)  # re-handshake: it may have restarted
            if len(result.answered) + len(pending) < needed:
                gather_reasons(state, pending, result)
                break
            continue
        result.answered.append(remote.url)
        result.bytes_sent += size(state.payloads[remote.url]) if remote.url in state.payloads else sent
        result.bytes_received += size(reply)
        if isinstance(reply, ReplyStream):
            streams.append(reply)
            state.windows[remote.url].start()
        state.merging = remote.url
        try:
            yield reply
        finally:
            state.merging = None
            close_reply(reply)
            del reply  # before its bytes go back to the budget: a kept reference would outlive the count
            state.budget.release(held)
            state.slots.release()  # folded in: the next reply may download
        # Replies that answered in time may still wait for a download slot: each has its own window.
        until = max(until, time.monotonic() + STALL + 1.0)
        if not settle():
            gather_reasons(state, pending, result)
            break
    settle()
    if len(result.answered) < needed:
        raise BelowQuorum(
            f"{round_name(state.number, state.rep)} failed: {len(result.answered)} of {needed} required devices "
            "answered; the coordinator's data is unchanged",
            result.failures,
        )
