"""One dialed-in job: its body downloaded (resuming with ``Range``), run through the device's app, its answer uploaded.

:class:`Connection` is the device's HTTP client to the listener (requests, a timeout on every call);
:func:`run_job` runs one job start to end and never raises for a listener's or a network's fault
(it logs them): the dialer's job threads call it. The wire: ``docs/dial-out.md``.

Internal: its names may change without notice.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .._util.json import shown
from .._version import __version__
from ..wire.http import ErrorCode
from ._dial_wire import (
    DIAL_PREFIX,
    MAX_JSON,
    SESSION_HEADER,
    DialRefused,
    Job,
    ListenerError,
    StaleSession,
    check_content_range,
    digits,
    error_of,
)

__all__ = [
    "Connection",
    "JobBody",
    "BodyLost",
    "Answer",
    "call_app",
    "environ_for",
    "BROKEN",
    "MAX_JOBS",
    "SMALL_ANSWER",
    "CONNECT_TIMEOUT",
    "IO_TIMEOUT",
]

logger = logging.getLogger("fedsync.server.dial")

MAX_JOBS = 4
"""Jobs a device runs at once (the coordinator may have two requests in flight for one device, e.g. a result's
long-poll and a secure-aggregation phase)."""

SMALL_ANSWER = 1024 * 1024
"""An answer up to this many bytes is held in memory (so a broken upload resends from it); larger ones stream."""

CHUNK = 1024 * 1024
"""The most bytes a body read or an upload piece moves at once: bounds the copies made on the way."""

CONNECT_TIMEOUT = 10.0
IO_TIMEOUT = 30.0
"""Seconds a connection may take to open, and a transfer may stall (the listener cuts a body stalled 30 s too)."""

TRANSFER_TRIES = 8
"""Consecutive failed attempts at a job's download or upload before the job is given up (progress resets it)."""

BROKEN = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ListenerError)
"""What a broken connection, a timeout or a listener's garbled answer raises: each is retried or the job given up."""


