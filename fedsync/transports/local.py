"""The in-process transport: ``local://NAME`` remotes whose device runs in this process.

A :class:`LocalRemote` is a :class:`~fedsync.transports.remote.Remote` over a
:class:`LocalTransport`, which takes the network out: each request is built as a
WSGI environ and handed to the device's own :class:`~fedsync.device.app.DeviceApp`
(the application ``serve`` runs), and the answer comes back as bytes
(a :class:`~fedsync.transports.base.BytesAnswer`). So a simulated device goes through
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
device's model exists only while it is sampled. Its own state
(:meth:`~fedsync.protocol.FedData.device_state`) is kept when it is dropped, as the codec's
bytes (:attr:`LocalTransport.kept`: the state's size plus a small header), and loaded into the
FedData built for its next round.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder

from .._util.checks import at_least_one
from ..device._kept import keep_states, restore_states
from ..device.app import DeviceApp
from ..errors import RemoteError, RemoteTimeout
from ..plugins.hookspecs import RegisterTransport, hookimpl
from ..protocol import FedData
from .base import Body, BytesAnswer, Transport, body_bytes
from .remote import MAX_REPLY, Remote

__all__ = [
    "LocalRemote",
    "LocalTransport",
    "TrainingPool",
    "register_device",
    "unregister_device",
    "DeviceSource",
    "call_app",
]

DeviceSource = FedData | Callable[[], FedData]
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
        self.workers = at_least_one("workers", workers)
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


class LocalTransport(Transport):
    """Requests answered by a device's own WSGI application in this process (``local://NAME``).

    Args:
        url: the device's URL (named in errors).
        device: the device's FedData, or a function building it when first used
            (then dropped by :meth:`release`).
        pool: where training runs (default: :func:`default_pool`).
        max_content_length: the device's largest accepted payload (as ``serve``).
        kept: the device's own state from an earlier transport of the same device (:attr:`kept`).

    ``kept``: the device's own state saved when it was last dropped, by FedData base
    (``""``, or ``"/name"``), as the codec's bytes; restored into the next FedData built.
    """

    def __init__(
        self,
        url: str,
        device: DeviceSource,
        *,
        pool: TrainingPool | None = None,
        max_content_length: int | None = None,
        kept: dict[str, bytes] | None = None,
    ) -> None:
        self.url = url
        self.kept: dict[str, bytes] = dict(kept or {})
        self.source = device
        self.pool = pool
        self.max_content_length = max_content_length
        self.device_app: Any = None
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalTransport({self.url!r})"

    @property
    def materialized(self) -> bool:
        """Whether the device's state exists now."""
        return self.device_app is not None

    def app(self) -> Any:
        """The device's :class:`~fedsync.device.app.DeviceApp`, built on first use.

        Raises:
            RemoteError: the device function raised, or returned no FedData (that device's failure).
        """
        with self.lock:
            if self.device_app is None:
                self.device_app = self.build()
            return self.device_app

    def build(self) -> Any:
        """A new :class:`~fedsync.device.app.DeviceApp` for the device, training on the pool.

        Raises:
            RemoteError: the device function raised, or returned no FedData, or one whose state
                layout no longer fits the state kept from the device's last round.
        """
        source = self.source
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
        try:
            restore_states(app, self.kept, self.url)
        except (ValueError, TypeError) as exc:  # device_fn's FedData changed its state's layout
            raise RemoteError(self.url, str(exc)[:1000]) from None
        pool = self.pool or default_pool()
        for device in app.devices.values():
            device.executor = pool.executor  # trains on the shared pool, not on a thread of its own
        return app

    def release(self) -> None:
        """Drop the device if it was built by a function (it is built again when next used), keeping its own state.

        The state (:meth:`~fedsync.protocol.FedData.device_state`) is encoded into :attr:`kept`; a
        FedData still training (a hung round) keeps the state kept before.
        """
        if not isinstance(self.source, FedData):
            with self.lock:
                if self.device_app is not None:
                    self.kept = keep_states(self.device_app, self.kept)
                self.device_app = None

    def close(self) -> None:
        """Drop the device's state (as :meth:`release`)."""
        self.release()

    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> BytesAnswer:
        """The device application's answer (see :meth:`call`), its body in memory."""
        return BytesAnswer(*self.call(method, target, headers, body_bytes(body), timeout))

    def call(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | bytearray, timeout: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request answered by the device's application: status, headers, whole body.

        An evaluation runs in the request (as on a device), off this thread, bounded by ``timeout`` seconds.

        Raises:
            RemoteError: the device could not be built.
            RemoteTimeout: an evaluation gave no answer within ``timeout`` seconds.
        """
        path, _, query = target.partition("?")
        environ = _environ(method, path, query, headers, body)
        app = self.app()
        if method == "POST" and path.endswith("/evaluate"):
            future = (self.pool or default_pool()).executor.submit(call_app, app, environ)
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise RemoteTimeout(self.url, "timed out: no answer within the timeout") from None
        return call_app(app, environ)

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | bytearray | memoryview
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request answered by the device's application in this thread: status, headers, whole body.

        ``target`` is the path and query (``"/3/result?wait=0.000"``); the request reaches the
        application as a WSGI environ built as a server builds it from the wire.

        Raises:
            RemoteError: the device could not be built.
        """
        path, _, query = target.partition("?")
        return call_app(self.app(), _environ(method, path, query, headers, body))


class LocalRemote(Remote):
    """A device in this process, reached as ``local://NAME`` through its WSGI application.

    A :class:`~fedsync.transports.remote.Remote` over a :class:`LocalTransport`.

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

    transport: LocalTransport

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
        if not isinstance(url, str) or not url.startswith("local://") or not url[len("local://") :].strip("/"):
            raise ValueError(
                f"LocalRemote URL must be local://NAME, got {url!r}; e.g. LocalRemote('local://a', device=fed)"
            )
        url = url.rstrip("/")
        self.name = url[len("local://") :]
        if device is None:
            with _devices_lock:
                device = _devices.get(self.name)
            if device is None:
                raise ValueError(
                    f"no local device named {self.name!r}; register it first: "
                    f"fedsync.transports.local.register_device({self.name!r}, fed)"
                )
        transport = LocalTransport(url, device, pool=pool, max_content_length=max_content_length)
        super().__init__(url, timeout=timeout, max_reply=max_reply, transport=transport)

    @property
    def materialized(self) -> bool:
        """Whether the device's state exists now."""
        return self.transport.materialized

    def app(self) -> Any:
        """The device's :class:`~fedsync.device.app.DeviceApp`, built on first use (see :meth:`LocalTransport.app`)."""
        return self.transport.app()

    def release(self) -> None:
        """Drop the device's state if it was built by a function (it is built again when next used)."""
        self.transport.release()


def _environ(
    method: str, path: str, query: str, headers: Mapping[str, str], body: bytes | bytearray | memoryview
) -> dict[str, Any]:
    """The WSGI environ of one request, as a server would build it from the wire."""
    builder = EnvironBuilder(
        path=path,
        method=method,
        headers=Headers(headers),
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


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """``local``: devices in this process (:class:`LocalRemote`)."""
    register("local", LocalRemote)
