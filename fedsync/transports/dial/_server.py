"""The listener's HTTP side: an aiohttp server on its own event loop, the routes devices dial in to.

``/dial/1/{name}/register``, ``/next``, ``/jobs/{job}/body``, ``/jobs/{job}/answer`` (docs/protocol.md, "Devices
that dial out"). Every request is checked in one order: the name is on the allow-list (403 ``not_allowed``),
the bearer token is the name's (401 ``unauthorized``, compared in constant time), with mutual TLS the
certificate names the device (403 ``identity_mismatch``), then, after registration, the session is the
device's current one (409 ``stale_session``). A job is found only under its own device and session (404).

Bounds, for a server facing the internet: a request head must be complete within :data:`HEAD_TIMEOUT` of the
connection opening or of the previous answer (aiohttp's keep-alive timer, which starts at ``connection_made``
and is not reset by bytes arriving, so a head dripped a byte at a time is cut too); a body that stalls
:data:`STALL` seconds is cut; at most :data:`MAX_HEADERS` header lines of :data:`MAX_FIELD` bytes each; a
registration body at most :data:`MAX_REGISTER` bytes; an answer's bytes pass through the job's pipe (4 MiB) and
the device's upload waits for the coordinator to read; at most ``max_connections`` connections, one more is
answered 503 ``too_many_connections`` and closed.

Internal: its names may change without notice.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import socket
from typing import Any

from aiohttp import web

from ..._util.json import loads_strict, shown
from ...wire.http import ErrorCode
from ...wire.transfer import content_length
from ._jobs import Hub, Job, Pipe, Session, Superseded, megabytes
from .transport import NAME

logger = logging.getLogger("fedsync.dial")

HEAD_TIMEOUT = 10.0
"""Seconds within which a request head must be complete (from the connection's start or its previous answer)."""

STALL = 30.0
"""Seconds a request or answer body may pause before the connection is cut."""

MAX_REGISTER = 64 * 1024
"""The largest registration body, in bytes."""

MAX_POLL = 60.0
"""The longest ``next`` long-poll, in seconds (``wait`` above it is capped)."""

DEFAULT_POLL = 30.0
"""``next``'s wait when the device gives none, in seconds (and the ``wait`` a registration answers)."""

MAX_FIELD = 8190
"""The longest request line or header line, in bytes (aiohttp answers 400 past it)."""

MAX_HEADERS = 100
"""The most header lines of one request (aiohttp answers 400 past it)."""

READ_BUFFER = 256 * 1024
"""aiohttp's read buffer per connection, in bytes (it pauses reading at twice this): 4x its default, which
made a 10M x 8 dial-out round 10-20 % slower (more pauses and wake-ups per answer). A connection buffers at
most ``2 * READ_BUFFER`` of a body at once, so ``max_connections`` of them at most 5 GiB at the default cap."""

MAX_CONNECTIONS = 10_000
"""The default most connections open at once."""

SHUTDOWN = 1.0
"""Seconds a closing listener lets the requests still running finish (long-polls end at once) before cutting them."""

REFUSE_LINGER = 0.5
"""Seconds a refused connection (over the cap) is kept open for its answer to leave before it is closed."""

MAX_BASES = 64
MAX_SPECS = 4096
_DIGITS = re.compile(r"^\d{1,19}$")
_RANGE = re.compile(r"^bytes=(\d{1,19})-$")
_FIELD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *$")
CLOSING_MESSAGE = "the listener is closing (its coordinator stops or restarts); retry in a moment"
SESSION_HEADER = "X-Fedsync-Session"
"""The header naming a device's session on every request after its registration."""


def error(status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error answer ``{"error": code, "message": message}``."""
    body = json.dumps({"error": code, "message": message})
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


def closing(response: web.Response) -> web.Response:
    """``response``, after which the connection closes (its request's body was not read whole)."""
    response.force_close()
    return response


def _canned_503() -> bytes:
    body = json.dumps({
        "error": ErrorCode.TOO_MANY_CONNECTIONS,
        "message": "the listener holds its most connections already; retry in a second",
    }).encode()  # fmt: skip
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    """A connection over the cap: answered 503 and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_canned_503())
        # Closed a moment later, its request read and dropped: closing with it unread would reset the
        # connection, and the client would see a reset instead of the answer.
        asyncio.get_running_loop().call_later(REFUSE_LINGER, transport.close)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        self.transport.close()
        return False


def identity_matches(peercert: Any, name: str) -> bool:
    """Whether a verified peer certificate (``getpeercert()``'s dict) names ``name`` (subject CN or a DNS SAN)."""
    if not isinstance(peercert, dict):
        return False
    names = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    for rdn in peercert.get("subject", ()):
        names.extend(value for key, value in rdn if key == "commonName")
    return any(hmac.compare_digest(str(n).encode(), name.encode()) for n in names)


def checked_registration(text: bytes) -> dict[str, Any]:
    """A registration body, checked: ``{"protocol": 1, "fedsync": str, "bases": [...], "specs": {...}}``.

    Raises:
        ValueError: anything else; the message names the key.
    """
    body = loads_strict(
        text,
        duplicate=lambda key: ValueError(f"the key {shown(key)} twice; keys must be unique"),
        constant=lambda name: ValueError(f"{name} is not JSON"),
    )
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    if body.get("protocol") != 1 or isinstance(body.get("protocol"), bool):
        raise ValueError(f"protocol {shown(body.get('protocol'))} is not spoken here (1 is); upgrade fedsync")
    version = body.get("fedsync")
    if not isinstance(version, str) or not 0 < len(version) <= 64:
        raise ValueError("'fedsync' must be the device's fedsync version, a string of 1-64 characters")
    bases, specs = body.get("bases"), body.get("specs")
    if not isinstance(bases, list) or not 0 < len(bases) <= MAX_BASES or len(set(map(str, bases))) != len(bases):
        raise ValueError(f"'bases' must be a list of 1-{MAX_BASES} distinct names ([\"\"] for one FedData)")
    for base in bases:
        if not isinstance(base, str) or (base and not NAME.match(base)):
            raise ValueError(f'base {shown(base)} is not "" or a name of [A-Za-z0-9._-]')
    if not isinstance(specs, dict) or set(specs) != set(bases):
        raise ValueError("'specs' must be an object with one specs string per base")
    for base, value in specs.items():
        if not isinstance(value, str) or not 0 < len(value) <= MAX_SPECS or not value.isprintable():
            raise ValueError(f"specs of base {shown(base)} must be a printable string of 1-{MAX_SPECS} characters")
    return body


def checked_answer_headers(text: str) -> dict[str, str]:
    """``X-Fedsync-Headers``: a JSON object of header names to string values, checked.

    Raises:
        ValueError: not such an object, or a name or value that is not a valid header.
    """
    headers = loads_strict(
        text,
        duplicate=lambda key: ValueError(f"the header {shown(key)} twice"),
        constant=lambda name: ValueError(f"{name} is not JSON"),
    )
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ValueError(f"expected a JSON object of at most {MAX_HEADERS} headers")
    for name, value in headers.items():
        if not _FIELD.match(name):
            raise ValueError(f"{shown(name)} is not a header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"the value of {shown(name)} must be a string without CR, LF or NUL")
    return headers


class Routes:
    """The listener's routes over ``hub``.

    Args:
        hub: devices, sessions and jobs.
        tokens: the allow-list, ``{name: token}``.
        identity: mutual TLS is on: a certificate's identity must equal the name.
    """

    def __init__(self, hub: Hub, tokens: dict[str, str], identity: bool) -> None:
        self.hub, self.tokens, self.identity = hub, tokens, identity

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.raw_path.split("?", 1)[0].split("/")
        if len(parts) < 5 or parts[:3] != ["", "dial", "1"]:
            return error(404, ErrorCode.NOT_FOUND, f"no route {shown(request.raw_path, 100)}; see docs/protocol.md")
        name, rest = parts[3], parts[4:]
        routes: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
            ("register",): ("register", ("POST",)),
            ("next",): ("next", ("GET",)),
            ("job", "jobs", "body"): ("body", ("GET",)),
            ("job", "jobs", "answer"): ("answer", ("POST", "HEAD")),
        }
        key = ("job", rest[0], rest[2]) if len(rest) == 3 else tuple(rest)
        if key not in routes:
            return error(404, ErrorCode.NOT_FOUND, f"no route {shown(request.raw_path, 100)}; see docs/protocol.md")
        endpoint, allowed = routes[key]
        if request.method not in allowed:
            return error(
                405, ErrorCode.METHOD_NOT_ALLOWED, f"use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)}
            )
        refusal = self.authorize(request, name)
        if refusal is not None:
            return refusal
        if self.hub.closed:
            return closing(error(503, ErrorCode.LISTENER_CLOSING, CLOSING_MESSAGE, {"Retry-After": "1"}))
        if endpoint == "register":
            return await self.register(request, name)
        session = self.hub.session(name, request.headers.get(SESSION_HEADER))
        if session is None:
            return error(
                409, ErrorCode.STALE_SESSION, f"no current session {SESSION_HEADER} for {name!r}; register again"
            )
        if endpoint == "next":
            return await self.next(request, session)
        job = self.hub.job(name, session, rest[1])
        if job is None:
            return error(404, ErrorCode.UNKNOWN_JOB, "no such job for this device (over, abandoned, or never existed)")
        return await (self.body(request, job) if endpoint == "body" else self.answer(request, job))

    def authorize(self, request: web.Request, name: str) -> web.Response | None:
        """``None`` when ``name`` is allowed, the token its own, (mTLS) the certificate names it; else the refusal."""
        expected = self.tokens.get(name) if NAME.match(name) else None
        if expected is None:
            logger.warning("refused %s from %s: not on the allow-list", shown(name), request.remote)
            return error(
                403, ErrorCode.NOT_ALLOWED, f"device {shown(name, 64)} is not on this coordinator's allow-list"
            )
        header = request.headers.get("Authorization")
        match = _BEARER.match(header) if header else None
        if match is None:
            return error(401, ErrorCode.UNAUTHORIZED, "no token sent: pass --token")
        sent = match.group(1).encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(sent, expected.encode()):
            logger.warning("refused %s from %s: wrong token", name, request.remote)
            return error(401, ErrorCode.UNAUTHORIZED, f"token refused for {name!r}")
        if self.identity:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            if not identity_matches(peercert, name):
                logger.warning("refused %s from %s: its certificate names another device", name, request.remote)
                return error(
                    403, ErrorCode.IDENTITY_MISMATCH,
                    f"this certificate does not name {name!r} (subject CN or a DNS name); use the device's own",
                )  # fmt: skip
        return None

    async def register(self, request: web.Request, name: str) -> web.Response:
        length = request.content_length
        if length is None:
            return error(411, ErrorCode.LENGTH_REQUIRED, "send the registration with a Content-Length")
        if length > MAX_REGISTER:
            return error(413, ErrorCode.TOO_LARGE, f"a registration is at most {MAX_REGISTER} bytes, not {length}")
        try:
            text = await asyncio.wait_for(request.content.readexactly(length), STALL)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, web.HTTPException):
            return closing(error(400, ErrorCode.TRUNCATED, f"the registration did not arrive whole within {STALL:g} s"))
        try:
            body = checked_registration(text)
        except (ValueError, RecursionError) as exc:
            return error(400, ErrorCode.BAD_REGISTRATION, f"registration refused: {exc}")
        session = self.hub.register(name)
        logger.info("%s registered from %s (fedsync %s, specs %s)", name, request.remote, shown(body["fedsync"]),
                    shown(body["specs"], 300))  # fmt: skip
        return web.json_response({"session": session.id, "wait": DEFAULT_POLL})

    async def next(self, request: web.Request, session: Session) -> web.Response:
        raw = request.query.get("wait")
        try:
            wait = DEFAULT_POLL if raw is None else float(raw)
            if not math.isfinite(wait) or wait < 0 or len(raw or "") > 32:
                raise ValueError
        except ValueError:
            return error(400, ErrorCode.BAD_WAIT, f"wait={shown(raw, 40)} is not a number of seconds; e.g. wait=30")
        loop = asyncio.get_running_loop()
        end = loop.time() + min(wait, MAX_POLL)
        while True:
            session.wake.clear()
            if self.hub.closed:
                return closing(error(503, ErrorCode.LISTENER_CLOSING, CLOSING_MESSAGE, {"Retry-After": "1"}))
            if session.ended:
                return error(409, ErrorCode.STALE_SESSION, "this session was replaced; register again")
            job = self.hub.take(session)
            if job is not None:
                return web.json_response(job.describe())
            left = end - loop.time()
            if left <= 0:
                return web.Response(status=204)
            try:
                await asyncio.wait_for(session.wake.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def body(self, request: web.Request, job: Job) -> web.StreamResponse:
        start, status = 0, 200
        raw = request.headers.get("Range")
        if raw is not None:
            match = _RANGE.match(raw)
            if match is None or int(match.group(1)) >= job.length:
                message = f"Range {shown(raw, 60)} is not bytes=N- with N below {job.length}"
                return error(416, ErrorCode.BAD_RANGE, message, {"Content-Range": f"bytes */{job.length}"})
            start, status = int(match.group(1)), 206
        if start or job.served:
            with self.hub.lock:
                self.hub.stats[job.name].resumed_downloads += 1
            logger.info("%s resumed the download of job %s at %s of %s", job.name, job.id, megabytes(start),
                        megabytes(job.length))  # fmt: skip
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(job.length - start)}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{job.length - 1}/{job.length}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        at = start
        for piece in job.slices(start):
            if job.dropped or job.failure is not None:
                break  # nobody waits for this job's answer any more
            try:
                await asyncio.wait_for(response.write(piece), STALL)
            except (asyncio.TimeoutError, ConnectionError):
                break
            self.hub.served(job, at, len(piece))
            at += len(piece)
        if at < job.length:
            if request.transport is not None:
                request.transport.close()  # the device sees a short body and resumes with Range
            return response
        await response.write_eof()
        return response

    async def answer(self, request: web.Request, job: Job) -> web.Response:
        if request.method == "HEAD":
            if job.pipe is None:
                return error(404, ErrorCode.UNKNOWN_JOB, "no answer started for this job")
            return web.Response(status=204, headers={"Upload-Offset": str(job.pipe.received)})
        try:
            status, headers, total, offset = self.answer_head(request)
        except ValueError as exc:
            return error(400, ErrorCode.BAD_ANSWER, f"answer refused: {exc}")
        length = request.content_length
        if length is None:
            return error(411, ErrorCode.LENGTH_REQUIRED, "send the answer with a Content-Length")
        if offset + length > total:
            return error(
                400, ErrorCode.BAD_ANSWER, f"Upload-Offset {offset} + {length} bytes is over Upload-Length {total}"
            )
        with job.cond:
            if job.pipe is None:
                job.status, job.answer_headers = status, headers
                job.pipe = Pipe(job.url, total, asyncio.get_running_loop(), job.cond)
                job.cond.notify_all()  # the coordinator has its answer's head
                resumed = False
            elif (job.status, job.answer_headers, job.pipe.length) != (status, headers, total):
                return error(
                    409, ErrorCode.ANSWER_CHANGED, "status, headers or Upload-Length differ from the first try"
                )
            else:
                resumed = True
            pipe = job.pipe
            if offset != pipe.received:
                message = f"the listener holds {pipe.received} bytes: send from there"
                return error(409, ErrorCode.OFFSET_MISMATCH, message, {"Upload-Offset": str(pipe.received)})
            pipe.generation += 1
            generation = pipe.generation
        if resumed:
            with self.hub.lock:
                self.hub.stats[job.name].resumed_uploads += 1
            logger.info("%s resumed the upload of job %s at %s of %s", job.name, job.id, megabytes(offset),
                        megabytes(total))  # fmt: skip
        refusal = await self.upload(request, job, pipe, length, generation)
        if refusal is not None:
            return refusal
        if pipe.complete():
            self.hub.release(job)
        return web.Response(status=204, headers={"Upload-Offset": str(pipe.received)})

    async def upload(
        self, request: web.Request, job: Job, pipe: Pipe, length: int, generation: int
    ) -> web.Response | None:
        """This request's ``length`` answer bytes into ``pipe``; ``None`` when all arrived, else the refusal."""
        left = length
        while left > 0:
            try:
                # What is already buffered, without a timer (wait_for makes a task per call); else wait for more.
                chunk = request.content.read_nowait() if not request.content.at_eof() else b""
                if not chunk and not request.content.at_eof():
                    chunk = await asyncio.wait_for(request.content.readany(), STALL)
            except asyncio.TimeoutError:
                message = f"the answer stalled {STALL:g} s; resume from HEAD's Upload-Offset"
                return closing(error(400, ErrorCode.TRUNCATED, message))
            except (ConnectionError, web.HTTPException, OSError, ValueError):
                return error(400, ErrorCode.TRUNCATED, "the connection broke; resume from HEAD's Upload-Offset")
            if not chunk:
                return error(400, ErrorCode.TRUNCATED, "the answer ended early; resume from HEAD's Upload-Offset")
            try:
                await pipe.put(chunk, generation)
            except Superseded:
                if pipe.closed:
                    return closing(error(404, ErrorCode.UNKNOWN_JOB, "the coordinator no longer waits for this answer"))
                message = "a newer upload of this answer took over"
                return closing(error(409, ErrorCode.OFFSET_MISMATCH, message, {"Upload-Offset": str(pipe.received)}))
            self.hub.answered(job, len(chunk))
            left -= len(chunk)
        return None

    @staticmethod
    def answer_head(request: web.Request) -> tuple[int, dict[str, str], int, int]:
        """``(status, headers, Upload-Length, Upload-Offset)`` of an answer POST.

        Raises:
            ValueError: a header missing or malformed (the message names it).
        """
        status = request.headers.get("X-Fedsync-Status", "")
        if not (len(status) == 3 and status.isascii() and status.isdigit() and 100 <= int(status) <= 599):
            raise ValueError(f"X-Fedsync-Status {shown(status, 20)} is not a 3-digit HTTP status")
        try:
            headers = checked_answer_headers(request.headers.get("X-Fedsync-Headers", ""))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"X-Fedsync-Headers: {exc}") from None
        numbers = []
        for field in ("Upload-Length", "Upload-Offset"):
            value = content_length(request.headers.get(field))
            if value is None:
                raise ValueError(f"{field} {shown(request.headers.get(field), 30)} is not a decimal number of bytes")
            numbers.append(value)
        return int(status), headers, numbers[0], numbers[1]


class Server:
    """The aiohttp server of one listener (built and run on the listener's event loop)."""

    def __init__(self, routes: Routes, ssl_context: Any, max_connections: int) -> None:
        self.routes, self.ssl_context, self.max_connections = routes, ssl_context, max_connections
        self.runner: web.AppRunner | None = None
        self.server: asyncio.base_events.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (listening already)."""
        app = web.Application(client_max_size=MAX_REGISTER)
        app.router.add_route("*", "/{tail:.*}", self.routes.dispatch)
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True,
            keepalive_timeout=HEAD_TIMEOUT, max_line_size=MAX_FIELD, max_field_size=MAX_FIELD, read_bufsize=READ_BUFFER,
            max_headers=MAX_HEADERS, lingering_time=2.0, shutdown_timeout=SHUTDOWN,
        )  # fmt: skip
        await self.runner.setup()
        handlers = self.runner.server
        assert handlers is not None
        cap = self.max_connections

        def factory() -> asyncio.BaseProtocol:
            return handlers() if len(handlers.connections) < cap else _Refuse()

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            factory, sock=sock, ssl=self.ssl_context, backlog=1024,
            ssl_handshake_timeout=HEAD_TIMEOUT if self.ssl_context is not None else None,
        )  # fmt: skip

    def connections(self) -> int:
        """Connections open now."""
        server = self.runner.server if self.runner is not None else None
        return len(server.connections) if server is not None else 0

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            await self.runner.cleanup()
