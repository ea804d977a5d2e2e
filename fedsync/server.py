"""The device side: a WSGI app (werkzeug routing) serving one or more FedData over HTTP.

``serve`` runs it on :class:`fedsync.gateway.KeepAliveServer`, which keeps
HTTP/1.1 connections open between a round's requests.

Routes (protocol v1, see ``docs/protocol.md``), under each FedData's base
(``""`` for a single FedData, ``/<name>`` for each entry of a dict):

- ``GET  {base}/info``                 handshake
- ``POST {base}/{rep}/submit``         hand the device a payload for repetition ``rep``
- ``GET  {base}/{rep}/result?wait=S``  long-poll for the device's payload
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ._version import PROTOCOL_VERSION, __version__
from .codec import Payload, read_exactly
from .gateway import SOCKET_KEY, KeepAliveServer
from .protocol import Encoding, FedData
from .status import render_index, render_status

__all__ = ["DeviceApp", "RunningServer", "serve", "SPECS_HEADER", "DEFAULT_MAX_CONTENT_LENGTH"]

logger = logging.getLogger("fedsync.server")

SPECS_HEADER = "X-Fedsync-Specs"
REPETITION_HEADER = "X-Fedsync-Repetition"
DEFAULT_MAX_CONTENT_LENGTH = 2 * 1024**3
MAX_WAIT = 60.0
"""The longest a single result long-poll is held open, in seconds."""


class ApiError(HTTPException):
    """An HTTP error answered as JSON ``{"error": code, "message": text}``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = status
        self.error = error
        self.message = message

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        return _json({"error": self.error, "message": self.message}, self.code)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


def _body(encoding: Encoding, sock: socket.socket | None = None) -> tuple[Any, str, int]:
    """The response body, its mimetype and its length, without copying the payload.

    ``sock``: the connection's socket, which fedsync's server puts in the
    environ (``gateway.SOCKET_KEY``); a :class:`Payload` is then written to it
    directly (see :func:`_frames_to`).
    """
    if isinstance(encoding, str):
        data = encoding.encode("utf-8")
        return data, "text/plain", len(data)
    if isinstance(encoding, (bytes, bytearray, memoryview)):
        return encoding, "application/octet-stream", memoryview(encoding).nbytes
    if isinstance(encoding, Payload):
        # WSGI servers write bytes only; small chunks cost less than joining the whole
        # payload into one fresh model-sized buffer (page faults, measured).
        body = _frames_to(sock, encoding) if sock is not None else _chunks(encoding)
        return body, "application/octet-stream", len(encoding)
    raise TypeError(
        f"serialize() must return str or bytes, got {type(encoding).__name__}; "
        "e.g. return str(self.value) or codec.encode(arrays)"
    )


CHUNK = 1 << 20


def _frames_to(sock: socket.socket, payload: Payload) -> Iterator[bytes]:
    """Write a payload's frames to the connection itself, without copying them.

    WSGI servers write only ``bytes``, so :func:`_chunks` copies each piece
    of a model into one (about 20% of a device's CPU per round, measured with
    perf). fedsync's server (:mod:`fedsync.gateway`) sends the status line and
    headers (Content-Length included) on the first ``write``, even of ``b""``,
    on its unbuffered connection; the frames then follow on the same socket.
    """
    yield b""
    for frame in payload:
        sock.sendall(frame)


def _chunks(payload: Payload) -> Iterator[bytes]:
    for frame in payload:
        view = memoryview(frame).cast("B")
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])


@dataclass
class Job:
    """One repetition a device is working on, or has finished."""

    repetition: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Encoding | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None