class Connection:
    """This device's HTTP client to one listener: the base URL of its routes, its token and its session.

    ``verify``/``cert`` are requests' (a CA bundle path or ``True``; a ``(certfile, keyfile)`` pair for
    mutual TLS). ``session`` is the id of the current registration (None before one).
    """

    def __init__(self, url: str, name: str, token: str, verify: bool | str, cert: tuple[str, str] | str | None) -> None:
        self.url = url
        self.name = name
        self.base = f"{url}{DIAL_PREFIX}/{urllib.parse.quote(name)}"
        self.session: str | None = None
        self.http = requests.Session()
        self._live: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self.aborted = False
        adapter = _TrackingAdapter(self, pool_connections=1, pool_maxsize=2 * MAX_JOBS + 2, max_retries=0)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.http.trust_env = False  # a proxy or netrc from the environment must not see the token
        self.http.verify = verify
        self.http.cert = cert
        self.http.headers.update(
            {"Authorization": f"Bearer {token}", "User-Agent": f"fedsync/{__version__}", "Accept-Encoding": "identity"}
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float = IO_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        headers: dict[str, str] | None = None,
        data: Any = None,
        session: bool = True,
    ) -> requests.Response:
        """``method`` on ``base + path``, streamed (the caller reads or closes the body).

        Raises:
            DialRefused: 401 or 403 (the message names the cause and what to do).
            StaleSession: 409 ``stale_session``.
            BROKEN: the network's or the listener's failure.
        """
        sent = dict(headers or {})
        if session and self.session is not None:
            sent[SESSION_HEADER] = self.session
        response = self.http.request(
            method,
            self.base + path,
            headers=sent,
            data=data,
            stream=True,
            timeout=(connect_timeout, read_timeout),
            allow_redirects=False,  # a redirect would carry the token elsewhere
        )
        if response.status_code in (401, 403, 409):
            code, message = error_of(read_bounded(response))
            if response.status_code == 409 and code != ErrorCode.STALE_SESSION:
                response._fedsync_error = (code, message)  # type: ignore[attr-defined]  # read by the caller
                return response
            if response.status_code == 409:
                raise StaleSession(message or "session replaced")
            raise DialRefused(refusal(response.status_code, code, message, self.url, self.name))
        return response

    def abort(self) -> None:
        """Cut every open connection, a long-poll in flight included (its thread then sees the dialer closing).

        Connections opened after it are cut at once: a poll starting just now cannot hold ``close()`` up.
        """
        self.aborted = True
        for connection in list(self._live):
            sock = getattr(connection, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already

    def close(self) -> None:
        self.http.close()


class _TrackingAdapter(HTTPAdapter):
    """requests' adapter, with connections that record themselves in their owner once connected (for ``abort``)."""

    def __init__(self, owner: Connection, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        owner = self._owner

        def opened(connection: HTTPConnection) -> None:
            owner._live.add(connection)
            if owner.aborted:
                raise ConnectionAbortedError("the dialer is closing")

        class Tracked(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                opened(self)

        class TrackedTLS(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                opened(self)

        class Pool(HTTPConnectionPool):
            ConnectionCls = Tracked

        class TLSPool(HTTPSConnectionPool):
            ConnectionCls = TrackedTLS

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}


def refusal(status: int, code: str, message: str, url: str, name: str) -> str:
    """What to tell the user when the listener refuses this device: the cause, then what to do."""
    said = f"{code}: {message}" if code else message or "no reason given"
    if status == 403:
        todo = (
            f"ask the coordinator's operator to add {name!r} to the listener's allow-list "
            "(Listener(devices={name: token})), or pass the name it knows (--name), and with mutual TLS a "
            "certificate whose identity is that name"
        )
    else:
        todo = "pass the token the coordinator holds for this name (--token or $FEDSYNC_TOKEN)"
    return f"{url} refused {name!r} ({status} {said}); {todo}"


def read_bounded(response: requests.Response, limit: int = MAX_JSON) -> bytes:
    """A small answer's body, at most ``limit`` bytes (a longer one is a ListenerError); closes the response.

    Raises:
        ListenerError: a body longer than ``limit``.
    """
    try:
        raw = response.raw.read(limit + 1)
    finally:
        response.close()
    if len(raw) > limit:
        raise ListenerError(f"the listener's answer ({response.status_code}) is longer than {limit} bytes")
    return bytes(raw)


def unexpected(response: requests.Response, what: str) -> ListenerError:
    """The ListenerError for an answer of an unexpected status, with the listener's own error text."""
    code, message = getattr(response, "_fedsync_error", None) or error_of(read_bounded(response, 64 * 1024))
    return ListenerError(f"{what}: {response.status_code} {code + ': ' if code else ''}{message}".rstrip(": "))


# -- the body of a job: wsgi.input ---------------------------------------------------------------


class BodyLost(ConnectionError):
    """A job's body could not be downloaded whole: the device app's input broke, as a socket's would."""


class JobBody:
    """``wsgi.input`` of a job: ``GET .../jobs/{job}/body``, resumed with ``Range: bytes=N-`` when it breaks.

    Reads at most ``length`` bytes and at most :data:`CHUNK` per call (urllib3 copies what it reads),
    so the app's own buffer is the only whole copy of the body. After :data:`TRANSFER_TRIES`
    failures in a row without a byte of progress it raises :class:`BodyLost`, a ``ConnectionError``:
    the kind of failure the device app passes up as its input's own (any other exception it answers
    ``500 internal_error``, as a bug of the device). A refusal or a stale session while downloading is
    kept in ``fatal`` (and raised as ``BodyLost`` through the app) for :func:`run_job` to raise after.
    ``resumes``: how many times a broken download was resumed.
    """

    def __init__(
        self, connection: Connection, job: Job, backoff: Callable[[int], float], stopping: threading.Event
    ) -> None:
        self._connection = connection
        self._path = f"/jobs/{job.id}/body"
        self.length = job.length
        self.position = 0
        self.resumes = 0
        self._backoff = backoff
        self._stopping = stopping
        self._response: requests.Response | None = None
        self.fatal: DialRefused | StaleSession | None = None

    def _open(self) -> requests.Response:
        start = self.position
        headers = {"Range": f"bytes={start}-"} if start else {}
        response = self._connection.request("GET", self._path, headers=headers)
        expected = 206 if start else 200
        if response.status_code != expected:
            raise unexpected(response, f"the job's body from byte {start} (expected {expected})")
        try:
            sent = digits(response.headers.get("Content-Length"), "the job body's Content-Length", self.length)
            if start:
                check_content_range(response.headers.get("Content-Range"), start, self.length)
            if sent != self.length - start:
                raise ListenerError(f"the job body's Content-Length is {sent}, expected {self.length - start}")
        except ListenerError:
            response.close()
            raise
        return response

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        view = view[: min(len(view), self.length - self.position, CHUNK)]
        if not len(view):
            return 0
        failures = 0
        while True:
            try:
                if self._response is None:
                    self._response = self._open()
                    if self.position:
                        self.resumes += 1
                        logger.info("resumed the download of a job's body at byte %d of %d", self.position, self.length)
                got = self._response.raw.readinto(view)
                if not got:
                    raise ListenerError(f"the job's body ended at byte {self.position} of {self.length}")
                self.position += got
                return got
            except (DialRefused, StaleSession) as exc:
                self.close()
                self.fatal = exc
                raise BodyLost(f"the listener refused the body's download: {exc}") from None
            except BROKEN as exc:
                self.close()
                failures += 1
                if self._stopping.is_set():  # close() cut the download: no warning, the job just ends
                    raise BodyLost("the dialer is closing") from None
                if failures >= TRANSFER_TRIES:
                    raise BodyLost(
                        f"could not download the job's body past byte {self.position} of {self.length} "
                        f"after {failures} tries: {exc}"
                    ) from None
                delay = self._backoff(failures)
                logger.warning(
                    "the download of a job's body broke at byte %d of %d (%s); resuming in %.1f s",
                    self.position, self.length, _reason(exc), delay,
                )  # fmt: skip
                self._stopping.wait(delay)

    def read(self, size: int = -1) -> bytes:
        size = self.length - self.position if size is None or size < 0 else size
        out = bytearray()
        while len(out) < size:
            piece = bytearray(min(size - len(out), CHUNK))
            got = self.readinto(piece)
            if not got:
                break
            out += piece[:got]
        return bytes(out)

    def readline(self, size: int = -1) -> bytes:
        # The device's routes read lengths, never lines: one byte at a time is enough for a WSGI app that does.
        out = bytearray()
        while (size is None or size < 0 or len(out) < size) and (byte := self.read(1)):
            out += byte
            if byte == b"\n":
                break
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


def environ_for(job: Job, body: Any, url: str) -> dict[str, Any]:
    """The PEP 3333 environ of ``job`` (as :mod:`fedsync.gateway.server` builds one for a request off the socket)."""
    parts = urllib.parse.urlsplit(url)
    path, _, query = job.target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": job.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": parts.hostname or "localhost",
        "SERVER_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": parts.hostname or "",
        "CONTENT_TYPE": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": parts.scheme,
        "wsgi.input": body,
        "wsgi.errors": _Errors(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if job.method == "POST":
        environ["CONTENT_LENGTH"] = str(job.length)
    for name, value in job.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        if key == "HTTP_CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if key in _NOT_FORWARDED:
            continue
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


# The body's length is the job's; the connection's own headers belong to the listener's hop, not to this request.
_NOT_FORWARDED = frozenset(
    "HTTP_" + n for n in ("CONTENT_LENGTH", "CONNECTION", "KEEP_ALIVE", "TRANSFER_ENCODING", "TE", "UPGRADE", "EXPECT")
)


class _Errors:
    """``wsgi.errors``: what the app writes there goes to the log."""

    def write(self, text: str) -> None:
        if text.strip():
            logger.error("device app: %s", text.rstrip())

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


# -- the app's answer ---------------------------------------------------------------------------


@dataclass
class Answer:
    """The app's answer to a job: status (3 digits), headers as sent in X-Fedsync-Headers, body length and pieces.

    ``held`` is the whole body when it is small (a broken upload resends from it); else ``pieces`` streams it.
    """

    status: int
    headers: dict[str, str]
    length: int
    held: bytes | None
    pieces: Iterator[bytes]
    close: Callable[[], None]


def call_app(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Answer:
    """Run one WSGI call of ``app``; the answer's body is not read yet unless it is small or of unknown length.

    Raises:
        RuntimeError: the app broke WSGI (no start_response, a bad status, a body longer than announced
            or of unknown length above :data:`SMALL_ANSWER`).
    """
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [(status, list(headers))]
        return written.append

    result = app(environ, start_response)
    closers = [getattr(result, "close", None)]

    def close() -> None:  # once, however many times it is called (PEP 3333 asks for one close)
        closer = closers.pop() if closers else None
        if closer is not None:
            closer()

    try:
        iterator = iter(result)
        first: list[bytes] = list(written)
        while not started:
            piece = next(iterator, None)
            if piece is None:
                break
            first.append(piece)
        if not started:
            raise RuntimeError("the device app returned without calling start_response")
        status_line, header_list = started[0]
        code = status_line[:3]
        if not (code.isascii() and code.isdigit() and len(status_line) >= 3 and 100 <= int(code) <= 599):
            raise RuntimeError(f"the device app answered a bad status {shown(status_line)}")
        headers: dict[str, str] = {}
        for name, value in header_list:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status = int(code)
        if environ["REQUEST_METHOD"] == "HEAD" or status in (204, 304) or status < 200:
            close()
            return Answer(status, headers, 0, b"", iter(()), lambda: None)
        announced = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
        pieces = _chain(first, iterator)
        if announced is not None:
            length = digits(announced, "the device app's Content-Length", 2**62)
            if length > SMALL_ANSWER:
                return Answer(status, headers, length, None, pieces, close)
        held = bytearray()
        for piece in pieces:
            held += piece
            if len(held) > SMALL_ANSWER:
                raise RuntimeError(f"the device app answered more than {SMALL_ANSWER} bytes without a Content-Length")
        close()
        if announced is not None and len(held) != int(announced):
            raise RuntimeError(f"the device app answered {len(held)} bytes, announced {announced}")
        return Answer(status, headers, len(held), bytes(held), iter(()), lambda: None)
    except BaseException:
        close()
        raise


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def _reason(exc: BaseException) -> str:
    """A broken transfer's cause, in one short line: the innermost error requests and urllib3 wrap."""
    seen: BaseException = exc
    for _ in range(6):  # requests wraps urllib3's error, which wraps http.client's or the socket's
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        seen = inner
    text = str(seen) or type(seen).__name__
    if isinstance(seen, ConnectionRefusedError):
        text = "connection refused: is the coordinator's listener running?"
    return shown(text, 160, quote=False)
