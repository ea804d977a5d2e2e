"""A threaded HTTP/1.1 server for a WSGI app that keeps connections open: the device's, the dashboard's.

werkzeug's development server closes every connection (it sends
``Connection: close`` and drains the socket after each response), so each
request of a round cost the coordinator a new TCP connection and the device a
new thread. This server runs the same WSGI app on the standard library's
:mod:`http.server`, which parses requests and keeps HTTP/1.1 connections, and
adds what a WSGI gateway must do (PEP 3333). A connection stays open while the
client wants it and every request body was read in full; otherwise it closes.

Between requests an idle connection is closed after ``IDLE_TIMEOUT`` seconds;
while a request is handled, after ``REQUEST_TIMEOUT`` seconds without progress
(long: a reply may wait, unread, until the coordinator's merge takes it). A slow
peer holds nothing for long (docs/protocol.md, "Connections"): a request head must
be complete ``HEAD_TIMEOUT`` seconds after its first byte (after the connection is
accepted, for its first request; the TLS handshake included), a request body must
arrive at ``MIN_BODY_RATE`` bytes per second on average after ``BODY_GRACE``
seconds (else ``408 request_timeout``), and when all ``max_connections`` slots are
taken, a newcomer takes the slot of the longest-waiting connection that has not
authenticated (:data:`TRUST_KEY`) and has no request being answered.

Public for code that extends fedsync (docs/modules.md): :class:`KeepAliveServer` and the limits
in ``__all__``; to run a device, :func:`fedsync.serve` is the way. One request's WSGI body and
``start_response`` are :mod:`fedsync.gateway._wsgi`'s.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import io
import json
import logging
import re
import socket
import socketserver
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, cast

from .._util.checks import positive_int
from ..wire.http import ErrorCode
from ._pace import HeaderBudget, Slots, TimedReader, handshake
from ._wsgi import RequestBody, Response

__all__ = [
    "KeepAliveServer",
    "SOCKET_KEY",
    "TRUST_KEY",
    "IDLE_TIMEOUT",
    "HEAD_TIMEOUT",
    "BODY_GRACE",
    "MIN_BODY_RATE",
    "REQUEST_TIMEOUT",
    "MAX_REQUEST_LINE",
    "MAX_HEADER_BYTES",
    "MAX_CONNECTIONS",
]

logger = logging.getLogger("fedsync.server")

SOCKET_KEY = "fedsync.socket"
"""WSGI environ key of the connection's socket (for writing large bodies without a copy)."""

TRUST_KEY = "fedsync.trust"
"""WSGI environ key of a callable the app calls once the request authenticated (its token was right).

From then on the connection keeps its slot when strangers fill the others (:class:`KeepAliveServer`).
An app that never calls it leaves its connections strangers: still served, but replaceable while idle.
"""

IDLE_TIMEOUT = 120.0
"""Seconds an open connection may wait for its next request."""

HEAD_TIMEOUT = 10.0
"""Seconds from a request's first byte (from the accept, for a connection's first request) to its complete head."""

BODY_GRACE = 10.0
"""Seconds a request body may take before :data:`MIN_BODY_RATE` applies."""

MIN_BODY_RATE = 16 * 1024
"""Bytes per second a request body must arrive at, on average, after :data:`BODY_GRACE`; slower gets ``408``."""

REQUEST_TIMEOUT = 3600.0
"""Seconds a request's body or answer may make no progress before the connection is dropped."""

MAX_REQUEST_LINE = 16 * 1024
"""Bytes a request line may take (method, target, version); longer ones get ``414``."""

MAX_HEADER_BYTES = 64 * 1024
"""Bytes all of a request's header lines may take together (at most 100 lines); more get ``431``."""