class Device:
    """The device-side state of one FedData: its last repetition and current job."""

    def __init__(self, fed: FedData) -> None:
        if not isinstance(fed, FedData):
            raise TypeError(
                f"serve() takes a FedData or a dict of them, got {type(fed).__name__}; "
                "e.g. serve(FedKeras(model, train)) or serve({'model': fed})"
            )
        self.fed = fed
        self.lock = threading.Lock()
        self.last_repetition = 0
        self.rounds_served = 0
        self.job: Job | None = None
        self.working = threading.Lock()  # held by a training job or an evaluation
        self._spare: np.ndarray | None = None  # the last payload's buffer, for the next one
        self._spare_lock = threading.Lock()

    def payload_buffer(self, length: int) -> np.ndarray | None:
        """The last training payload's buffer again, if it fits and nothing holds it any more.

        A fresh model-sized buffer costs tens of milliseconds of page faults every
        round (benchmarks/README.md). Only a buffer no one references is reused:
        a FedData that kept a view of its payload keeps it intact.
        """
        with self._spare_lock:
            spare, self._spare = self._spare, None
        # 2: the local name and getrefcount's own argument.
        if spare is not None and spare.nbytes == length and sys.getrefcount(spare) == 2:
            return spare
        return None

    @property
    def state(self) -> str:
        job = self.job
        if job is None:
            return "idle"
        if not job.done.is_set():
            return "training"
        return "failed" if job.error is not None else "idle"

    def info(self) -> dict[str, Any]:
        next_rep = self.last_repetition + 1
        job = self.job
        return {
            "protocol": PROTOCOL_VERSION,
            "fedsync": __version__,
            "type": type(self.fed).__name__,
            "specs": self.fed.specs(next_rep),
            "repetition": self.last_repetition,
            "state": self.state,
            "rounds_served": self.rounds_served,
            "last_error": job.error if job is not None else None,
            "last_seconds": job.seconds if job is not None else None,
            "samples": _samples(self.fed),
            "summary": self.fed.summary(next_rep),
        }

    def ensure_can_accept(self, repetition: int) -> None:
        """Raise 409 when ``repetition`` is stale or an earlier one is still running."""
        if repetition <= self.last_repetition:
            raise ApiError(
                409,
                "stale_repetition",
                f"repetition {repetition} is not above this device's last repetition "
                f"{self.last_repetition}; submit repetition {self.last_repetition + 1} or later",
            )
        job = self.job
        if job is not None and not job.done.is_set():
            raise ApiError(
                409,
                "busy",
                f"still working on repetition {job.repetition}; "
                "try again when its result has been collected",
            )

    def start(self, encoding: Any, repetition: int) -> Job:
        """Accept a checked payload and work on it in a background thread."""
        with self.lock:
            self.ensure_can_accept(repetition)
            if not self.working.acquire(blocking=False):
                raise ApiError(409, "busy", "evaluating the global model; try again in a moment")
            job = Job(repetition)
            self.job = job
            self.last_repetition = repetition
        threading.Thread(
            target=self._work, args=(job, encoding), name=f"fedsync-job-{repetition}", daemon=True
        ).start()
        return job

    def _work(self, job: Job, encoding: Any) -> None:
        try:
            self.fed.receive(encoding, job.repetition)
            result = self.fed.serialize(job.repetition)
            _body(result)  # fail here, with the device's message, rather than while answering
            job.result = result
            self.rounds_served += 1
        except Exception as exc:  # any failure of user code is reported to the coordinator
            logger.exception("repetition %d failed", job.repetition)
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.seconds = time.monotonic() - job.started
            spare = encoding.obj if isinstance(encoding, memoryview) and isinstance(encoding.obj, np.ndarray) else None
            del encoding
            if spare is not None:
                with self._spare_lock:
                    self._spare = spare
            del spare
            self.working.release()
            job.done.set()

    def evaluate(self, encoding: Any, repetition: int) -> tuple[int, dict[str, float]]:
        """Run the FedData's evaluation now, unless the device is working."""
        if not self.working.acquire(blocking=False):
            raise ApiError(409, "busy", "training or evaluating already; try again when it is done")
        try:
            return self.fed.evaluate(encoding, repetition)
        except NotImplementedError as exc:
            raise ApiError(501, "not_supported", str(exc)) from None
        except Exception as exc:  # user code: report its message, keep serving
            logger.exception("evaluation failed")
            raise ApiError(500, "evaluation_failed", f"{type(exc).__name__}: {exc}") from None
        finally:
            self.working.release()


def _samples(fed: FedData) -> int | None:
    samples = getattr(fed, "samples", None)
    return samples if isinstance(samples, int) and not isinstance(samples, bool) else None


