"""Simulated devices in worker processes: :class:`ProcessPool` and :class:`ProcessRemote`.

For ``run_simulation(..., worker_kind="processes")``: a training in pure
Python holds the GIL, so threads take turns; processes train side by side.
A :class:`ProcessPool` runs ``workers`` processes (``python -m
fedsync.transports.process._worker``), each importing ``device_fn`` *by name* (a
module-level function: ``"module:function"``) when it has one, else receiving it *by value*
(a lambda, a closure, a function of a notebook or of a script read from standard input: serialized
with cloudpickle, ``pip install 'fedsync[sim]'``, in the first frame to the worker), and holding the
devices sampled onto it. A :class:`ProcessRemote` is a :class:`~fedsync.transports.remote.Remote` over a
:class:`ProcessTransport`, whose requests go, as raw bytes in length-prefixed frames over a pipe
(:mod:`fedsync.transports.process._frames`), to the device's WSGI application in its worker: the
same round, codec and checks as in-process and over HTTP. Nothing else is pickled, and nothing a worker
sends back is ever unpickled: its answers are JSON-headed frames, checked like an HTTP reply.

- A device is placed on the least loaded worker when the round first talks
  to it, and stays there until :meth:`ProcessRemote.release` (after each
  round), which drops its state in the worker.
- A worker that dies (killed, out of memory) fails the requests of its
  devices, each named by its URL (that round's failures); its devices' state
  is lost, and the pool starts a replacement for the devices placed next.
- A device whose work (``device_fn``, ``train``, an evaluation) still runs when it is
  released (after its round) holds its worker's one training slot for good: the worker
  is killed (its other devices were released too, or fail by name) and replaced.
- Every answer is checked (frame lengths, JSON, status, headers) before use,
  and nothing waits past its timeout, writing to a worker included.
"""

from __future__ import annotations

import io
import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..._util.checks import at_least_one, is_int, positive_int
from ...device.app import DEFAULT_MAX_CONTENT_LENGTH
from ...errors import RemoteError, RemoteTimeout
from .. import device_functions
from ..base import Body, BytesAnswer, Transport, body_bytes
from ..remote import MAX_REPLY, Remote
from ._frames import MAX_HEADER, FrameError, frame_head, pack_kept, read_frame, unpack_kept

__all__ = ["ProcessPool", "ProcessRemote", "ProcessTransport", "process_remotes"]

RELEASE_TIMEOUT = 2.0
"""Seconds a worker has to answer a device's release (it answers on its reader thread, at once)."""

MAX_ANSWER_HEADERS = 100
"""The most HTTP headers an answer may carry (a device sends about five)."""


