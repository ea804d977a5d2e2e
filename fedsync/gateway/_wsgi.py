"""One request's WSGI side (PEP 3333): the body the app reads, and its ``start_response``.

:mod:`fedsync.gateway.server` parses the request and hands these to the app: ``wsgi.input`` is a
:class:`RequestBody`, which never reads past the request's Content-Length (so the next request on
a kept-alive connection stays intact), and :class:`Response` sends the status line and headers on
the first ``write`` and decides whether the connection can stay open.

Internal: its names may change without notice.
"""

from __future__ import annotations

import http.server
from collections.abc import Callable
from typing import Any

__all__ = ["RequestBody", "Response"]


class RequestBody:
    """``wsgi.input``: the request body, never read past its Content-Length.

    ``on_first_read``: sends the "100 Continue" a client may wait for before its body.
    """

    def __init__(self, rfile: Any, length: int, on_first_read: Callable[[], None] | None = None) -> None:
        self._rfile = rfile
        self.remaining = length
        self._on_first_read = on_first_read

    def _starting(self) -> None:
        if self._on_first_read is not None and self.remaining:
            on_first_read, self._on_first_read = self._on_first_read, None
            on_first_read()

    def read(self, size: int = -1) -> bytes:
        self._starting()
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._rfile.read(size) if size else b""
        self.remaining -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        self._starting()
        view = memoryview(buffer).cast("B")[: self.remaining]
        n = self._rfile.readinto(view) if len(view) else 0
        self.remaining -= n
        return n

    def readline(self, size: int = -1) -> bytes:
        self._starting()
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._rfile.readline(size) if size else b""
        self.remaining -= len(data)
        return data

    def __iter__(self) -> Any:
        while line := self.readline():
            yield line


class Response:
    """The WSGI ``start_response`` and ``write`` of one request."""

    def __init__(self, handler: http.server.BaseHTTPRequestHandler, body: RequestBody) -> None:
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
            self._send_headers(self.status)
        if data and self.handler.command != "HEAD":
            self.handler.wfile.write(data)

    def _send_headers(self, status: str) -> None:
        handler = self.handler
        code, _, reason = status.partition(" ")
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
        elif handler.request_version == "HTTP/1.0" and not handler.close_connection and "connection" not in names:
            # HTTP/1.0 closes after each answer unless the server says it keeps the connection
            # (the client asked with "Connection: keep-alive"; the stdlib then kept it open).
            handler.send_header("Connection", "keep-alive")
        handler.end_headers()
        self.headers_sent = True