class DeviceApp:
    """The WSGI application of a device, serving one FedData or a dict of named ones."""

    def __init__(
        self,
        data: FedData | Mapping[str, FedData],
        *,
        token: str | None = None,
        max_content_length: int | None = None,
    ) -> None:
        if isinstance(data, Mapping):
            if not data:
                raise ValueError("serve() got an empty dict; give at least one {name: FedData}")
            for name in data:
                if not isinstance(name, str) or not name or "/" in name or name.isdigit():
                    raise ValueError(
                        f"FedData name {name!r} cannot be a URL base; use a non-numeric word "
                        "without '/', e.g. 'model'"
                    )
            self.devices = {f"/{name}": Device(fed) for name, fed in data.items()}
        else:
            self.devices = {"": Device(data)}
        self.token = token
        self.max_content_length = max_content_length or DEFAULT_MAX_CONTENT_LENGTH
        rules = []
        for base in self.devices:
            defaults = {"base": base}
            rules += [
                Rule(f"{base}/", endpoint="status", methods=["GET"], defaults=defaults),
                Rule(f"{base}/info", endpoint="info", methods=["GET"], defaults=defaults),
                Rule(f"{base}/<int:rep>/submit", endpoint="submit", methods=["POST"], defaults=defaults),
                Rule(f"{base}/<int:rep>/result", endpoint="result", methods=["GET"], defaults=defaults),
                Rule(f"{base}/<int:rep>/evaluate", endpoint="evaluate", methods=["POST"], defaults=defaults),
            ]
        if "" not in self.devices:
            rules.append(Rule("/info", endpoint="index", methods=["GET"]))
            rules.append(Rule("/", endpoint="index_page", methods=["GET"]))
        self.url_map = Map(rules)

    # -- routes ------------------------------------------------------------------

    def on_index(self, request: Request) -> Response:
        return _json({"protocol": PROTOCOL_VERSION, "fedsync": __version__, "bases": [b[1:] for b in self.devices]})

    def on_index_page(self, request: Request) -> Response:
        return Response(render_index([b[1:] for b in self.devices]), mimetype="text/html")

    def on_status(self, request: Request, base: str) -> Response:
        device = self.devices[base]
        title = f"{type(device.fed).__name__}{' at ' + base if base else ''}"
        return Response(render_status(device.info(), title), mimetype="text/html")

    def on_info(self, request: Request, base: str) -> Response:
        return _json(self.devices[base].info())

    def on_submit(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        device.ensure_can_accept(rep)
        encoding = self._checked_payload(request, device, rep, for_training=True)
        job = device.start(encoding, rep)
        return _json({"repetition": job.repetition, "state": "training"}, 202)

    def on_evaluate(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        encoding = self._checked_payload(request, device, rep)
        samples, metrics = device.evaluate(encoding, rep)
        return _json({"repetition": rep, "samples": samples, "metrics": metrics})

    def _checked_payload(self, request: Request, device: Device, rep: int, for_training: bool = False) -> Any:
        """Length, specs and the FedData's own check; the payload, or an ApiError."""
        length = request.content_length
        if length is None:
            raise ApiError(411, "length_required", "send the payload with a Content-Length header")
        if length > self.max_content_length:
            raise ApiError(
                413,
                "too_large",
                f"payload of {length} bytes exceeds this device's limit of {self.max_content_length}; "
                "start the device with a larger max_content_length",
            )
        specs = request.headers.get(SPECS_HEADER)
        if specs is None:
            raise ApiError(400, "missing_specs", f"send the FedData's specs in the {SPECS_HEADER} header")
        expected = device.fed.specs(rep)
        if specs != expected:
            raise ApiError(
                409,
                "specs_mismatch",
                f"payload specs {specs!r} do not match this device's {expected!r}; "
                "declare the same FedData (same architecture) on coordinator and device",
            )
        reuse = device.payload_buffer(length) if device.fed.accepts_views and for_training else None
        encoding = _read_payload(request, length, as_view=device.fed.accepts_views, into=reuse)
        del reuse
        try:
            device.fed.check(encoding, rep)
        except ValueError as exc:
            raise ApiError(400, "malformed_payload", f"payload rejected: {exc}") from None
        return encoding

    def on_result(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        job = device.job
        if job is None or job.repetition != rep:
            known = "none" if job is None else str(job.repetition)
            raise ApiError(404, "unknown_repetition", f"no work for repetition {rep} here (current: {known})")
        try:
            wait = float(request.args.get("wait", "0"))
        except ValueError:
            raise ApiError(400, "bad_wait", "wait must be a number of seconds, e.g. ?wait=10") from None
        if not 0 <= wait < float("inf"):
            raise ApiError(400, "bad_wait", "wait must be a number of seconds >= 0, e.g. ?wait=10")
        if not job.done.wait(min(wait, MAX_WAIT)):
            return _json({"repetition": rep, "state": "training"}, 202)
        if job.error is not None:
            raise ApiError(500, "training_failed", job.error)
        if request.method == "HEAD":
            # A readiness check: do not build the body just to throw it away.
            return Response(status=200, headers={REPETITION_HEADER: str(rep)})
        body, mimetype, length = _body(job.result, request.environ.get(SOCKET_KEY))
        response = Response(body, status=200, mimetype=mimetype, direct_passthrough=True)
        response.content_length = length
        response.headers[SPECS_HEADER] = device.fed.specs(rep)
        response.headers[REPETITION_HEADER] = str(rep)
        return response

    # -- WSGI ----------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
            if not self._authorized(request):
                raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>' with the device's token")
            return getattr(self, f"on_{endpoint}")(request, **values)
        except ApiError as exc:
            return exc.get_response()
        except HTTPException as exc:
            return _json({"error": exc.name.lower().replace(" ", "_"), "message": exc.description}, exc.code or 500)

    def wsgi_app(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)


def _read_payload(request: Request, length: int, as_view: bool = False, into: np.ndarray | None = None) -> Any:
    """Read exactly ``length`` bytes into one buffer; decode UTF-8 for text/plain.

    ``as_view``: a binary payload comes as a memoryview of numpy-allocated
    memory (see :func:`fedsync.codec.read_exactly`), ``into`` if given.
    """
    # Content-Length is known and checked, so read the server's input directly: it fills
    # our buffer from the socket, where werkzeug's LimitedStream would add a copy.
    raw = request.environ["wsgi.input"]
    stream = raw if hasattr(raw, "readinto") else request.stream
    binary_view = as_view and request.mimetype != "text/plain"
    buffer = read_exactly(stream.readinto, length, as_view=binary_view, into=into if binary_view else None)
    if len(buffer) != length:
        raise ApiError(400, "truncated", f"payload ended after {len(buffer)} of {length} bytes")
    if request.mimetype == "text/plain":
        try:
            return buffer.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "malformed_payload", f"text/plain payload is not UTF-8: {exc}") from None
    return buffer


class RunningServer:
    """A device server running in a background thread; a context manager."""

    def __init__(self, server: KeepAliveServer, app: DeviceApp) -> None:
        self.server = server
        self.app = app
        self.host = server.server_address[0]
        self.port = server.socket.getsockname()[1]
        self.url = f"{'https' if server.ssl_context else 'http'}://{self.host}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, name="fedsync-serve", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Block until the server stops (or ``timeout`` seconds pass)."""
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or an OSError naming the address.

    Binding here gives the caller an error to catch with the address in it
    (werkzeug's make_server, used before, printed and called sys.exit(1)).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except socket.gaierror as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); use an address of this machine, e.g. 127.0.0.1") from None
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}; try another port, or port=0 for any free one") from None
    except (UnicodeError, OverflowError) as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def serve(
    data: FedData | Mapping[str, FedData],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    block: bool = True,
    token: str | None = None,
    max_content_length: int | None = None,
    ssl_context: Any = None,
) -> RunningServer | None:
    """Serve a FedData (or a dict ``{name: FedData}``) over HTTP.

    Args:
        data: what this device holds; a dict mounts each FedData under ``/<name>/``.
        host: interface to listen on; the default only accepts local connections.
        port: TCP port; ``0`` picks a free one (read it back from ``.url``).
        block: ``True`` serves until interrupted (Ctrl-C) and returns ``None``;
            ``False`` serves in a background thread and returns a
            :class:`RunningServer` with ``.url`` and ``.close()``.
        token: if set, requests must carry ``Authorization: Bearer <token>``.
        max_content_length: the largest payload accepted, in bytes (default 2 GiB).
        ssl_context: serve HTTPS: an ``ssl.SSLContext`` or a ``(certfile, keyfile)`` pair.
    """
    app = DeviceApp(data, token=token, max_content_length=max_content_length)
    sock = _listen(host, port)
    try:
        server = KeepAliveServer(sock, app, ssl_context=ssl_context)
    except BaseException:
        sock.close()
        raise
    if not block:
        return RunningServer(server, app)
    logger.info("fedsync device serving on %s://%s:%d", "https" if ssl_context else "http", host, server.socket.getsockname()[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return None
