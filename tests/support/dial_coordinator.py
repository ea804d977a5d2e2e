"""A fault-injecting listener for tests of dialing devices, speaking the dial-out wire of docs/dial-out.md.

Independent of the device's code on purpose (its own literals, not fedsync.device._dial_wire), so a
test fails when the dialer drifts from the spec. werkzeug's threaded server, in a thread; every wait
bounded. Faults, each armed by the test and used once: cut a job's body download at a fraction, cut
an answer's upload at a fraction, answer the next ``next`` with ``409 stale_session``, refuse with
401/403, send a malformed job; :meth:`restart` stops the server (dropping every connection) and
starts a fresh one on the same port, which forgets every session.
"""

from __future__ import annotations

import hmac
import json
import queue
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

__all__ = ["DialCoordinator", "TestJob"]

_ROUTE = re.compile(r"/dial/1/([^/]+)/(register|next|jobs/([0-9a-f]{32})/(body|answer))")


@dataclass
class TestJob:
    """One request sent to a dialed-in device, and what came back."""

    id: str
    spec: dict[str, Any] | bytes  # what ``next`` answers: a JSON object, or raw bytes (malformed on purpose)
    body: bytes = b""
    status: int | None = None
    headers: dict[str, str] | None = None
    upload_length: int | None = None
    answer: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)
    body_bytes_sent: int = 0  # every byte of the body served, re-sent ones included
    answer_bytes_received: int = 0  # every answer byte received, including those of broken tries
    ranges: list[str] = field(default_factory=list)  # the Range headers of the body's GETs
    offsets: list[int] = field(default_factory=list)  # the Upload-Offset of each answer POST
    heads: int = 0  # HEAD .../answer requests
    cut_body_at: float | None = None
    cut_answer_at: float | None = None
    lie: dict[str, str] = field(default_factory=dict)  # headers that override the body answer's true ones

    def json(self) -> Any:
        return json.loads(bytes(self.answer))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": code, "message": message}), status, headers, mimetype="application/json")


class _Handler(WSGIRequestHandler):
    """Tracks its connection, so a stop can drop every one, as a killed process would."""

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.connections.discard(self.connection)  # type: ignore[attr-defined]
        try:
            super().finish()
        except OSError:
            pass

    def log_request(self, *args: Any) -> None:
        pass

    def log_error(self, *args: Any) -> None:
        pass


