"""Reading an HTTP answer's body under a deadline and a size cap.

``requests`` bounds each socket read by its timeout, not a whole body: a
device that sends one byte a second keeps a reader waiting for ever, and
``response.json()`` or ``.text`` holds whatever size the device sends. Every
body the coordinator reads passes through :func:`read_some` (at most one
``recv``, which waits no longer than the :class:`Deadline` allows) and, when
read whole, :func:`read_capped` (at most a given number of bytes).

The deadline rule, for a round's replies: until the round's deadline a read
may wait until the deadline; after it, a reply whose device answered in time
is still read while it keeps flowing (each read returns within ``stall``
seconds) and within the grace period (``grace`` seconds past the deadline).
A reply that stops flowing then is dropped and its device named late.

Public on purpose (docs/modules.md): the transport contract (:mod:`fedsync.plugins.hookspecs`) hands every
remote a :class:`Deadline`, and a third-party transport honours it with these reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteError, RemoteTimeout, RemoteUnavailable

__all__ = ["Deadline", "LATE", "STALL", "read_some", "read_capped", "release", "content_length", "round_grace", "NEVER"]

STALL = 1.0
"""Seconds a reply may pause once its round's deadline has passed, before it is dropped as late."""

MAX_GRACE = 10.0
"""The longest grace period, in seconds, for replies still arriving at a round's deadline."""

GRACE_SHARE = 0.1
"""The grace period as a share of the round's timeout (at most ``MAX_GRACE``)."""

LATE = "late: the result was still arriving at the round's deadline"

MAX_DIGITS = 19
"""Digits of the largest Content-Length accepted (below 2**63)."""


def round_grace(timeout: float) -> float:
    """The grace period, in seconds, of a round whose timeout is ``timeout`` seconds."""
    return min(MAX_GRACE, GRACE_SHARE * timeout)