class _Pending:
    """One request's answer, filled in by the worker's reader thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.header: dict[str, Any] = {}
        self.body: bytes | bytearray = b""
        self.lost: str | None = None


class _Process:
    """One worker process, the pipes to it, and the requests waiting for its answers."""

    def __init__(
        self, argv: list[str], env: dict[str, str], max_body: int, device_fn: bytes | None = None,
        start_timeout: float = 120.0,
    ) -> None:  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        # Pipes, and with Popen's default buffering the answers' end is a BufferedReader (it has readinto).
        assert stdin is not None and isinstance(stdout, io.BufferedReader)
        self.stdin, self.stdout = stdin, stdout
        self.fd = stdin.fileno()
        os.set_blocking(self.fd, False)  # writes wait in poll(), bounded by the request's deadline
        self.max_body = max_body
        self.lock = threading.Lock()  # guards pending, dead
        self.write_lock = threading.Lock()
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count()
        self.dead: str | None = None
        self.ready = threading.Event()
        self.start_error: str | None = None
        self.load = 0  # devices placed here (the pool's lock guards it)
        threading.Thread(target=self._read, name=f"fedsync-worker-{self.proc.pid}", daemon=True).start()
        if device_fn is not None:
            # device_fn by value is the pipe's first frame: requests wait on the write lock until it is written,
            # from a thread, so that workers start side by side however large the function (its closure) is.
            self.write_lock.acquire()
            threading.Thread(
                target=self._send_device_fn, args=(device_fn, time.monotonic() + start_timeout),
                name=f"fedsync-worker-{self.proc.pid}-start", daemon=True,
            ).start()  # fmt: skip

    def _send_device_fn(self, device_fn: bytes, deadline: float) -> None:
        """Write device_fn's frame (the write lock is held for this thread), then let requests through."""
        try:
            self._write(frame_head({"op": "device_fn"}, len(device_fn)), device_fn, deadline)
        except TimeoutError:
            self.kill("it did not read device_fn before the start timeout")
        except OSError:
            pass  # it died: the reader names how
        finally:
            self.write_lock.release()

    def call(
        self, url: str, header: dict[str, Any], body: bytes, timeout: float
    ) -> tuple[int, list[tuple[str, str]], bytes | bytearray]:
        """Send one request; the worker's answer, checked.

        Raises:
            RemoteError: the worker died, or answered what is not an answer.
            RemoteTimeout: no answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        pending = _Pending()
        with self.lock:
            if self.dead is not None:
                raise RemoteError(url, self.dead)
            request_id = next(self.ids)
            self.pending[request_id] = pending
        try:
            self._send(frame_head({**header, "id": request_id}, len(body)), body, deadline)
        except TimeoutError:
            with self.lock:
                self.pending.pop(request_id, None)
            raise RemoteTimeout(url, "timed out: its worker process took no request within the timeout") from None
        except OSError:
            pending.done.wait(max(0.0, min(1.0, deadline - time.monotonic())))  # the reader names the death
            with self.lock:
                self.pending.pop(request_id, None)
            raise RemoteError(url, self.dead or "its worker process stopped reading requests") from None
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            with self.lock:
                self.pending.pop(request_id, None)  # an answer arriving later is read and dropped
            raise RemoteTimeout(url, "timed out: no answer within the timeout")
        if pending.lost is not None:
            raise RemoteError(url, pending.lost)
        return _checked_answer(url, pending.header, pending.body)

    def keep(self, device_id: int, kept: dict[str, bytes]) -> None:
        """Send a device's own state (codec bytes by base) ahead of its first request: loaded when it is built.

        Raises:
            OSError: the worker takes no frame in time (its requests then fail by name).
        """
        entries, body = pack_kept(kept)
        head = frame_head({"op": "keep", "device": device_id, "kept": entries}, len(body))
        self._send(head, body, time.monotonic() + RELEASE_TIMEOUT)

    def release(self, device_id: int, url: str) -> dict[str, bytes] | None:
        """Tell the worker to drop a device (if it is alive; bounded); kill the worker if the device's
        work still runs (a hung call: its round is over) or the worker does not answer within
        :data:`RELEASE_TIMEOUT` seconds.

        Returns the device's own state the worker sent back (codec bytes by base, checked where
        loaded), or ``None`` when it sent none it could (dead, stuck, malformed).

        Raises:
            RemoteError: the worker could not send the state back (too large), naming the device.
        """
        if self.dead is not None:
            return None
        deadline = time.monotonic() + RELEASE_TIMEOUT
        pending = _Pending()
        with self.lock:
            request_id = next(self.ids)
            self.pending[request_id] = pending
        try:
            self._send(frame_head({"op": "release", "device": device_id, "id": request_id}, 0), b"", deadline)
            answered = pending.done.wait(max(0.0, deadline - time.monotonic()))
        except OSError:  # TimeoutError included: a worker that takes no request is stuck
            answered = False
        with self.lock:
            self.pending.pop(request_id, None)
        if pending.lost is not None:
            return None  # it died meanwhile: the pool replaces it
        if not answered:
            self.kill(f"it did not answer the release of {url} within {RELEASE_TIMEOUT:g} s")
            return None
        if pending.header.get("running") is not False:
            self.kill(
                f"{url}'s device_fn, training or evaluation still ran after its round (a hung call), holding the "
                "worker's training slot; a new worker takes its place"
            )
        try:
            kept = unpack_kept(pending.header.get("kept", []), pending.body)
        except FrameError as exc:
            self.kill(f"it answered the release of {url} with a malformed frame ({exc})")
            return None
        if "kept_refused" in pending.header:  # too large to travel back: the device fails by name next time
            raise RemoteError(
                url, f"its state from its last round is lost: {str(pending.header['kept_refused'])[:500]}"
            )
        return kept

    def _send(self, head: bytes, body: bytes, deadline: float) -> None:
        if not self.write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        try:
            self._write(head, body, deadline)
        finally:
            self.write_lock.release()

    def _write(self, head: bytes, body: bytes, deadline: float) -> None:
        """Write one frame (the caller holds the write lock); a frame left half written kills the worker."""
        if self.dead is not None:
            raise BrokenPipeError
        sent = [0]
        try:
            for chunk in (head, body):
                _write_all(self.fd, chunk, deadline, sent)
        except TimeoutError:
            if sent[0]:  # half a frame is in the pipe: the stream cannot be resynchronized
                self.kill("it stopped reading requests (a request was left half written at its deadline)")
            raise

    def kill(self, reason: str) -> None:
        """Kill the process; its requests fail with ``reason``."""
        with self.lock:
            if self.dead is None:
                self.dead = (
                    f"its worker process (pid {self.proc.pid}) was stopped: {reason}; the device's state was lost"
                )
        try:
            self.proc.kill()
        except OSError:
            pass

    def _read(self) -> None:
        """The reader thread: answers to their requests, until the pipe ends."""
        broken: str | None = None
        try:
            while True:
                frame = read_frame(self.stdout, max_body=self.max_body, max_header=MAX_HEADER)
                if frame is None:
                    break
                header, body = frame
                if "ready" in header:
                    if header["ready"] is not True:
                        self.start_error = str(header.get("error"))[:1000]
                    self.ready.set()
                    continue
                request_id = header.get("id")
                with self.lock:
                    # is_int: JSON `true` is no request id, though True == 1 as a dict key.
                    pending = self.pending.pop(request_id, None) if is_int(request_id) else None
                if pending is not None:
                    pending.header, pending.body = header, body
                    pending.done.set()
                del frame, body
        except (FrameError, OSError, MemoryError) as exc:
            # A FrameError's message says what was wrong; an OSError or MemoryError needs its name.
            what = str(exc)[:300] if isinstance(exc, FrameError) else f"{type(exc).__name__}: {str(exc)[:300]}"
            broken = f"sent a malformed frame ({what})"
            self.proc.kill()
        self._died(broken)

    def _died(self, broken: str | None) -> None:
        try:
            code = self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # it closed its stdout but lives on: end it
            self.proc.kill()
            code = self.proc.wait()
        how = broken or (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0 and -code in signal.valid_signals()
            else f"exited with code {code}"
        )
        with self.lock:
            if self.dead is None:
                self.dead = f"its worker process (pid {self.proc.pid}) {how}; the device's state was lost"
            waiting, self.pending = list(self.pending.values()), {}
        for pending in waiting:
            pending.lost = self.dead
            pending.done.set()
        self.ready.set()

    def close(self, wait: float) -> None:
        """Close the pipe (the worker exits when it reads its end), then kill it if it has not within ``wait``
        seconds."""
        with self.write_lock:
            try:
                self.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _write_all(fd: int, data: bytes | bytearray | memoryview, deadline: float, sent: list[int]) -> None:
    """Write all of ``data`` to the non-blocking ``fd`` before ``deadline``, counting bytes in ``sent[0]``.

    Raises:
        TimeoutError: the deadline passed first.
        OSError: the pipe is closed.
    """
    view = memoryview(data).cast("B")
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if not poller.poll(remaining * 1000):
            continue
        try:
            count = os.write(fd, view[: 1 << 20])
        except BlockingIOError:
            continue
        view = view[count:]
        sent[0] += count


def _checked_answer(
    url: str, header: dict[str, Any], body: bytes | bytearray
) -> tuple[int, list[tuple[str, str]], bytes | bytearray]:
    """A worker's answer as ``(status, headers, body)``, every field checked; else RemoteError/RemoteTimeout."""
    error = header.get("error")
    if error is not None:
        reason = str(error)[:2000]
        if header.get("timeout") is True:
            raise RemoteTimeout(url, reason)
        raise RemoteError(url, reason)
    status, headers = header.get("status"), header.get("headers")
    if not is_int(status) or not 100 <= status <= 599:
        raise RemoteError(
            url, f"its worker process answered status {str(status)[:40]!r}, expected an HTTP status 100-599"
        )
    if (
        not isinstance(headers, list)
        or len(headers) > MAX_ANSWER_HEADERS
        or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
            for pair in headers
        )
    ):
        raise RemoteError(
            url,
            f"its worker process answered malformed headers (expected at most {MAX_ANSWER_HEADERS} [name, value] "
            "pairs of strings)",
        )
    return (
        status,
        [(name, value) for name, value in headers],
        bytes(body) if isinstance(body, bytearray) and len(body) < 4096 else body,
    )


