"""A threaded HTTP/1.1 server for a device's WSGI app that keeps connections open.

werkzeug's development server closes every connection (it sends
``Connection: close`` and drains the socket after each response), so each
request of a round cost the coordinator a new TCP connection and the device a
new thread. This server runs the same WSGI app on the standard library's
:mod:`http.server`, which parses requests and keeps HTTP/1.1 connections, and
adds what a WSGI gateway must do (PEP 3333). A connection stays open while the
client wants it and every request body was read in full; otherwise it closes.

Between requests an idle connection is closed after ``IDLE_TIMEOUT`` seconds;
while a request is handled, after ``REQUEST_TIMEOUT`` seconds without progress
(long: a reply may wait, unread, until the coordinator's merge takes it).
"""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import ssl
import sys
import threading
import urllib.parse
from typing import Any, Callable, Iterable

__all__ = ["KeepAliveServer", "SOCKET_KEY", "IDLE_TIMEOUT", "REQUEST_TIMEOUT"]

logger = logging.getLogger("fedsync.server")

SOCKET_KEY = "fedsync.socket"
"""WSGI environ key of the connection's socket (for writing large bodies without a copy)."""

IDLE_TIMEOUT = 120.0
"""Seconds an open connection may wait for its next request."""

REQUEST_TIMEOUT = 3600.0
"""Seconds a request's body or answer may make no progress before the connection is dropped."""

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


class KeepAliveServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves ``app`` on an already listening socket, one daemon thread per connection.

    Args:
        sock: a bound, listening TCP socket; the server owns it from now on.
        app: the WSGI application.
        ssl_context: an :class:`ssl.SSLContext`, or a ``(certfile, keyfile)`` pair, for HTTPS.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, app: WSGIApp, ssl_context: Any = None) -> None:
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
        self.socket = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if ssl_context is not None else sock
        self.server_name, self.server_port = str(address[0]), int(address[1])
        self.app = app
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening and end the open connections: a closed device answers nobody."""
        super().server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Runs the WSGI app for every request of a connection (PEP 3333)."""

    protocol_version = "HTTP/1.1"
    server: KeepAliveServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(IDLE_TIMEOUT)
            self.request.do_handshake()  # a failure ends this connection only (handle_error)
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # A response's headers and body are separate writes: without this the
            # body would wait for the client's delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        self.connection.settimeout(IDLE_TIMEOUT)  # waiting for the next request
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.connection.settimeout(REQUEST_TIMEOUT)  # a request arrived
        return True

    def do_GET(self) -> None:
        self._run()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _run(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "Length Required", "send the body with a Content-Length")
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self.send_error(400, "Bad Request", "Content-Length must be a non-negative integer")
            self.close_connection = True
            return
        body = _Body(self.rfile, length)
        response = _Response(self, body)
        try:
            result = self.server.app(self._environ(body), response.start)
            try:
                for data in result:
                    response.write(data)
                response.write(b"")  # headers of an empty body
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except Exception:
            logger.exception("error answering %s %s", self.command, self.path)
            self.close_connection = True
            if not response.headers_sent:
                self.send_error(500, "Internal Server Error")
            return
        if body.remaining or not response.keeps_connection:
            self.close_connection = True  # an unread body would be taken for the next request

    def _environ(self, body: "_Body") -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        if "://" in path:  # absolute-form request target
            path = urllib.parse.urlsplit(path).path or "/"
        host, port = self.server.server_name, self.server.server_port
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": self.headers.get("Content-Length", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.server.ssl_context is not None else "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            SOCKET_KEY: self.connection,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


class _Body:
    """``wsgi.input``: the request body, never read past its Content-Length."""

    def __init__(self, rfile: Any, length: int) -> None:
        self._rfile = rfile
        self.remaining = length

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._rfile.read(size) if size else b""
        self.remaining -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self.remaining]
        n = self._rfile.readinto(view) if len(view) else 0
        self.remaining -= n
        return n

    def readline(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._rfile.readline(size) if size else b""
        self.remaining -= len(data)
        return data

    def __iter__(self) -> Any:
        while line := self.readline():
            yield line


class _Response:
    """The WSGI ``start_response`` and ``write`` of one request."""

    def __init__(self, handler: _Handler, body: _Body) -> None:
        self.handler = handler
        self.body = body
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.keeps_connection = True

    def start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("the WSGI app wrote before start_response")
        if not self.headers_sent:
            self._send_headers()
        if data and self.handler.command != "HEAD":
            self.handler.wfile.write(data)

    def _send_headers(self) -> None:
        handler = self.handler
        code, _, reason = self.status.partition(" ")
        handler.send_response(int(code), reason)
        names = set()
        for name, value in self.headers:
            handler.send_header(name, value)
            names.add(name.lower())
        no_body = handler.command == "HEAD" or int(code) in (204, 304) or 100 <= int(code) < 200
        # Without a length the body ends when the connection does; a request body the
        # app left unread would be taken for the next request.
        if ("content-length" not in names and not no_body) or self.body.remaining:
            handler.send_header("Connection", "close")
            self.keeps_connection = False
        handler.end_headers()
        self.headers_sent = True
