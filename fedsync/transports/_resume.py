"""Transfers that resume after a break: a result's download and a submission's upload (docs/protocol.md).

A download resumes with RFC 9110 ranges: :class:`ResumingAnswer` wraps the answer a
:class:`~fedsync.transports.remote.Remote` reads a result from, and when its connection breaks
part-way (``RemoteUnavailable`` from ``readinto``, or a body that ends short) it asks the device again
with ``Range: bytes=N-`` and goes on reading **into the same caller**: a merge folding the reply
into its running sum continues where it stopped, holding nothing more. It works over any transport
that honours ``Range`` (``206``); one that ignores it (``200``, the whole reply) still resumes, by
skipping the bytes already read (counted as re-sent).

An upload resumes with the IETF resumable-upload draft's offsets (draft-ietf-httpbis-resumable-upload:
``Upload-Offset``, the offset learnt by ``HEAD``), spelled on ``POST``: :func:`submit_resuming` sends
the body; after a break it asks ``HEAD {rep}/submit`` how many bytes the device holds and sends the
rest with ``Upload-Offset: N`` and ``Upload-Length: L``.

Every resumption waits no longer than its transfer's deadline allows, one transfer resumes at most
``MAX_RESUMES`` times, and each is logged at INFO on logger ``fedsync`` with the bytes re-sent.

Internal: its names may change without notice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from ..errors import PayloadRejected, RemoteBusy, RemoteError, RemoteTimeout, RemoteUnavailable
from ..wire.codec import Payload
from ..wire.http import REPETITION_HEADER, ErrorCode
from ..wire.transfer import Deadline, content_length
from .base import Answer, Body

__all__ = ["ResumingAnswer", "Resumes", "submit_resuming", "MAX_RESUMES", "UPLOAD_OFFSET", "UPLOAD_LENGTH"]

logger = logging.getLogger("fedsync")

MAX_RESUMES = 16
"""Times one transfer resumes before its device fails (each resumption also ends by the transfer's deadline)."""

BACKOFF = 0.1
"""Seconds before a resumption that follows one that brought nothing; doubled each time, at most ``MAX_BACKOFF``."""

MAX_BACKOFF = 2.0

PIECE = 1 << 18
"""Bytes of the pieces a resumable body is handed to its transport in (what bounds the count of bytes re-sent)."""

UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_LENGTH = "Upload-Length"


class Requester(Protocol):
    """What :func:`submit_resuming` needs of a :class:`~fedsync.transports.remote.Remote` (which imports us)."""

    url: str
    resumes: Resumes

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str],
        body: Body | None = None,
        timeout: float,
        check: bool = True,
    ) -> Answer: ...

    def scrub(self, text: str) -> str: ...


class Resumes:
    """A :class:`~fedsync.transports.remote.Remote`'s count of resumed transfers and the bytes they re-sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.resent = 0

    def add(self, resent: int, resumed: int = 0) -> None:
        """Count ``resumed`` resumptions and ``resent`` bytes sent more than once (from any thread)."""
        with self._lock:
            self.count += resumed
            self.resent += max(0, resent)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _pause(quiet: int, deadline: Deadline | None) -> None:
    """Wait before a resumption that follows ``quiet`` ones which brought nothing (never past ``deadline``)."""
    if quiet:
        seconds = min(MAX_BACKOFF, BACKOFF * 2 ** (quiet - 1))
        time.sleep(max(0.0, min(seconds, deadline.left())) if deadline is not None else seconds)


Reopen = Callable[[int, Deadline], Answer]
"""Asks the device for the same result from byte ``N`` (``Range: bytes=N-``), under the reader's deadline."""