class ProcessPool:
    """``workers`` worker processes building devices with ``device_fn``, shared by many remotes.

    Args:
        device_fn: ``device_fn(device_id) -> FedData``, or its name ``"module:function"``. A module-level
            function (or one of the script run as ``__main__``) is imported by name in the workers; any other
            (a lambda, a closure, a function of a notebook or of a script read from standard input) is
            serialized with cloudpickle and sent to them once each
            (:func:`fedsync.transports.device_functions.ship`).
        workers: worker processes (default: the CPU count). Each trains one device
            at a time, with ``OMP_NUM_THREADS=1`` unless the environment sets it.
        max_content_length: a device's largest accepted payload, in bytes (as ``serve``).
        start_timeout: seconds to wait for the workers to import ``device_fn``.

    Raises:
        ValueError: a malformed name ``"module:function"``, or a bad ``workers``.
        TypeError: ``device_fn`` is not callable, or captures what cannot be serialized (a lock, a socket).
        ImportError: ``device_fn`` must go by value and cloudpickle is missing (``pip install 'fedsync[sim]'``),
            or a worker could not load ``device_fn`` (its message says why).
        TimeoutError: the workers were not ready within ``start_timeout``.
    """

    def __init__(
        self, device_fn: Callable[[int], Any] | str, workers: int | None = None, *,
        max_content_length: int | None = None, start_timeout: float = 120.0,
    ) -> None:  # fmt: skip
        shipment = device_functions.ship(device_fn)
        workers = (os.cpu_count() or 1) if workers is None else workers
        self.workers = at_least_one("workers", workers)
        self.device_fn = shipment.pickled
        self.start_timeout = start_timeout
        self.argv = [sys.executable, "-m", "fedsync.transports.process._worker", "--name", shipment.name]
        if shipment.pickled is not None:
            self.argv += ["--pickled", str(len(shipment.pickled))]
            what = f"{shipment.name} (sent by value)"
        elif shipment.module is not None:
            self.argv += ["--module", shipment.module]
            what = f"{shipment.module}:{shipment.name}"
        else:
            self.argv += ["--path", shipment.path or ""]
            what = f"{shipment.path}:{shipment.name}"
        if max_content_length is not None:
            self.argv += ["--max-content-length", str(int(max_content_length))]
        self.env = _worker_environment()
        self.max_body = max(MAX_REPLY, max_content_length or DEFAULT_MAX_CONTENT_LENGTH) + (1 << 16)
        self._lock = threading.Lock()
        self._closed = False
        self._processes = [self._spawn() for _ in range(workers)]
        deadline = time.monotonic() + start_timeout
        for process in self._processes:
            if not process.ready.wait(max(0.0, deadline - time.monotonic())):
                self.close()
                raise TimeoutError(
                    f"the simulation's worker processes did not start within {start_timeout:g} s (loading {what})"
                )
            why = process.start_error or process.dead
            if why is not None:
                self.close()
                raise ImportError(f"a simulation worker process could not load device_fn {what}: {why}")

    def _spawn(self) -> _Process:
        return _Process(self.argv, self.env, self.max_body, self.device_fn, self.start_timeout)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (a replaced worker's id changes)."""
        with self._lock:
            return [process.proc.pid for process in self._processes]

    def place(self) -> _Process:
        """The least loaded live worker, for one more device; a dead one is replaced first.

        Raises:
            RuntimeError: the pool is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the simulation's worker processes are closed")
            for i, process in enumerate(self._processes):
                if process.dead is not None:
                    self._processes[i] = self._spawn()  # not waited for: requests queue in its pipe meanwhile
            process = min(self._processes, key=lambda p: p.load)
            process.load += 1
            return process

    def unplace(self, process: _Process) -> None:
        """One device fewer on ``process``."""
        with self._lock:
            process.load -= 1

    def close(self, wait: float = 5.0) -> None:
        """Stop every worker (killed if still busy after ``wait`` seconds)."""
        with self._lock:
            self._closed = True
            processes = list(self._processes)
        for process in processes:
            process.close(wait)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_environment() -> dict[str, str]:
    """This environment, with this process's import path, and one BLAS/OpenMP thread per worker unless set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) if p else os.getcwd() for p in sys.path if isinstance(p, str)
    )
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")  # the pool runs one worker per core
    return env