LINGER_SECONDS = 2.0
"""Seconds an unread request body is drained after its answer, so the client can read the answer."""

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")  # a token without "_"
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_ERRORS = {
    400: ErrorCode.BAD_REQUEST,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    411: ErrorCode.LENGTH_REQUIRED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.TOO_LARGE,
    414: ErrorCode.URI_TOO_LONG,
    431: ErrorCode.HEADERS_TOO_LARGE,
    500: ErrorCode.INTERNAL_ERROR,
}
_ADVICE = {
    400: "send a well-formed HTTP/1.1 request, e.g. 'GET /info HTTP/1.1'",
    408: f"send the body at {MIN_BODY_RATE // 1024} KiB/s or faster",
    411: "send the body with a Content-Length header",
    414: f"keep the request line under {MAX_REQUEST_LINE} bytes",
    431: f"send at most 100 header lines, {MAX_HEADER_BYTES} bytes in all",
}

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


MAX_CONNECTIONS = 128
"""Connections a device keeps open at once, by default (a thread each)."""


def _canned(status: str, error: ErrorCode, message: str, extra: str = "") -> bytes:
    """A whole JSON error answer, written by the server itself where no handler runs."""
    body = json.dumps({"error": error, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY = _canned(
    "503 Service Unavailable",
    ErrorCode.TOO_MANY_CONNECTIONS,
    "this device has too many connections open; close idle ones, or retry later",
    "Retry-After: 1\r\n",
)


class KeepAliveServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves ``app`` on an already listening socket, one daemon thread per connection.

    Args:
        sock: a bound, listening TCP socket; the server owns it from now on.
        app: the WSGI application.
        ssl_context: an :class:`ssl.SSLContext`, or a ``(certfile, keyfile)`` pair, for HTTPS.
        max_connections: connections open at once (each has a thread), so threads and
            memory stay bounded whatever peers open. When all are taken, a newcomer takes
            the slot of the longest-open stranger (a connection that has not authenticated,
            see :data:`TRUST_KEY`, and has no request being answered), which is closed; with
            no stranger to replace, it is answered ``503 too_many_connections`` (plain HTTP)
            or closed (TLS) at once.

    Raises:
        ValueError: ``max_connections`` is not a positive integer.
    """

    daemon_threads = True
    block_on_close = False
    server_address: tuple[str, int]  # an IP socket's (host, port), from its getsockname()

    def __init__(
        self, sock: socket.socket, app: WSGIApp, ssl_context: Any = None, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.max_connections = positive_int("max_connections", max_connections)
        self.address_family = sock.family
        address = sock.getsockname()
        super().__init__(address[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        if isinstance(ssl_context, tuple):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*ssl_context)
            ssl_context = context
        self.ssl_context = ssl_context
        # The TLS handshake happens in each connection's own thread (_Handler.setup), not in
        # the accepting one: a client that connects and never handshakes blocks nobody else.
        self.socket = (
            ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            if ssl_context is not None
            else sock
        )
        self.server_name, self.server_port = str(address[0]), int(address[1])
        self.app = app
        self.slots = Slots(self.max_connections)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Give the connection a slot, or refuse it beyond ``max_connections`` (called on the accepting thread)."""
        if self.slots.admit(request):
            return True
        logger.warning(
            "refused a connection from %s: %d connections are open (max_connections)",
            client_address,
            self.max_connections,
        )
        if self.ssl_context is None:  # over TLS nothing can be said before a handshake: just close
            try:
                request.setblocking(False)  # never wait on the accepting thread
                request.send(_TOO_MANY)
            except OSError:
                pass
        return False  # socketserver then closes it

    def shutdown_request(self, request: Any) -> None:
        self.slots.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening and end the open connections: a closed device answers nobody."""
        super().server_close()
        for connection in self.slots.connections():
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (OSError, ValueError)):  # the peer's socket or TLS: its business
            logger.debug("connection from %s failed", client_address, exc_info=True)
        else:  # a fault of this server: say so (each handler path answers its errors itself)
            logger.error("connection from %s failed", client_address, exc_info=True)


_PLAIN_HTTP_TO_TLS = _canned(
    "400 Bad Request",
    ErrorCode.TLS_REQUIRED,
    "this device serves HTTPS, and this request came as plain HTTP: use an https:// URL",
)


def _send_plain(tls: ssl.SSLSocket, data: bytes) -> None:
    """Write ``data`` unencrypted on a TLS socket whose handshake failed (best effort, never blocking long)."""
    try:
        tls.settimeout(1.0)
        socket.socket.sendall(tls, data)  # the plain socket's method: no TLS record around it
    except OSError:
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    """Runs the WSGI app for every request of a connection (PEP 3333).

    Every request it cannot hand to the app (malformed request line or
    headers, a body framed other than by one Content-Length) is answered here
    as JSON ``{"error", "message"}`` with a 4xx status, and the connection is
    closed: a client's bad HTTP never reaches the app, nor the log as an error.
    """

    protocol_version = "HTTP/1.1"
    server: KeepAliveServer

    def setup(self) -> None:
        head_deadline = time.monotonic() + HEAD_TIMEOUT  # the first request's head: the handshake counts
        if isinstance(self.request, ssl.SSLSocket):
            try:
                handshake(self.request, head_deadline)  # a failure ends this connection only (handle_error)
            except ssl.SSLError as exc:
                if exc.reason == "HTTP_REQUEST":  # plain HTTP sent to this TLS port: say so, as nginx does
                    _send_plain(self.request, _PLAIN_HTTP_TO_TLS)
                raise
            if self.request.getpeercert():  # a client certificate the CA vouched for: mutual TLS
                self.server.slots.trust(self.request)
        super().setup()
        # Every read of the connection ends by its deadline (TimedReader); the stdlib's own
        # makefile() would wait IDLE_TIMEOUT per read, restarted by every trickled byte.
        self.reader = TimedReader(self.connection, IDLE_TIMEOUT)
        self.reader.deadline = head_deadline
        self.rfile = self._input = io.BufferedReader(self.reader)
        self._first = True
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # A response's headers and body are separate writes: without this the
            # body would wait for the client's delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        self.server.slots.busy(self.connection, False)  # between requests: a stranger's slot can be taken
        self.reader.idle = IDLE_TIMEOUT  # waiting for the next request
        self.reader.unpace()
        if not self._first:
            self.reader.arm(HEAD_TIMEOUT)  # its head must be whole HEAD_TIMEOUT after its first byte
        self._first = False
        self._expecting = False
        try:
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore an empty line before a request
                line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            self.raw_requestline = line
            if not line:
                self.close_connection = True
                return
            if len(line) > MAX_REQUEST_LINE:
                method = line.split(b" ", 1)[0]
                self.command = method.decode("latin-1") if _TOKEN.fullmatch(method) else ""  # HEAD: no body
                self.requestline, self.request_version = "", "HTTP/1.1"
                self.send_error(
                    414, explain=f"the request line is over {MAX_REQUEST_LINE} bytes; fedsync's URLs are short"
                )
                return
            if not self.parse_request():
                return  # answered already
            self._run()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def parse_request(self) -> bool:
        words = self.raw_requestline.rstrip(b"\r\n").split()
        self.command, self.request_version = "", "HTTP/1.1"  # no method yet; errors below are answered in HTTP/1.1
        self.requestline = self.raw_requestline.rstrip(b"\r\n").decode("latin-1")
        if words and _TOKEN.fullmatch(words[0]):
            self.command = words[0].decode("latin-1")  # an error answer to HEAD has no body
        if len(words) != 3:
            why = "HTTP/0.9 requests are not served" if len(words) == 2 else "malformed request line"
            self.send_error(400, explain=f"{why}; send 'METHOD /path HTTP/1.1', e.g. 'GET /info HTTP/1.1'")
            return False
        if not _TOKEN.fullmatch(words[0]):
            self.send_error(400, explain="the method is not an HTTP token; send GET, HEAD or POST")
            return False
        if not _VERSION.fullmatch(words[2]):  # the stdlib would answer HTTP/0.x without a status line
            self.send_error(
                400,
                explain=f"HTTP version {words[2][:20].decode('latin-1')!r} is not served; send HTTP/1.1 (or HTTP/1.0)",
            )
            return False
        # The stdlib parses the version and the headers; the budget bounds the headers' total size.
        # A cast, not a wrapper class: the stdlib's header parser only calls readline (http.client.parse_headers).
        rfile, self.rfile = self.rfile, cast(io.BufferedIOBase, HeaderBudget(self.rfile, MAX_HEADER_BYTES))
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = rfile
        self.server.slots.busy(self.connection, True)
        if not self.server.slots.holds(self.connection):
            self.close_connection = True  # a newcomer took this stranger's slot as its head arrived
            return False
        self.reader.deadline = None  # a request arrived
        self.reader.idle = REQUEST_TIMEOUT
        return True

    def handle_expect_100(self) -> bool:
        # "100 Continue" only once the app starts reading the body (RequestBody): a request
        # refused unread (busy, too large, unauthorized) never asks the client for its body.
        self._expecting = True
        return True

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None, error: ErrorCode | None = None
    ) -> None:
        """Answer ``code`` as JSON ``{"error": error, "message": ...}`` and close the connection.

        The stdlib's own send_error answers HTML.
        """
        if code >= 500 and code != 500:
            code = 400  # 501 (method), 505 (HTTP version): the client's request is at fault
        if not str(self.request_version).startswith("HTTP/1."):
            self.request_version = "HTTP/1.1"  # an answer with a status line, even to HTTP/0.9 or garbage
        reason = self.responses.get(code, ("Error", ""))[0]
        advice = _ADVICE.get(code, _ADVICE[400])
        if code == 431:
            text = f"request headers too large; {advice}"
        elif explain is None:
            text = f"{message or reason}; {advice}"
        elif message is None:
            text = explain
        else:
            text = f"{message} ({explain}); {advice}"
        body = json.dumps({"error": error or _ERRORS.get(code, ErrorCode.BAD_REQUEST), "message": text}).encode("utf-8")
        self.log_error("code %d, message %s", code, text)
        self.close_connection = True
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._linger(None)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _run(self) -> None:
        length = self._content_length()
        if length is False:
            return  # answered
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or (hosts and not _valid_host(hosts[0].strip(" \t"))):
            shown = ", ".join(repr(h[:80]) for h in hosts)
            self.send_error(
                400,
                error=ErrorCode.BAD_HOST,
                explain=f"Host header {shown} is not one valid host[:port]; send e.g. 'Host: 127.0.0.1:8000'",
            )
            return
        body = RequestBody(self.rfile, length or 0, self._body_starts)
        response = Response(self, body)
        try:
            environ = self._environ(body, length)
        except _BadTarget as exc:
            self.send_error(400, explain=str(exc), error=ErrorCode.BAD_TARGET)
            return
        try:
            result = self.server.app(environ, response.start)
            try:
                for data in result:
                    response.write(data)
                response.write(b"")  # headers of an empty body
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except TimeoutError:
            self.close_connection = True
            if body.remaining and not response.headers_sent:  # the body came too slowly: say so, and close
                self.send_error(
                    408,
                    explain=(
                        f"the request body arrived slower than {MIN_BODY_RATE // 1024} KiB/s on average after "
                        f"{BODY_GRACE:g} s ({body.remaining} of {length} bytes missing); send it at that rate or faster"
                    ),
                )
            return
        except ConnectionError:
            self.close_connection = True
            return
        except Exception:
            logger.exception("error answering %s %s", self.command, self.path)
            self.close_connection = True
            if not response.headers_sent:
                self.send_error(500, explain="the device failed answering this request; its log has the details")
            return
        if body.remaining or not response.keeps_connection:
            self.close_connection = True  # an unread body would be taken for the next request
            if body.remaining and not self._expecting:  # (a client waiting for "100 Continue" sends nothing)
                self._linger(body.remaining)

    def _body_starts(self) -> None:
        """The app reads the body: send the "100 Continue" a client may wait for, and hold the body to its pace."""
        if self._expecting:
            self._expecting = False
            self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode("latin-1"))
        self.reader.pace(BODY_GRACE, MIN_BODY_RATE)

    def _content_length(self) -> int | None | bool:
        """The body's length (``None``: no Content-Length), or ``False`` once an error was answered.

        One Content-Length of ASCII digits frames a body, nothing else: a body
        framed two ways is how requests are smuggled past proxies.
        """
        if self.headers.get_all("Transfer-Encoding"):
            self.send_error(
                411,
                explain=(
                    "send the body with a Content-Length header, without Transfer-Encoding "
                    "(chunked bodies are not accepted)"
                ),
            )
            return False
        values = self.headers.get_all("Content-Length") or []
        if len(values) > 1:
            self.send_error(
                400,
                explain=f"{len(values)} Content-Length headers; send exactly one",
                error=ErrorCode.BAD_CONTENT_LENGTH,
            )
            return False
        if not values:
            return None
        value = values[0].strip(" \t")
        if not (value.isascii() and value.isdigit()):
            self.send_error(
                400,
                explain=(
                    f"Content-Length {value[:40]!r} is not a number of bytes; send one decimal integer, "
                    "e.g. Content-Length: 1024"
                ),
                error=ErrorCode.BAD_CONTENT_LENGTH,
            )
            return False
        if len(value) > 19:
            self.send_error(
                413, explain=f"Content-Length of {len(value)} digits is beyond any body this device accepts"
            )
            return False
        return int(value)

    def _linger(self, unread: int | None) -> None:
        """Before closing: end our side, then read and drop what the client still sends.

        Closing a socket with unread bytes makes the kernel answer with a reset,
        which can destroy our answer (e.g. ``409 busy``) before the client reads
        it. Reads ``unread`` bytes (``None``: until the client closes), for at most
        ``LINGER_SECONDS``; memory stays at one small buffer.
        """
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + LINGER_SECONDS
        scratch = memoryview(bytearray(1 << 16))
        try:
            # The connection's own input, also while the headers' budget stands in for it (a 431).
            self.reader.unpace()
            self.reader.deadline = deadline
            while unread is None or unread > 0:
                n = self._input.readinto(scratch if unread is None else scratch[: min(unread, len(scratch))])
                if not n:
                    break
                if unread is not None:
                    unread -= n
        except (OSError, ValueError):
            pass  # the client went away or stayed silent: close anyway

    def _environ(self, body: RequestBody, length: int | None) -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        if not path.startswith("/"):
            if _ABSOLUTE.match(path):  # absolute-form target: http://host:port/path
                authority_and_path = path.split("://", 1)[1]
                slash = authority_and_path.find("/")
                authority, path = (
                    (authority_and_path[:slash], authority_and_path[slash:])
                    if slash >= 0
                    else (authority_and_path, "/")
                )
                if not _valid_host(authority):
                    raise _BadTarget(
                        f"request target {self.path[:80]!r} has no valid host[:port]; send e.g. 'GET /info HTTP/1.1'"
                    )
            elif path != "*":
                raise _BadTarget(
                    f"request target {self.path[:80]!r} is neither a path nor an absolute URL; send e.g. 'GET /info "
                    "HTTP/1.1'"
                )
        host, port = self.server.server_name, self.server.server_port
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            # The target was decoded as latin-1, so its bytes come back exactly (PEP 3333).
            "PATH_INFO": urllib.parse.unquote_to_bytes(path.encode("latin-1")).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.server.ssl_context is not None else "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            SOCKET_KEY: self.connection,
            TRUST_KEY: functools.partial(self.server.slots.trust, self.connection),
        }
        if length is not None:
            environ["CONTENT_LENGTH"] = str(length)
        for name, value in self.headers.items():
            # Names with "_" would collide with their "-" spelling in the environ
            # (X-Fedsync-Specs and X_Fedsync_Specs): dropped, as gunicorn and nginx do.
            if not _HEADER_NAME.fullmatch(name):
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


def _valid_host(value: str) -> bool:
    """``host[:port]`` as a Host header or an absolute URL carries it (RFC 9110 7.2).

    A name's labels are 1 to 63 characters (RFC 1123; ``_`` allowed, as
    container names use it); an IPv6 address comes in brackets.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    name = match.group("name")
    if name is not None:
        labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
        if len(name) > 253 or not all(0 < len(label) <= 63 for label in labels):
            return False
    return True


class _BadTarget(ValueError):
    """A request target that is neither a path nor an absolute URL."""