class ResumingAnswer(Answer):
    """A result's answer (``length`` bytes) that resumes from the last byte read when its connection breaks.

    Args:
        answer: the first answer, its body unread.
        length: its Content-Length, checked.
        reopen: asks the device again from a byte offset (see :data:`Reopen`).
        url: the device, named in errors and the log.
        what: the transfer, for the log (``"the result of repetition 3"``).
        resumes: where the resumptions and the bytes re-sent are counted.
    """

    def __init__(self, answer: Answer, length: int, reopen: Reopen, url: str, what: str, resumes: Resumes) -> None:
        self.answer = answer
        self.status = answer.status
        self.headers = answer.headers
        self.length = length
        self.url = url
        self.what = what
        self._reopen = reopen
        self._resumes = resumes
        self.at = 0  # bytes of the body handed to the caller
        self.skip = 0  # bytes to drop from a device that ignored Range (re-sent)
        self.resumed = 0
        self._since = -1  # where the last resumption started: no progress since, the next one waits first
        self._quiet = 0

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """Read the next bytes into ``view``; after a break, ask again from the last byte read and go on.

        Raises:
            RemoteTimeout: nothing arrived in time, a resumption included (``deadline.expired``).
            RemoteUnavailable: the connection broke and could not be resumed (``MAX_RESUMES`` reached,
                or the device refused the resumption).
            RemoteError: the resumed answer is not the same result from that byte.
        """
        wanted = min(len(view), self.length - self.at)
        if wanted <= 0:
            return 0
        scratch: memoryview | None = None
        while True:  # each turn reads bytes (at most the body's) or resumes (at most MAX_RESUMES times)
            skipping = self.skip > 0
            if skipping:
                scratch = scratch if scratch is not None else memoryview(bytearray(1 << 16))
                target = scratch[: min(self.skip, len(scratch))]
            else:
                target = view[:wanted]
            try:
                n = self.answer.readinto(target, deadline)
            except RemoteUnavailable as exc:
                reason = exc.reason
            else:
                if n and not skipping:
                    self.at += n
                    return n
                if n:
                    self.skip -= n
                    self._resumes.add(n)
                    continue
                reason = f"the answer ended after {self.at + self.skip} of {self.length} bytes"
            self._resume(reason, deadline)

    def _resume(self, reason: str, deadline: Deadline) -> None:
        """Ask for the rest from byte ``at``; raise when that is not possible."""
        if self.resumed >= MAX_RESUMES:
            raise RemoteUnavailable(self.url, f"{reason}; resumed {self.resumed} times already, giving up")
        self._quiet = self._quiet + 1 if self._since == self.at else 0
        _pause(self._quiet, deadline)
        if deadline.read_wait() <= 0:
            raise RemoteTimeout(self.url, deadline.expired)
        self.answer.close()
        self._since = self.at
        self.resumed += 1
        self.answer = self._reopen(self.at, deadline)
        self.skip = self._checked(self.answer)
        self._resumes.add(0, 1)
        logger.info(
            "%s: resumed %s at %s of %s (%s; %s)",
            self.url,
            self.what,
            _mb(self.at),
            _mb(self.length),
            reason,
            "from the start: the device ignored Range" if self.skip else "Range honoured, nothing re-sent",
        )

    def _checked(self, answer: Answer) -> int:
        """Bytes to skip of ``answer``: 0 for ``206`` from byte ``at``, ``at`` for the whole reply again (``200``)."""
        expected = f"bytes {self.at}-{self.length - 1}/{self.length}"
        size = content_length(answer.headers.get("Content-Length"))
        if answer.status == 206 and answer.headers.get("Content-Range") == expected and size == self.length - self.at:
            return 0
        if answer.status == 200 and size == self.length:
            return self.at
        answer.close()
        shown = f"{answer.status}, Content-Range {str(answer.headers.get('Content-Range'))[:80]!r}"
        raise RemoteError(self.url, f"answered a resumed download with {shown}; expected 206 and {expected!r}")

    def close(self) -> None:
        """Release the current connection (to its pool when its body was read to its end)."""
        self.answer.close()


class Sending(Payload):
    """A body from byte ``offset`` on, handed out in pieces of at most ``PIECE`` bytes; ``handed`` counts them.

    A piece counts as it is handed to the transport: bytes the kernel still buffered at a break, and the
    piece being sent, count as sent (an upper bound, over by at most the send buffer and one piece)."""

    def __init__(self, frames: list[memoryview], offset: int) -> None:
        rest: list[memoryview | bytes] = []
        for view in frames:
            if offset < len(view):
                rest.append(view[offset:])
            offset = max(0, offset - len(view))
        super().__init__(rest)
        self.handed = 0

    def __iter__(self) -> Iterator[memoryview | bytes]:
        for frame in self.frames:
            view = memoryview(frame)
            for start in range(0, len(view), PIECE):
                piece = view[start : start + PIECE]
                self.handed += len(piece)  # handed over: an upper bound of what left (by at most one piece)
                yield piece


def _frames(body: Body) -> list[memoryview]:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return [memoryview(body).cast("B")]
    return [memoryview(frame).cast("B") for frame in body]