class ProcessTransport(Transport):
    """Requests to device ``device_id``, answered in one of a :class:`ProcessPool`'s workers.

    The device is placed on the least loaded worker by its first request and stays
    there until :meth:`release`.
    """

    def __init__(self, url: str, device_id: int, processes: ProcessPool) -> None:
        self.url = url
        self.device_id = device_id
        self.processes = processes
        self.process: _Process | None = None
        self.kept: dict[str, bytes] = {}  # the device's own state while it is not sampled (codec bytes by base)
        self.lost: RemoteError | None = None  # its state could not be kept: every later request fails with this
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcessTransport({self.url!r})"

    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> BytesAnswer:
        """The device's answer from its worker, every field checked (see :meth:`_Process.call`)."""
        with self.lock:
            if self.lost is not None:
                raise self.lost
            if self.process is None:
                try:
                    self.process = self.processes.place()
                except RuntimeError as exc:
                    raise RemoteError(self.url, str(exc)) from None
                if self.kept:  # ahead of the first request, in pipe order: loaded when the device is built
                    try:
                        self.process.keep(self.device_id, self.kept)
                    except OSError as exc:
                        raise RemoteError(self.url, f"its worker did not take its kept state: {exc}") from None
            process = self.process
        path, _, query = target.partition("?")
        request = {
            "device": self.device_id,
            "method": method,
            "path": path,
            "query": query,
            "headers": {str(k): str(v) for k, v in headers.items()},
            "timeout": timeout,
        }
        return BytesAnswer(*process.call(self.url, request, body_bytes(body), timeout))

    def release(self) -> None:
        """Drop the device in its worker (it is built again when next used), keeping its own state here.

        The state (:meth:`~fedsync.protocol.FedData.device_state`) comes back as codec bytes and is
        held in :attr:`kept` (its size, per device) until the device's next first request, on any worker.
        """
        with self.lock:
            process, self.process = self.process, None
        if process is not None:
            self.processes.unplace(process)
            try:
                kept = process.release(self.device_id, self.url)
            except RemoteError as exc:
                with self.lock:
                    self.lost = exc  # its next request fails with this, rather than starting afresh unsaid
                return
            if kept is not None:
                with self.lock:
                    self.kept = kept


