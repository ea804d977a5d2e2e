"""The transport contract: how one request reaches a device and how its answer comes back.

A :class:`~fedsync.transports.remote.Remote` speaks fedsync's protocol (routes, headers,
every check of an answer) over a :class:`Transport`, which only carries requests: HTTP
(:mod:`fedsync.transports.http`), ``local://`` (:mod:`fedsync.transports.local`), worker
processes (:mod:`fedsync.transports.process.pool`), Ray (``fedsync_ray``) or a third party's
(see the ``register_transports`` hook in :mod:`fedsync.plugins.hookspecs`).

A transport implements two methods::

    class MyTransport(Transport):
        def request(self, method, target, *, headers, body, timeout) -> Answer: ...
        def close(self) -> None: ...

and its :class:`Answer` three: ``status``, ``headers``, and ``readinto(view, deadline)``, which
reads the body a piece at a time (a merge folds a reply in as it arrives) and never waits past the
:class:`~fedsync.wire.transfer.Deadline` it is given. :class:`BytesAnswer` is an answer whose body
is already in memory.

Errors: a device that cannot be reached raises :class:`~fedsync.errors.RemoteUnavailable`, one that
does not answer in time :class:`~fedsync.errors.RemoteTimeout`, anything else that is the device's
fault :class:`~fedsync.errors.RemoteError`, each built as ``RemoteError(url, reason)``. Whatever a
transport raises fails that device alone, never the round.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping

from ..wire.transfer import Deadline

__all__ = ["Transport", "Answer", "BytesAnswer", "Body", "Headers", "body_bytes", "redact_bearer"]

Body = bytes | bytearray | memoryview | Iterable[bytes | memoryview]
"""A request body: bytes-like, or an iterable of bytes-like frames whose ``len()`` is the total size
in bytes (a :class:`fedsync.wire.codec.Payload`, which views the model's arrays: send its frames as
they are rather than joining them, when the transport can)."""


def body_bytes(body: Body | None) -> bytes:
    """``body`` as one ``bytes`` (a :class:`~fedsync.wire.codec.Payload`'s frames joined), for a
    transport that cannot send frames one by one; ``b""`` for ``None``."""
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return b"".join(bytes(memoryview(frame).cast("B")) for frame in body)


_BEARER = re.compile(r"(?i)(bearer)(\s+)\S+")


def redact_bearer(text: str) -> str:
    """``text`` with any ``Bearer <credential>`` replaced by ``Bearer [redacted]``."""
    return _BEARER.sub(r"\1\2[redacted]", text)


class Headers(Mapping[str, str]):
    """Answer headers whose lookups ignore case: ``headers["content-length"]`` is ``headers["Content-Length"]``.

    Built from ``(name, value)`` pairs; a name given twice keeps its last value.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = {name.lower(): value for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class Answer(ABC):
    """A device's answer to one request: its status and headers now, its body read later.

    Attributes:
        status: the HTTP status code (200, 202, 409, ...), whatever the transport.
        headers: the answer's headers; lookups ignore case (``headers.get("Content-Length")``).
            A body whose size is known carries ``Content-Length`` (decimal digits): a
            device's result must, so that a merge knows the size before reading.
    """

    status: int
    headers: Mapping[str, str]

    @abstractmethod
    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """Read up to ``len(view)`` bytes of the body into ``view``; the number read, 0 at its end.

        Return as soon as some bytes are there (one ``recv``, not a loop until ``view`` is full),
        and wait no longer than ``deadline.read_wait()`` seconds for them.

        Raises:
            RemoteTimeout: nothing arrived in time (``deadline.expired`` says why).
            RemoteUnavailable: the connection was lost.
        """

    def close(self) -> None:  # noqa: B027 - optional: an answer in memory holds nothing to release
        """Release the answer (a connection goes back to its pool if the body was read to its end).

        Called once the body is read, or when it will not be; calling it again does nothing.
        """

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesAnswer(Answer):
    """An answer whose body is already in memory (bytes, or any buffer: a view, a numpy array).

    The body is read out of ``content`` a piece at a time, never copied whole.
    ``Content-Length`` is set to its size unless ``headers`` carry one.
    """

    def __init__(
        self, status: int, headers: Iterable[tuple[str, str]], content: bytes | bytearray | memoryview
    ) -> None:
        self.status = status
        self.body: memoryview | None = memoryview(content).cast("B")
        pairs = list(headers)
        if not any(name.lower() == "content-length" for name, _ in pairs):
            pairs.append(("Content-Length", str(len(self.body))))
        self.headers = Headers(pairs)
        self.at = 0

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """Copy the next piece of the body into ``view`` (it is in memory: no wait, so no deadline)."""
        if self.body is None:
            return 0
        n = min(len(view), len(self.body) - self.at)
        view[:n] = self.body[self.at : self.at + n]
        self.at += n
        return n

    def close(self) -> None:
        """Drop the body (a Ray reply leaves the object store once no one holds it)."""
        self.body = None


class Transport(ABC):
    """How requests reach one device: the part of a :class:`~fedsync.transports.remote.Remote` that moves bytes.

    One transport serves one device (its URL); :meth:`request` is called from several
    threads at once (a long-poll beside a download) and must be safe for that.
    """

    @abstractmethod
    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> Answer:
        """Send one request; its answer, the body unread.

        Args:
            method: ``"GET"``, ``"HEAD"`` or ``"POST"``.
            target: the path and query below the device's URL, e.g. ``"/3/result?wait=1.500"``.
            headers: the request's headers (specs, content type, config).
            body: the request body (see :data:`Body`), or ``None``.
            timeout: seconds the answer's status and headers may take (the device's long-poll
                wait included); an HTTP transport applies it to each wait of its socket.

        Any status is an answer (a 409 too): the caller reads the device's refusal.

        Raises:
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within ``timeout``.
            RemoteError: anything else that is the device's fault (e.g. malformed HTTP).
        """

    def close(self) -> None:  # noqa: B027 - optional: not every transport holds connections
        """Release connections (or in-process state); the transport may be used again afterwards."""

    def scrub(self, text: str) -> str:
        """``text`` without any credential this transport sends (for error messages and history)."""
        return redact_bearer(text)
