"""Reading an answer's body under a deadline and a size cap.

``requests`` bounds each socket read by its timeout, not a whole body: a
device that sends one byte a second keeps a reader waiting for ever, and
``response.json()`` or ``.text`` holds whatever size the device sends. Every
body the coordinator reads passes through :func:`read_some` (one ``readinto`` of
the answer: over HTTP at most one ``recv``, which waits no longer than the
:class:`Deadline` allows) and, when read whole, :func:`read_capped` (at most a
given number of bytes). They read any :class:`Readable`: every transport's answer.

The deadline rule, for a round's replies: until the round's deadline a read
may wait until the deadline; after it, a reply whose device answered in time
is still read while it keeps flowing (each read returns within ``stall``
seconds) and within the grace period (``grace`` seconds past the deadline).
A reply that stops flowing then is dropped and its device named late.

Public on purpose (docs/modules.md): the transport contract (:mod:`fedsync.plugins.hookspecs`) hands every
remote a :class:`Deadline`, which a third-party transport's answers honour in ``readinto``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import RemoteError, RemoteTimeout, RemoteUnavailable

__all__ = [
    "Deadline",
    "LATE",
    "STALL",
    "Readable",
    "read_some",
    "read_capped",
    "content_length",
    "round_grace",
    "NEVER",
    "MAX_DEADLINE",
    "parse_deadline",
    "parse_seconds",
    "within_parent",
]

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


MAX_DEADLINE = 10_000_000.0
"""The most seconds ``X-Fedsync-Deadline`` may say (115 days): beyond any round."""


def parse_seconds(raw: str, most: float = MAX_DEADLINE) -> float:
    """A number of seconds a peer wrote, as every language writes it: a plain decimal in ``[0, most]``.

    ASCII digits with at most one ``.``, at most 32 characters, surrounding spaces ignored: no sign,
    exponent, underscore, ``inf`` or ``nan`` (what Python's ``float()`` alone would also take).

    Raises:
        ValueError: anything else, naming what was expected.
    """
    text = raw.strip()
    digits = text.replace(".", "", 1)
    if not 0 < len(text) <= 32 or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"expected seconds as a plain decimal number, e.g. 42.5; got {raw[:40]!r}")
    seconds = float(text)
    if not 0 <= seconds <= most:
        raise ValueError(f"expected at most {most:g} seconds, got {seconds:g}")
    return seconds


def parse_deadline(raw: str) -> float:
    """``X-Fedsync-Deadline``'s value: the seconds left in the coordinator's round (:func:`parse_seconds`).

    Raises:
        ValueError: not a plain decimal number in ``[0, MAX_DEADLINE]``.
    """
    return parse_seconds(raw, MAX_DEADLINE)


def within_parent(own: float, left: float | None) -> float:
    """The timeout of a round that must end within ``left`` seconds (a parent's deadline), its own being ``own``.

    Its replies' grace (:func:`round_grace`), one ``STALL`` and half a second of the parent's are kept
    aside, so the round and its merge end before the parent stops waiting. ``left=None``: ``own``.
    """
    if left is None:
        return own
    return max(0.0, min(own, left - round_grace(left) - STALL - 0.5))


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


class Readable(Protocol):
    """What the bounded reads take: an answer of the transport contract, seen from the wire's layer.

    Any :class:`fedsync.transports.base.Answer` is one: ``headers`` (lookups ignore case),
    ``readinto(view, deadline)`` (at most ``len(view)`` bytes, one wait of at most
    ``deadline.read_wait()`` seconds, 0 at the end) and ``close()`` (which releases the
    connection to its pool when the body was read to its end).
    """

    @property
    def headers(self) -> Mapping[str, str]: ...

    def readinto(self, view: memoryview, deadline: Deadline) -> int: ...

    def close(self) -> None: ...


def read_some(answer: Readable, view: memoryview, deadline: Deadline, url: str) -> int:
    """Read at most ``len(view)`` bytes of ``answer``'s body: one ``answer.readinto``, straight into ``view``.

    The read waits no longer than ``deadline.read_wait()`` (the answer's contract). Returns 0 at the
    body's end (or when ``view`` is empty); a connection that ends before the announced length
    also returns 0 (the caller knows the length). Whatever else the answer raises is named as the
    errors below, for device ``url``: a transport's bug fails that device, never the round.

    Raises:
        RemoteTimeout: nothing arrived in time (``deadline.expired`` says why).
        RemoteUnavailable: the connection failed.
    """
    if not len(view):
        return 0
    wait = deadline.read_wait()
    if wait <= 0:
        raise RemoteTimeout(url, deadline.expired)
    try:
        return answer.readinto(view, deadline)
    except RemoteUnavailable:  # already named by the answer (an HTTP answer's lost connection)
        raise
    except TimeoutError:
        if deadline.left() <= 0 or deadline.grace <= 0:
            raise RemoteTimeout(url, deadline.expired) from None
        raise RemoteTimeout(url, f"the answer stopped arriving for {wait:.1f}s") from None
    except Exception as exc:  # a third party's answer may raise anything: this device's failure
        raise RemoteUnavailable(
            url, f"connection lost while reading the answer ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def read_capped(
    answer: Readable,
    cap: int,
    deadline: Deadline,
    url: str,
    *,
    truncate: bool = False,
    limit: str = "the limit",
    advice: str = "",
) -> bytes:
    """The body of ``answer``, at most ``cap`` bytes, read under ``deadline``; the answer is then closed.

    A body announced or found longer than ``cap`` raises :class:`RemoteError`
    (naming ``limit``, then ``advice``), or with ``truncate`` is cut at ``cap``
    bytes (the connection is then closed, its rest unread).

    Raises:
        RemoteError: over ``cap`` bytes (without ``truncate``); RemoteTimeout,
            RemoteUnavailable: as :func:`read_some`.
    """
    announced = answer.headers.get("Content-Length")
    length = content_length(announced)
    if announced is not None and length is None:
        answer.close()
        raise RemoteError(url, f"answered with an invalid Content-Length {announced[:40]!r}; expected decimal digits")
    if length is not None and length > cap and not truncate:
        answer.close()
        raise RemoteError(url, f"announced {length} bytes, more than {limit} ({cap}) bytes{advice}")
    buffer = bytearray(min(cap, length) if length is not None else min(cap, 1 << 16) + 1)
    got = 0
    try:
        while True:
            if got == len(buffer):
                if length is not None or got > cap:
                    break
                buffer.extend(bytes(min(len(buffer), cap + 1 - len(buffer))))
            n = read_some(answer, memoryview(buffer)[got:], deadline, url)
            if not n:
                break
            got += n
    except RemoteError:
        answer.close()
        raise
    if got > cap:
        if not truncate:
            answer.close()
            raise RemoteError(url, f"sent more than {limit} ({cap}) bytes{advice}")
        got = cap
    if length is not None and got < length and got < cap:
        answer.close()
        raise RemoteUnavailable(url, f"the answer ended after {got} of {length} bytes")
    answer.close()  # released to its pool if read to its end; closed if its rest was never read
    return bytes(buffer[:got])
