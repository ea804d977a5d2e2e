"""The in-process transport: ``local://NAME`` remotes whose device runs in this process.

A :class:`LocalRemote` is the HTTP :class:`~fedsync.transports.remote.Remote` with the
network taken out: each request is built as a WSGI environ and handed to the
device's own :class:`~fedsync.device.app.DeviceApp` (the application ``serve``
runs), and the answer comes back as bytes. So a simulated device goes through
exactly the production path: the payload is serialized to bytes by the same
codec, the device checks specs, size bounds, the payload (``check``), the
config and the snapshot rules, and the coordinator checks every answer with the
same code and raises the same errors as over HTTP. Nothing is pickled.

What differs from HTTP: no sockets, no token, and training runs on a shared,
bounded :class:`TrainingPool` of threads instead of one thread per device
(numpy's BLAS and torch release the GIL while they compute; a pure-Python
``train`` serialises on the GIL: :mod:`fedsync.transports.process.pool` runs devices in worker
processes instead).

Devices are found by name: :func:`register_device` (``local://NAME``
strings, e.g. mixed with ``http://`` ones in ``Federated``), or passed to
``LocalRemote(url, device=...)``. A device given as a *function* returning a
FedData is built on the first request and dropped by :meth:`LocalRemote.release`
(what :func:`fedsync.coordinator.simulation.run_simulation` does after each round), so a
device's state exists only while it is sampled.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Union
from urllib.parse import urlencode

import requests
from requests.structures import CaseInsensitiveDict
from werkzeug.test import EnvironBuilder

from ..device._state import Device, Job
from ..errors import RemoteError, RemoteTimeout
from ..plugins.hookspecs import RegisterTransport, hookimpl
from ..protocol import FedData
from ..wire.config import Config
from .remote import MAX_REPLY, Remote

__all__ = [
    "LocalRemote",
    "TrainingPool",
    "register_device",
    "unregister_device",
    "DeviceSource",
    "app_response",
    "call_app",
    "MemoryBody",
    "request_bytes",
    "timeout_seconds",
]

DeviceSource = Union[FedData, Callable[[], FedData]]
"""A device: its FedData, or a function building it when the device is first used."""

_devices: dict[str, DeviceSource] = {}
_devices_lock = threading.Lock()


def register_device(name: str, device: DeviceSource) -> str:
    """Make ``local://NAME`` reach ``device`` in this process; returns that URL.

    Raises:
        ValueError: ``name`` is empty or holds ``/``, or is already registered.
        TypeError: ``device`` is neither a FedData nor callable.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"a local device name is a non-empty word without '/', got {name!r}; e.g. register_device('a', fed)"
        )
    if not (isinstance(device, FedData) or callable(device)):
        raise TypeError(
            f"register_device({name!r}, ...) takes a FedData or a function returning one, got {type(device).__name__}"
        )
    with _devices_lock:
        if name in _devices:
            raise ValueError(f"local device {name!r} is already registered; unregister_device({name!r}) first")
        _devices[name] = device
    return f"local://{name}"


def unregister_device(name: str) -> None:
    """Forget ``local://NAME`` (remotes built already keep their device)."""
    with _devices_lock:
        _devices.pop(name, None)


class TrainingPool:
    """A bounded pool of threads on which local devices train (shared by many devices).

    Args:
        workers: threads training at once (default: the CPU count).
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be at least 1 (an integer), got {workers!r}")
        self.workers = workers
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="fedsync-local")

    def close(self) -> None:
        """Stop taking work; jobs already queued still run."""
        self.executor.shutdown(wait=False, cancel_futures=False)


_default_pool: TrainingPool | None = None
_default_lock = threading.Lock()


def default_pool() -> TrainingPool:
    """The process-wide pool of remotes built without one (CPU-count threads)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = TrainingPool()
        return _default_pool