def _code(exc: Exception) -> str | None:
    detail = getattr(exc, "detail", None)
    return detail.get("error") if isinstance(detail, dict) else None


def submit_resuming(
    remote: Requester,
    repetition: int,
    headers: Mapping[str, str],
    body: Body,
    timeout: float,
    deadline: Deadline | None = None,
) -> Answer:
    """``POST {rep}/submit`` that resumes after a break; the device's acceptance (its body unread).

    A break is a lost connection after some of the body was handed over (or a ``400 truncated``
    answer): ``HEAD {rep}/submit`` then tells how many bytes the device holds and the rest goes
    with ``Upload-Offset``. A device that holds none (``404``: it may have taken the whole body and
    lost only its answer; ``405``: it cannot resume) is never sent the payload twice: the break's
    error is raised. At most ``MAX_RESUMES`` resumptions, none started past ``deadline``.

    Raises:
        what :meth:`Remote.request <fedsync.transports.remote.Remote.request>` raises, the last
        break's error when resuming is not possible.
    """
    frames = _frames(body)
    total = sum(len(view) for view in frames)
    target = f"/{repetition}/submit"
    offset = handed = resumed = quiet = 0
    while True:  # each turn ends, returns, or counts one resumption (at most MAX_RESUMES)
        sending = Sending(frames, offset)
        extra = {UPLOAD_OFFSET: str(offset), UPLOAD_LENGTH: str(total)} if resumed else {}
        try:
            answer = remote.request("POST", target, headers={**headers, **extra}, body=sending, timeout=timeout)
            remote.resumes.add(handed - offset)
            return answer
        except (RemoteError, PayloadRejected) as exc:
            handed += sending.handed
            if not _resumable(exc, sending.handed, resumed) or resumed >= MAX_RESUMES:
                raise
            if deadline is not None and deadline.left() <= 0:
                raise
            _pause(quiet, deadline)
            try:
                held = _held(remote, target, total, timeout)
            except (RemoteUnavailable, RemoteTimeout):
                held = None
            if held is None:  # gone, or holds none of it (it may have taken it whole): never sent twice
                raise exc from None
            quiet = quiet + 1 if held == offset else 0
            offset = held
            resumed += 1
            remote.resumes.add(0, 1)
            logger.info(
                "%s: resumed the submission of repetition %d at %s of %s (%s)",
                remote.url,
                repetition,
                _mb(offset),
                _mb(total),
                remote.scrub(str(exc))[:300],
            )


def _resumable(exc: Exception, handed: int, resumed: int) -> bool:
    """A break of an upload (not a refusal): the connection lost after bytes went out, or a resumption to retry."""
    if isinstance(exc, RemoteUnavailable):
        return handed > 0 or resumed > 0
    if isinstance(exc, RemoteBusy):  # the device still reads the broken connection: ask again shortly
        return resumed > 0
    return not isinstance(exc, RemoteTimeout) and _code(exc) in (ErrorCode.TRUNCATED, ErrorCode.OFFSET_MISMATCH)


def _held(remote: Requester, target: str, total: int, timeout: float) -> int | None:
    """``HEAD {rep}/submit``: the bytes of this submission the device holds; ``None`` when it holds none."""
    answer = remote.request("HEAD", target, headers={}, timeout=timeout, check=False)
    answer.close()
    if answer.status in (404, 405):  # 405: a device without resumable submissions
        return None
    offset = content_length(answer.headers.get(UPLOAD_OFFSET))
    length = answer.headers.get(UPLOAD_LENGTH)
    if answer.status != 204 or offset is None or offset > total or (length is not None and length != str(total)):
        raise RemoteUnavailable(
            remote.url,
            f"answered HEAD {target} with {answer.status}, Upload-Offset "
            f"{str(answer.headers.get(UPLOAD_OFFSET))[:40]!r}; expected 204 and at most {total} bytes",
        )
    return offset


def checked_resumed(answer: Answer, repetition: int, url: str) -> Answer:
    """A resumed result's answer for ``repetition`` (its repetition header checked), else a RemoteError."""
    answered = answer.headers.get(REPETITION_HEADER)
    if answered is not None and answered != str(repetition):
        answer.close()
        raise RemoteError(url, f"answered repetition {answered[:40]!r} instead of {repetition} to a resumed download")
    return answer