class ProcessRemote(Remote):
    """A device built by ``device_fn(device_id)`` in one of a :class:`ProcessPool`'s workers (``local://NAME``).

    A :class:`~fedsync.transports.remote.Remote` over a :class:`ProcessTransport`.

    Args:
        url: ``"local://NAME"``.
        device_id: the argument given to ``device_fn`` in the worker.
        processes: the pool it runs on.
        timeout, max_reply: as for :class:`~fedsync.transports.local.LocalRemote`.

    Raises:
        ValueError: not a ``local://`` URL, or a bad timeout.
    """

    transport: ProcessTransport

    def __init__(
        self, url: str, device_id: int, processes: ProcessPool, *, timeout: float = 30.0, max_reply: int = MAX_REPLY
    ) -> None:
        if not isinstance(url, str) or not url.startswith("local://") or not url[len("local://") :].strip("/"):
            raise ValueError(f"ProcessRemote URL must be local://NAME, got {url!r}")
        url = url.rstrip("/")
        self.name = url[len("local://") :]
        transport = ProcessTransport(url, device_id, processes)
        super().__init__(url, timeout=timeout, max_reply=max_reply, transport=transport)

    @property
    def device_id(self) -> int:
        """The argument given to ``device_fn`` in the worker."""
        return self.transport.device_id

    @property
    def materialized(self) -> bool:
        """Whether the device is placed on a worker (its state may exist there)."""
        return self.transport.process is not None

    def release(self) -> None:
        """Drop the device's state in its worker (it is built again when next used)."""
        self.transport.release()


def process_remotes(processes: ProcessPool, num_devices: int, *, timeout: float = 30.0) -> list[ProcessRemote]:
    """``local://device-{i}`` remotes on ``processes`` for ``i`` in ``range(num_devices)``.

    Raises:
        ValueError: ``num_devices`` is not a positive integer.
    """
    positive_int("num_devices", num_devices)
    return [ProcessRemote(f"local://device-{i}", i, processes, timeout=timeout) for i in range(num_devices)]