class LocalRemote(Remote):
    """A device in this process, reached as ``local://NAME`` through its WSGI application.

    Args:
        url: ``"local://NAME"``.
        device: the device's FedData, or a function building it when first used
            (then dropped by :meth:`release`); default: the one registered as NAME.
        timeout: seconds for each answer (as for :class:`Remote`).
        pool: where training runs (default: :func:`default_pool`).
        max_reply: the largest result, in bytes, downloaded whole.
        max_content_length: the device's largest accepted payload (as ``serve``).

    Raises:
        ValueError: not a ``local://`` URL, a bad timeout, or no device given or
            registered under NAME.
    """

    def __init__(
        self,
        url: str,
        *,
        device: DeviceSource | None = None,
        timeout: float = 30.0,
        pool: TrainingPool | None = None,
        max_reply: int = MAX_REPLY,
        max_content_length: int | None = None,
    ) -> None:
        # Remote.__init__ is not called: it builds an HTTP session, which has no use here.
        if not isinstance(url, str) or not url.startswith("local://") or not url[len("local://") :].strip("/"):
            raise ValueError(
                f"LocalRemote URL must be local://NAME, got {url!r}; e.g. LocalRemote('local://a', device=fed)"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.name = self.url[len("local://") :]
        if device is None:
            with _devices_lock:
                device = _devices.get(self.name)
            if device is None:
                raise ValueError(
                    f"no local device named {self.name!r}; register it first: fedsync.transports.local.register_device({self.name!r}, fed)"
                )
        self.timeout = float(timeout)
        self.max_reply = int(max_reply)
        self.max_content_length = max_content_length
        self._token = None
        self.session = None
        self.verify = True
        self._source = device
        self._pool = pool
        self._app: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalRemote({self.url!r})"

    @property
    def materialized(self) -> bool:
        """Whether the device's state exists now."""
        return self._app is not None

    def app(self) -> Any:
        """The device's :class:`~fedsync.device.app.DeviceApp`, built on first use.

        Raises:
            RemoteError: the device function raised, or returned no FedData (that device's failure).
        """
        with self._lock:
            if self._app is None:
                self._app = self._build()
            return self._app

    def _build(self) -> Any:
        from ..device.app import DeviceApp

        source = self._source
        if isinstance(source, FedData):
            fed = source
        else:
            try:
                fed = source()
            except Exception as exc:  # user code: this device's failure alone
                raise RemoteError(self.url, f"device_fn raised {type(exc).__name__}: {str(exc)[:500]}") from None
            if not isinstance(fed, FedData):
                raise RemoteError(self.url, f"device_fn returned {type(fed).__name__}, expected a FedData")
        app = DeviceApp(fed, max_content_length=self.max_content_length)
        pool = self._pool or default_pool()
        app.devices = {base: _PooledDevice(device.fed, pool) for base, device in app.devices.items()}
        return app

    def release(self) -> None:
        """Drop the device's state if it was built by a function (it is built again when next used)."""
        if not isinstance(self._source, FedData):
            with self._lock:
                self._app = None

    def close(self) -> None:
        """Drop the device's state (as :meth:`release`)."""
        self.release()

    # -- the one method of Remote that touches the network ---------------------------

    def _request(self, method: str, path: str, check: bool = True, **kwargs: Any) -> requests.Response:
        """Answer a request with the device's WSGI application, as an unread ``requests.Response``."""
        params: Mapping[str, str] = kwargs.get("params") or {}
        data = kwargs.get("data")
        body = request_bytes(data) if data is not None else b""
        headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
        status, answer_headers, content = self._exchange(
            method, path, urlencode(params), headers, body, timeout_seconds(kwargs.get("timeout"), self.timeout)
        )
        response = app_response(self.url + path, status, answer_headers, content)
        if check and status >= 400:
            with response:
                self._raise_for(response)
        return response

    def _exchange(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request answered by the device's application: status, headers, whole body.

        Where the device runs is this method's business (a worker process in
        :mod:`fedsync.transports.process.pool`).

        Raises:
            RemoteError: the device could not be built.
            RemoteTimeout: an evaluation gave no answer within ``timeout`` seconds.
        """
        environ = _environ(method, path, query, headers, body)
        app = self.app()
        if method == "POST" and path.endswith("/evaluate"):
            # Evaluation runs in the request (as on a device): bound it by the timeout, off this thread.
            future = (self._pool or default_pool()).executor.submit(call_app, app, environ)
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise RemoteTimeout(self.url, "timed out: no answer within the timeout") from None
        return call_app(app, environ)


def _environ(method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The WSGI environ of one request, as a server would build it from the wire."""
    builder = EnvironBuilder(
        path=path,
        method=method,
        headers=dict(headers),
        query_string=query,
        input_stream=io.BytesIO(body),
        content_length=len(body),
    )
    environ = builder.get_environ()
    builder.close()
    return environ


def call_app(app: Any, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run the WSGI application: its status, headers and whole body (the body is copied, as a socket would)."""
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started["status"], started["headers"] = status, headers
        return lambda _: None

    iterable = app(environ, start_response)
    try:
        content = b"".join(bytes(piece) for piece in iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()  # the device's download ends here: it may write its model again
    return int(started["status"].split(" ", 1)[0]), list(started["headers"]), content


def app_response(url: str, status: int, headers: list[tuple[str, str]], content: Any) -> requests.Response:
    """An application's answer (status, headers, bytes-like body) as the unread ``requests.Response``
    a :class:`~fedsync.transports.remote.Remote` hands the round: for transports whose device answers in
    memory or in another process (``local://``, the worker processes, ``ray://``)."""
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict(headers)
    response.headers.setdefault(
        "Content-Length", str(len(memoryview(content).cast("B")))
    )  # as a server's chunked body reads
    response.raw = MemoryBody(content)
    response.url = url
    return response


class MemoryBody:
    """A response body read from memory: what ``transfer.read_some`` reads when there is no socket."""

    def __init__(self, content: Any) -> None:
        # A view, not io.BytesIO (which copies a memoryview): a Ray reply stays in the object store.
        self._view: memoryview | None = memoryview(content).cast("B")
        self._at = 0

    def read(self, n: int | None = -1, **_: Any) -> bytes:
        if self._view is None:
            return b""
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._at + n)
        piece, self._at = bytes(self._view[self._at : end]), end
        return piece

    def stream(self, chunk: int = 65536, **_: Any) -> Any:
        while piece := self.read(chunk):
            yield piece

    def release_conn(self) -> None:
        self.close()

    def close(self) -> None:
        self._view = None


def request_bytes(data: Any) -> bytes:
    """A request body as bytes: a :class:`~fedsync.wire.codec.Payload`'s frames joined, as they go over a socket."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join(bytes(memoryview(frame).cast("B")) for frame in data)


def timeout_seconds(timeout: Any, default: float) -> float:
    """Seconds from a ``requests``-style ``timeout`` (a number, or ``(connect, read)``), else ``default``."""
    if isinstance(timeout, tuple):
        timeout = timeout[-1]
    return float(timeout) if isinstance(timeout, (int, float)) else default


class _PooledDevice(Device):
    """A :class:`~fedsync.device._state.Device` whose training jobs run on a shared pool, not on a thread each."""

    def __init__(self, fed: FedData, pool: TrainingPool) -> None:
        super().__init__(fed)
        self.pool = pool

    def _launch(self, job: Job, encoding: Any, config: Config) -> None:
        # An override, not a method patched on the instance: that closure would be a reference
        # cycle, freed only by the cyclic collector, and a dropped device's data with it.
        try:
            self.pool.executor.submit(self._work, job, encoding, config)
        except RuntimeError:  # the pool was closed: this device's failure
            job.error = "RuntimeError: the simulation's training pool is closed"
            self.busy.release()
            job.done.set()


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """``local``: devices in this process (:class:`LocalRemote`)."""
    register("local", LocalRemote)
