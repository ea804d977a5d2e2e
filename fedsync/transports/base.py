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
is already in memory, :class:`Headers` a mapping of answer headers whose lookups ignore case.

Errors: a device that cannot be reached raises :class:`~fedsync.errors.RemoteUnavailable`, one that
does not answer in time :class:`~fedsync.errors.RemoteTimeout`, anything else that is the device's
fault :class:`~fedsync.errors.RemoteError`, each built as ``RemoteError(url, reason)``. Whatever a
transport raises fails that device alone, never the round.

The rules a transport over a socket must know (the timeout, the URL's path, the headers it adds,
framing, bounds, threads) are in :meth:`Transport.request`'s docstring; docs/plugins.md
("Transports") walks through them with a complete example.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping

from ..wire.transfer import Deadline

__all__ = ["Transport", "Answer", "BytesAnswer", "Body", "Headers", "body_bytes", "redact_bearer"]

Body = bytes | bytearray | memoryview | Iterable[bytes | memoryview]
"""A request body: bytes-like, or an iterable of bytes-like frames (a :class:`fedsync.wire.codec.Payload`,
which views the model's arrays: send its frames as they are rather than joining them, when the
transport can).

Its size in bytes is ``memoryview(body).nbytes`` for a bytes-like body, not ``len(body)``: a
``memoryview`` of float32 data (what a FedData's ``serialize`` may return, passed on unchanged)
has ``len()`` = its number of items. A ``Payload``'s ``len()`` is its size in bytes (its
``.nbytes``); for frames in general, sum ``memoryview(frame).nbytes``."""


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

    An answer to ``HEAD``, and one with status 204, 304 or 1xx, has no body whatever its
    ``Content-Length`` says: its :meth:`readinto` returns 0 and reads nothing from the connection
    (:meth:`Remote.ready <fedsync.transports.remote.Remote.ready>` sends ``HEAD``; it closes that
    answer unread).

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
        and wait no longer than ``deadline.read_wait()`` seconds for them: call it just before
        waiting, and set that as the socket's timeout. ``read_wait()`` is a float of seconds,
        never ``None``; zero or less means the time is up: raise
        ``RemoteTimeout(url, deadline.expired)`` without waiting. How
        :class:`~fedsync.wire.transfer.Deadline` computes it, and how to build one in a test
        (``Deadline.within(2.0)``), is in its docstring. An answer already in memory never
        waits and may ignore ``deadline`` (:class:`BytesAnswer` does).

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

    One transport serves one device (its URL). :meth:`request` is called from several threads
    at once and must be safe for that: within a round one device's requests follow one another
    (submission, long-polls, download), but a call that a round, a handshake or a secure-aggregation
    phase stopped waiting for goes on in its thread while the next call to the same device starts
    (the coordinator's threads are never killed; every call ends by its own timeout). So two
    requests may be in flight at once, and an earlier answer may still be open, its body unread,
    when the next request starts.

    A transport may pool connections, as :class:`~fedsync.transports.http.HTTPTransport` does
    (a ``requests`` session): give each request in flight a connection of its own, and take one
    back into the pool only once its answer's body was read to its end, the answer was framed by
    ``Content-Length`` (or had no body) and did not say ``Connection: close``; an answer closed
    earlier closes its connection. One connection per request, closed with its answer, is also
    correct (fedsync's test transport does that).
    """

    @abstractmethod
    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> Answer:
        """Send one request; its answer once its status line and headers are in, the body unread.

        Args:
            method: ``"GET"``, ``"HEAD"`` or ``"POST"``. Only
                :meth:`Remote.ready <fedsync.transports.remote.Remote.ready>` sends ``HEAD`` (a
                round long-polls with ``GET``); its answer has no body (see :class:`Answer`).
            target: the path and query below the device's URL, e.g. ``"/3/result?wait=1.500"``;
                it never holds the URL's own path. A device serving several FedData
                (``serve({"model": ...})``) is reached at ``http://host:port/model``: put the
                URL's path in front of ``target`` (``/model/3/result?wait=1.500``), as
                :class:`~fedsync.transports.http.HTTPTransport` does (``url + target``; the
                ``Remote`` strips a trailing ``/`` from its URL, a factory gets the URL as given).
            headers: the protocol's headers, and only those: none for ``GET`` and ``HEAD``
                but ``Range: bytes=N-`` for a result resumed after a break;
                ``X-Fedsync-Specs``, ``Content-Type`` and, when the round has a configuration,
                ``X-Fedsync-Config`` for a submission or an evaluation (plus ``Upload-Offset`` and
                ``Upload-Length`` for a resumed submission: docs/protocol.md, "Transfers that
                resume"); ``Content-Type: application/json`` for secure aggregation's phases. Never ``Host``,
                ``Content-Length`` or ``Authorization``: an HTTP transport adds them, as
                ``requests`` does for ``HTTPTransport``. ``Content-Length`` goes with every body
                that is not ``None`` (a device answers ``411`` without it and refuses
                ``Transfer-Encoding``). The token is the transport's own:
                ``Remote(url, transport=..., token=...)`` does not use ``token`` (nor
                ``$FEDSYNC_TOKEN``); ``HTTPTransport`` sends ``Authorization: Bearer <token>``
                from its own ``token``. A transport that sends one takes it in its constructor
                and removes it from messages in :meth:`scrub`.
            body: ``None`` (``GET``, ``HEAD``), or what ``FedData.serialize`` returned (a ``str``
                already encoded as UTF-8; ``bytes``, ``bytearray``, a ``memoryview`` of any format,
                or a :class:`~fedsync.wire.codec.Payload` of frames), or secure aggregation's
                JSON ``bytes``; see :data:`Body` for counting its bytes (``.nbytes``, not ``len()``
                of a ``memoryview``).
            timeout: seconds; the rule is below.

        **The timeout.** ``timeout`` bounds the wait for the answer's status line and headers,
        a long-poll's ``wait`` included (the ``Remote`` passes the wait plus its own timeout).
        Every transport must see that no single wait for the device (connecting, sending a piece
        of the body, awaiting and reading the status line and headers) lasts longer than
        ``timeout`` seconds, and raise :class:`~fedsync.errors.RemoteTimeout` past it. That is
        exactly what ``HTTPTransport`` does: connecting waits at most
        ``min(Remote.timeout, timeout)`` per attempt (a refused connection is retried up to
        ``retries`` times, with backoff), each socket send of the body waits at most that same
        bound, and each ``recv`` of the status line and headers at most ``timeout``: per wait,
        not in total. Bounding the whole request by ``timeout`` instead, sending the body
        included, as the worker-process and Ray transports do, is stricter and meets the rule
        too. The answer's body is not under ``timeout``: :meth:`Answer.readinto`'s deadline
        bounds it.

        **Framing and bounds.** A fedsync device answers HTTP/1.1 (docs/protocol.md,
        "Connections"): every body framed by one ``Content-Length``, never chunked; the
        connection stays open unless the answer says ``Connection: close``; ``100 Continue``
        only to a request that sent ``Expect: 100-continue``. It may answer a refused
        submission (``409``, ``413``) before reading its body, then close: if sending fails,
        read the answer before reporting the connection lost. Bound what you read before
        returning: a status line or header line over 64 KiB, or more than 100 header lines, is
        malformed HTTP for ``HTTPTransport`` (``http.client``'s limits; the device's gateway
        takes at most 100 header lines, 64 KiB in all, from a request:
        :data:`fedsync.gateway.server.MAX_HEADER_BYTES`). Raise ``RemoteError`` for it.

        Any status is an answer (a 409 too): the caller reads the device's refusal.

        Raises:
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: a wait longer than ``timeout``, as above.
            RemoteError: anything else that is the device's fault (e.g. malformed HTTP, an
                answer over the bounds above).
        """

    def close(self) -> None:  # noqa: B027 - optional: not every transport holds connections
        """Release connections (or in-process state); the transport may be used again afterwards."""

    def scrub(self, text: str) -> str:
        """``text`` without any credential this transport sends (for error messages and history)."""
        return redact_bearer(text)