class DialCoordinator:
    """The coordinator's side of dial-out, for tests: ``devices`` ``{name: token}``; a context manager."""

    def __init__(self, devices: dict[str, str], wait: float = 1.0, port: int = 0) -> None:
        self.devices = dict(devices)
        self.wait = wait
        self.sessions: dict[str, str] = {}
        self.registrations: list[dict[str, Any]] = []
        self.queues: dict[str, queue.Queue[TestJob]] = {name: queue.Queue() for name in devices}
        self.jobs: dict[str, TestJob] = {}
        self.refuse: int | None = None  # 401 or 403 to every request, when set
        self.stale_next = 0  # this many ``next`` answered 409 stale_session
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._start(port)

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, port: int) -> None:
        self._server = make_server("127.0.0.1", port, self._app, threaded=True, request_handler=_Handler)
        self._server.connections = set()
        self.port = self._server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and drop every open connection (as a killed coordinator would)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._server.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, and start again on the same port with no session known."""
        self.stop()
        with self._lock:
            self.sessions.clear()
        time.sleep(down)
        for _attempt in range(50):  # the port may linger for a moment after its close
            try:
                self._start(self.port)
                return
            except OSError:
                time.sleep(0.1)
        raise OSError(f"could not listen on port {self.port} again")

    def __enter__(self) -> DialCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests call -----------------------------------------------------------------------

    def wait_registered(self, name: str, timeout: float = 15.0, count: int = 1) -> None:
        """Block until ``name`` registered ``count`` times in all; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(r["name"] == name for r in self.registrations) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{name} registered {len(self.registrations)} times, expected {count} within {timeout} s")

    def send(
        self,
        name: str,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        spec: dict[str, Any] | bytes | None = None,
        cut_body_at: float | None = None,
        cut_answer_at: float | None = None,
        lie: dict[str, str] | None = None,
    ) -> TestJob:
        """Queue a job for ``name`` (``spec``: the raw JSON ``next`` answers, to send a malformed one)."""
        job_id = uuid.uuid4().hex
        raw = spec if spec is not None else {
            "job": job_id, "method": method, "target": target, "headers": headers or {}, "length": len(body)
        }  # fmt: skip
        if isinstance(spec, dict) and isinstance(spec.get("job"), str):
            job_id = spec["job"]
        job = TestJob(job_id, raw, body, cut_body_at=cut_body_at, cut_answer_at=cut_answer_at, lie=dict(lie or {}))
        with self._lock:
            self.jobs[job_id] = job
        self.queues[name].put(job)
        return job

    def run(self, name: str, method: str, target: str, body: bytes = b"", timeout: float = 30.0, **kw: Any) -> TestJob:
        """:meth:`send`, then wait for the whole answer; AssertionError after ``timeout`` s."""
        job = self.send(name, method, target, body, **kw)
        if not job.done.wait(timeout):
            raise AssertionError(f"no whole answer to {method} {target} within {timeout} s: {job}")
        return job

    # -- the wire --------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append((request.method, request.path))
        return self._answer(request, environ)(environ, start_response)

    def _answer(self, request: Request, environ: dict[str, Any]) -> Response:
        match = _ROUTE.fullmatch(request.path)
        if match is None:
            return _error(404, "not_found", f"no route {request.path}")
        name, route, job_id, part = match.groups()
        if name not in self.devices:
            return _error(403, "not_allowed", f"device {name!r} is not on this coordinator's allow-list")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not token:
            return _error(401, "unauthorized", "no token sent: pass --token")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.devices[name].encode()):
            return _error(401, "unauthorized", f"token refused for {name!r}")
        if self.refuse is not None:
            code = "not_allowed" if self.refuse == 403 else "unauthorized"
            return _error(self.refuse, code, f"refused {name!r} (test)")
        if route == "register":
            return self._register(request, name)
        with self._lock:
            session = self.sessions.get(name)
        if session is None or request.headers.get("X-Fedsync-Session") != session:
            return _error(409, "stale_session", "unknown session: register again")
        if route == "next":
            return self._next(request, name)
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "unknown_job", f"no job {job_id}")
        if part == "body":
            return self._body(request, job, environ)
        return self._upload(request, job, environ)

    def _register(self, request: Request, name: str) -> Response:
        raw = request.get_data()
        if len(raw) > 64 * 1024:
            return _error(413, "too_large", "registration over 64 KiB")
        body = json.loads(raw)
        assert set(body) == {"protocol", "fedsync", "bases", "specs"}, body
        session = uuid.uuid4().hex
        with self._lock:
            self.sessions[name] = session
            self.registrations.append({"name": name, **body})
        return Response(json.dumps({"session": session, "wait": self.wait}), 200, mimetype="application/json")

    def _next(self, request: Request, name: str) -> Response:
        wait = float(request.args.get("wait", "30"))
        assert 0 < wait <= 60, wait
        if self.stale_next:
            self.stale_next -= 1
            return _error(409, "stale_session", "session replaced (test)")
        try:
            job = self.queues[name].get(timeout=wait)
        except queue.Empty:
            return Response(status=204)
        raw = job.spec if isinstance(job.spec, bytes) else json.dumps(job.spec)
        return Response(raw, 200, mimetype="application/json")

    def _body(self, request: Request, job: TestJob, environ: dict[str, Any]) -> Response:
        length = len(job.body)
        given = request.headers.get("Range")
        job.ranges.append(given or "")
        start = 0
        if given is not None:
            found = re.fullmatch(r"bytes=([0-9]+)-", given)
            if found is None or int(found.group(1)) >= length:
                return _error(416, "bad_range", f"bad range {given!r}")
            start = int(found.group(1))
        data = job.body[start:]
        cut = job.cut_body_at
        job.cut_body_at = None

        def pieces() -> Any:
            end = len(data) if cut is None else int(length * cut) - start
            for at in range(0, end, 64 * 1024):
                piece = data[at : min(at + 64 * 1024, end)]
                job.body_bytes_sent += len(piece)
                yield piece
            if cut is not None:
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)  # the connection breaks mid-body
                raise ConnectionAbortedError("cut by the test")

        headers = {"Content-Length": str(len(data))}
        if start:
            headers["Content-Range"] = f"bytes {start}-{length - 1}/{length}"
        headers.update(job.lie)
        return Response(pieces(), 206 if start else 200, headers, mimetype="application/octet-stream")

    def _upload(self, request: Request, job: TestJob, environ: dict[str, Any]) -> Response:
        if request.method == "HEAD":
            job.heads += 1
            if job.upload_length is None:
                return Response(status=404)
            return Response(status=204, headers={"Upload-Offset": str(len(job.answer))})
        status, headers = request.headers["X-Fedsync-Status"], json.loads(request.headers["X-Fedsync-Headers"])
        length, offset = int(request.headers["Upload-Length"]), int(request.headers["Upload-Offset"])
        sent = int(request.headers["Content-Length"])
        assert sent == length - offset, (sent, length, offset)
        assert isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values()), headers
        job.offsets.append(offset)
        if job.upload_length is None:
            job.status, job.headers, job.upload_length = int(status), headers, length
        elif (job.status, job.headers, job.upload_length) != (int(status), headers, length):
            return _error(409, "answer_changed", "status, headers or length differ from the first try")
        if offset != len(job.answer):
            return _error(409, "offset_mismatch", "offset differs", {"Upload-Offset": str(len(job.answer))})
        stream = request.stream
        cut = job.cut_answer_at
        job.cut_answer_at = None
        end = length if cut is None else int(length * cut)
        while len(job.answer) < end:
            piece = stream.read(min(64 * 1024, end - len(job.answer)))
            if not piece:
                return _error(400, "truncated", "the answer ended early")
            job.answer += piece
            job.answer_bytes_received += len(piece)
        if cut is not None:
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)  # the connection breaks mid-upload
            return Response(status=204)  # never reaches the device
        job.done.set()
        return Response(status=204)