@dataclass(frozen=True)
class Deadline:
    """When reading an answer's body must stop; what a transport's ``Answer.readinto`` is handed.

    Attributes:
        at: the deadline, a ``time.monotonic()`` value (seconds).
        grace: seconds past ``at`` during which a reply that keeps flowing is still read
            (0 for one request's answer; a round's grace is :func:`round_grace`).
        stall: the longest wait, in seconds, for each read once ``at`` is near or past (``STALL``).
        expired: the reason, a sentence, to raise as ``RemoteTimeout(url, deadline.expired)``
            when a read runs out of time: :data:`LATE` for a round's deadline, ``"timed out:
            the answer was still arriving after 5s"`` for ``Deadline.within(5)``.

    A transport reads it through :meth:`read_wait`, called just before each wait of its
    socket (or queue, or pipe): a ``float`` of seconds, never ``None``. While ``at`` is more
    than ``stall`` seconds away it is the time left until ``at``; then ``stall``, but never
    past ``at + grace``. Zero or less means reading is over: raise
    ``RemoteTimeout(url, deadline.expired)`` without waiting (fedsync's own reader checks
    this before each ``readinto`` too, and reports a timeout with ``expired``). It is
    ``math.inf`` only for a deadline at infinity (:data:`NEVER`), which fedsync never hands
    to a transport; ``socket.settimeout`` refuses ``inf`` (``OverflowError``).

    To build one in a test: ``Deadline.within(2.0)`` (2 s from now, no grace),
    ``Deadline(time.monotonic() + 2.0, grace=1.0)`` (a round's shape), or an expired one,
    ``Deadline(time.monotonic() - 1.0)``, whose ``read_wait()`` is below zero. It is
    immutable (a frozen dataclass): one can be shared by every reader of a round.
    """

    at: float
    grace: float = 0.0
    stall: float = STALL
    expired: str = LATE

    @classmethod
    def within(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, without grace (for one request's answer)."""
        return cls(
            time.monotonic() + seconds, 0.0, expired=f"timed out: the answer was still arriving after {seconds:g}s"
        )

    def left(self) -> float:
        """Seconds until ``at`` (negative once it passed)."""
        return self.at - time.monotonic()

    def read_wait(self) -> float:
        """Seconds (a ``float``, never ``None``) the next socket read may wait: until ``at``, or
        ``stall`` once it is near or past, never past the grace period. Zero or less: reading is
        over (raise ``RemoteTimeout(url, self.expired)``)."""
        now = time.monotonic()
        return min(max(self.at - now, self.stall), self.at + self.grace - now)

    def request_timeout(self, longest: float) -> float:
        """A timeout for one request (each socket wait) ending no later than this deadline allows."""
        return max(0.05, min(longest, self.at + self.grace - time.monotonic()))


NEVER = Deadline(math.inf)


def content_length(value: Any) -> int | None:
    """A Content-Length header's value: decimal digits only (no sign, no spaces, no list); else ``None``."""
    if isinstance(value, str) and 0 < len(value) <= MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def _socket(response: Any) -> Any:
    raw = getattr(response, "raw", response)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    return getattr(connection, "sock", None)


def read_some(response: Any, view: memoryview, deadline: Deadline, url: str) -> int:
    """Read at most ``len(view)`` bytes of ``response``'s body with at most one ``recv``.

    The socket waits no longer than ``deadline.read_wait()``. Returns 0 at the
    body's end (or when ``view`` is empty); a connection that ends before the
    announced length also returns 0 (the caller knows the length).

    Raises:
        RemoteTimeout: nothing arrived in time (``deadline.expired`` says why).
        RemoteUnavailable: the connection failed.
    """
    if not len(view):
        return 0
    wait = deadline.read_wait()
    if wait <= 0:
        raise RemoteTimeout(url, deadline.expired)
    raw = getattr(response, "raw", response)
    source = getattr(raw, "_fp", None)  # http.client's response: fills our buffer directly
    sock = _socket(response)
    try:
        if sock is not None:
            sock.settimeout(wait)
        if source is None:  # not http.client underneath: urllib3's own read
            data = raw.read(len(view))
            view[: len(data)] = data
            return len(data)
        return _readinto1(source, view)
    except TimeoutError:
        if deadline.left() <= 0 or deadline.grace <= 0:
            raise RemoteTimeout(url, deadline.expired) from None
        raise RemoteTimeout(url, f"the answer stopped arriving for {wait:.1f}s") from None
    except Exception as exc:  # urllib3, http.client and ssl raise several types for a lost connection
        raise RemoteUnavailable(
            url, f"connection lost while reading the answer ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _readinto1(source: Any, view: memoryview) -> int:
    """http.client's ``HTTPResponse.readinto`` with one ``recv`` at most (it loops until ``view`` is full)."""
    if source.fp is None:
        return 0
    if source.chunked or source.length is None:
        data = source.read1(len(view))
        view[: len(data)] = data
        return len(data)
    wanted = min(len(view), source.length)
    if wanted <= 0:
        source.readinto(memoryview(bytearray(0)))  # at the end: http.client releases the connection
        return 0
    n = source.fp.readinto1(view[:wanted])
    if n:
        source.length -= n
        if not source.length:
            # An empty read at length 0 is how http.client marks the body done,
            # so the kept-alive connection can return to the pool.
            source.readinto(memoryview(bytearray(0)))
    return n


def release(response: Any) -> None:
    """Done with ``response``: its connection back to the pool if the body was read to its end, else closed."""
    raw = getattr(response, "raw", None)
    source = getattr(raw, "_fp", None)
    if raw is not None and source is not None and source.isclosed() and hasattr(raw, "release_conn"):
        raw.release_conn()
    else:
        response.close()


def read_capped(
    response: Any,
    cap: int,
    deadline: Deadline,
    url: str,
    *,
    truncate: bool = False,
    limit: str = "the limit",
    advice: str = "",
) -> bytes:
    """The body of ``response``, at most ``cap`` bytes, read under ``deadline``; the response is then released.

    A body announced or found longer than ``cap`` raises :class:`RemoteError`
    (naming ``limit``, then ``advice``), or with ``truncate`` is cut at ``cap``
    bytes (the connection is then closed, its rest unread).

    Raises:
        RemoteError: over ``cap`` bytes (without ``truncate``); RemoteTimeout,
            RemoteUnavailable: as :func:`read_some`.
    """
    headers = getattr(response, "headers", {})
    announced = headers.get("Content-Length")
    length = content_length(announced)
    if announced is not None and length is None:
        response.close()
        raise RemoteError(url, f"answered with an invalid Content-Length {announced[:40]!r}; expected decimal digits")
    if length is not None and length > cap and not truncate:
        response.close()
        raise RemoteError(url, f"announced {length} bytes, more than {limit} ({cap}) bytes{advice}")
    buffer = bytearray(min(cap, length) if length is not None else min(cap, 1 << 16) + 1)
    got = 0
    try:
        while True:
            if got == len(buffer):
                if length is not None or got > cap:
                    break
                buffer.extend(bytes(min(len(buffer), cap + 1 - len(buffer))))
            n = read_some(response, memoryview(buffer)[got:], deadline, url)
            if not n:
                break
            got += n
    except RemoteError:
        response.close()
        raise
    if got > cap:
        if not truncate:
            response.close()
            raise RemoteError(url, f"sent more than {limit} ({cap}) bytes{advice}")
        got = cap
    if length is not None and got < length and got < cap:
        response.close()
        raise RemoteUnavailable(url, f"the answer ended after {got} of {length} bytes")
    release(response)  # closed if its rest was never read: the connection cannot be reused
    return bytes(buffer[:got])
