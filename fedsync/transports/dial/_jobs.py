"""The listener's state, shared by the coordinator's threads and the server's event loop: sessions, jobs, pipes.

A *job* is one request the coordinator's :class:`~fedsync.transports.remote.Remote` makes of a dialed-in device.
A coordinator thread creates it (:meth:`Hub.submit`) and blocks on its answer head; the device fetches it
(``next``), downloads its body by slices, runs it and uploads the answer, whose bytes go through the job's
:class:`Pipe` (at most :data:`PIPE_BYTES` buffered: the device's upload waits for the coordinator's reads).

Threads: the coordinator's threads and the event loop's thread both touch this state, each change under
:attr:`Hub.lock` (held briefly, never across a wait). The loop is woken through ``call_soon_threadsafe``.

Internal: its names may change without notice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ...errors import RemoteError, RemoteTimeout, RemoteUnavailable
from ...wire.transfer import Deadline

logger = logging.getLogger("fedsync.dial")

PIPE_BYTES = 4 * 1024**2
"""The most answer bytes held per job between the device's upload and the coordinator's reads."""

SLICE = 1024**2
"""The largest piece of a job's body written at once to a device (its frames are never joined)."""

MAX_HELD = 4
"""Jobs a device may hold at once (fetched, answer not yet whole): ``next`` hands no more."""


class Superseded(Exception):
    """This upload was replaced by a newer one for the same job, or nobody waits for its answer any more."""


def frames_of(body: bytes | bytearray | memoryview | Iterable[bytes | memoryview] | None) -> list[memoryview]:
    """A request body as byte views of its frames, none copied (see ``Body`` in :mod:`fedsync.transports.base`)."""
    if body is None:
        return []
    if isinstance(body, (bytes, bytearray, memoryview)):
        view = memoryview(body)
        return [view.cast("B") if view.c_contiguous else memoryview(view.tobytes())]
    frames = []
    for frame in body:
        view = memoryview(frame)
        frames.append(view.cast("B") if view.c_contiguous else memoryview(view.tobytes()))
    return frames


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Pipe:
    """Answer bytes from the loop (:meth:`put`, async) to one coordinator thread (:meth:`readinto`), bounded.

    ``length`` is the whole answer's size; ``received`` counts bytes put so far (the resume offset).
    """

    def __init__(self, url: str, length: int, loop: asyncio.AbstractEventLoop, cond: threading.Condition) -> None:
        self.url, self.length, self.loop, self.cond = url, length, loop, cond
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.received = 0
        self.closed = False  # the coordinator stopped reading
        self.space: asyncio.Future[None] | None = None
        self.failure: RemoteError | None = None
        self.generation = 0  # the upload allowed to put (a resumed upload takes over)

    def complete(self) -> bool:
        return self.received >= self.length

    async def put(self, data: bytes, generation: int) -> None:
        """Append ``data``; waits while :data:`PIPE_BYTES` are buffered (back-pressure on the device's upload).

        Raises:
            Superseded: a newer upload took over, or the coordinator stopped reading.
        """
        view = memoryview(data)
        while view:
            with self.cond:
                if self.closed or generation != self.generation:
                    raise Superseded
                room = min(PIPE_BYTES - self.size, self.length - self.received)
                if room > 0:
                    piece = view[:room]
                    self.chunks.append(piece)
                    self.size += len(piece)
                    self.received += len(piece)
                    view = view[len(piece) :]
                    self.cond.notify_all()
                    continue
                if self.received >= self.length:
                    raise ValueError("more bytes than Upload-Length")
                self.space = waiter = self.loop.create_future()
            await waiter

    def _wake_writer(self) -> None:
        space = self.space
        if space is not None:
            self.space = None
            self.loop.call_soon_threadsafe(_resolve, space)

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """Up to ``len(view)`` answer bytes into ``view``; 0 at the end. One wait, of at most ``deadline.read_wait()``.

        Raises:
            RemoteTimeout: nothing arrived in time.
            RemoteUnavailable: the device's session ended (it registered again) or the listener closed.
        """
        with self.cond:
            wait = deadline.read_wait()
            end = time.monotonic() + wait
            while self.failure is None and not self.chunks:
                if self.received >= self.length or not len(view):
                    return 0
                if wait <= 0:
                    raise RemoteTimeout(self.url, deadline.expired)
                self.cond.wait(wait)
                wait = end - time.monotonic()
            if self.failure is not None:
                raise self.failure
            # Everything buffered that fits, not one chunk a call: fewer wake-ups of this thread and the loop's.
            n = 0
            while self.chunks and n < len(view):
                first = self.chunks[0]
                k = min(len(view) - n, len(first))
                view[n : n + k] = first[:k]
                n += k
                if k == len(first):
                    self.chunks.popleft()
                else:
                    self.chunks[0] = first[k:]
            self.size -= n
            self._wake_writer()
            return n

    def close(self) -> None:
        """The coordinator reads no more: drop what is buffered, stop the upload."""
        with self.cond:
            self.closed = True
            self.chunks.clear()
            self.size = 0
            self._wake_writer()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class Stats:
    """Bytes and resumes of one device since the listener started."""

    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_resent: int = 0
    resumed_uploads: int = 0
    resumed_downloads: int = 0


@dataclass
class Job:
    """One request of the coordinator to one device, and its answer as it arrives."""

    id: str
    name: str
    url: str
    session: str
    method: str
    target: str
    headers: dict[str, str]
    frames: list[memoryview]
    length: int
    cond: threading.Condition
    fetched: bool = False
    served: int = 0  # the furthest body byte served so far (bytes below it served again are re-sent)
    status: int | None = None
    answer_headers: dict[str, str] = field(default_factory=dict)
    pipe: Pipe | None = None
    failure: RemoteError | None = None
    dropped: bool = False

    def slices(self, start: int) -> Iterator[memoryview]:
        """The body from byte ``start`` on, in pieces of at most :data:`SLICE` bytes, viewing its frames."""
        skip = start
        for frame in self.frames:
            if skip >= len(frame):
                skip -= len(frame)
                continue
            at = skip
            skip = 0
            while at < len(frame):
                yield frame[at : at + SLICE]
                at += SLICE

    def describe(self) -> dict[str, object]:
        """What ``next`` answers the device."""
        return {"job": self.id, "method": self.method, "target": self.target, "headers": self.headers,
                "length": self.length}  # fmt: skip


class Session:
    """A device's registration: its id, the jobs waiting for it, and the pollers to wake."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.id = secrets.token_hex(16)
        self.queue: collections.deque[Job] = collections.deque()
        self.held: set[str] = set()
        self.loop = loop
        self.wake = asyncio.Event()  # touched on the loop's thread only
        self.ended = False

    def notify(self) -> None:
        """Wake this session's pollers (from any thread)."""
        self.loop.call_soon_threadsafe(self.wake.set)


class Hub:
    """Every device's session and every job in flight; thread-safe.

    Args:
        names: the allowed device names, in the allow-list's order.
        loop: the server's event loop.
    """

    def __init__(self, names: Iterable[str], loop: asyncio.AbstractEventLoop) -> None:
        self.names = list(names)
        self.loop = loop
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, Job] = {}
        self.stats: dict[str, Stats] = {name: Stats() for name in self.names}
        self.registered = threading.Condition(self.lock)
        self.closed = False

    # -- the device's side (the loop's thread) -------------------------------------------

    def register(self, name: str) -> Session:
        """A new session for ``name``; the earlier one's jobs fail at once."""
        session = Session(name, self.loop)
        with self.lock:
            earlier = self.sessions.get(name)
            self.sessions[name] = session
            failed = [] if earlier is None else self._end(earlier)
            self.registered.notify_all()
        for job in failed:
            self.fail(
                job,
                RemoteUnavailable(job.url, f"{name} registered again (restarted?) while this request was in flight"),
            )
        if earlier is not None:
            earlier.wake.set()
        return session

    def _end(self, session: Session) -> list[Job]:
        session.ended = True
        return [job for job in self.jobs.values() if job.session == session.id]

    def session(self, name: str, session_id: str | None) -> Session | None:
        """``name``'s current session if ``session_id`` is its id, else ``None`` (stale or unknown)."""
        with self.lock:
            session = self.sessions.get(name)
        if session is None or session_id is None or session.id != session_id or session.ended:
            return None
        return session

    def take(self, session: Session) -> Job | None:
        """The next job queued for ``session``, now fetched; ``None`` if none (or the device holds too many)."""
        with self.lock:
            while session.queue and len(session.held) < MAX_HELD:
                job = session.queue.popleft()
                if job.dropped or job.failure is not None:
                    continue
                job.fetched = True
                session.held.add(job.id)
                with job.cond:
                    job.cond.notify_all()
                return job
            return None

    def job(self, name: str, session: Session, job_id: str) -> Job | None:
        """The job ``job_id`` of this device's session, or ``None`` (unknown, another device's, or over)."""
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None or job.name != name or job.session != session.id or job.dropped or job.failure is not None:
            return None
        return job

    def served(self, job: Job, start: int, count: int) -> None:
        """``count`` body bytes from ``start`` went to the device: count those sent before as re-sent."""
        with self.lock:
            stats = self.stats[job.name]
            stats.bytes_sent += count
            stats.bytes_resent += max(0, min(start + count, job.served) - start)
            job.served = max(job.served, start + count)

    def answered(self, job: Job, count: int) -> None:
        with self.lock:
            self.stats[job.name].bytes_received += count

    def release(self, job: Job) -> None:
        """The device holds ``job`` no more (its answer is whole): it may fetch another."""
        with self.lock:
            session = self.sessions.get(job.name)
            if session is not None and session.id == job.session:
                session.held.discard(job.id)
        if session is not None:
            session.notify()

    # -- the coordinator's side (its threads) --------------------------------------------

    def submit(self, name: str, url: str, method: str, target: str, headers: Mapping[str, str], body: object) -> Job:
        """Queue a request for device ``name``.

        Raises:
            RemoteUnavailable: the device has not registered since the listener started, or it closed.
        """
        frames = frames_of(body)  # type: ignore[arg-type]  # a transport's Body
        with self.lock:
            if self.closed:
                raise RemoteUnavailable(url, "the listener is closed; start a new Listener")
            session = self.sessions.get(name)
            if session is None:
                raise RemoteUnavailable(url, f"{name} has not dialed in (no registration since the listener started)")
            job = Job(
                id=secrets.token_hex(16), name=name, url=url, session=session.id, method=method, target=target,
                headers=dict(headers), frames=frames, length=sum(len(f) for f in frames),
                cond=threading.Condition(),
            )  # fmt: skip
            self.jobs[job.id] = job
            session.queue.append(job)
        session.notify()
        return job

    def wait_head(self, job: Job, timeout: float) -> None:
        """Block until ``job``'s answer head is in, at most ``timeout`` seconds.

        Raises:
            RemoteTimeout: the device did not fetch the request, or did not answer, within ``timeout``.
            RemoteUnavailable: its session ended, or the listener closed.
        """
        end = time.monotonic() + timeout
        with job.cond:
            while job.status is None:
                if job.failure is not None:
                    raise job.failure
                left = end - time.monotonic()
                if left <= 0:
                    if not job.fetched:
                        raise RemoteTimeout(job.url, f"{job.name} did not fetch the request within {timeout:.3g} s")
                    raise RemoteTimeout(job.url, f"{job.name} did not answer within {timeout:.3g} s")
                job.cond.wait(left)

    def drop(self, job: Job) -> None:
        """The coordinator is done with ``job`` (answer read or abandoned): forget it, stop its upload."""
        with self.lock:
            job.dropped = True
            self.jobs.pop(job.id, None)
        if job.pipe is not None:
            job.pipe.close()
        self.release(job)

    def fail(self, job: Job, error: RemoteError) -> None:
        """``job`` fails with ``error`` unless its answer is already whole."""
        with job.cond:
            if job.pipe is not None and job.pipe.complete():
                return
            job.failure = error
            if job.pipe is not None:
                job.pipe.failure = error
            job.cond.notify_all()
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.pipe is not None:
            job.pipe.close()

    def close(self) -> None:
        """Fail every job in flight: the listener stops."""
        with self.lock:
            self.closed = True
            jobs = list(self.jobs.values())
            sessions = list(self.sessions.values())
            for session in sessions:
                session.ended = True
        for job in jobs:
            self.fail(job, RemoteUnavailable(job.url, "the listener closed while this request was in flight"))
        for session in sessions:  # parked long-polls return now, so the server's shutdown need not wait them out
            session.notify()

    def wait_for(self, count: int, timeout: float) -> list[str]:
        """Block until ``count`` allowed devices registered; their names (allow-list order).

        Raises:
            TimeoutError: fewer registered within ``timeout`` seconds; the message names the missing.
        """
        end = time.monotonic() + timeout
        with self.lock:
            while True:
                present = [name for name in self.names if name in self.sessions]
                if len(present) >= count:
                    return present
                left = end - time.monotonic()
                if left <= 0:
                    missing = [name for name in self.names if name not in self.sessions]
                    raise TimeoutError(
                        f"{len(present)} of {count} devices dialed in within {timeout:g} s; not yet: "
                        f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. Check that they run "
                        "`fedsync serve ... --connect` with this listener's URL, their name and token"
                    )
                self.registered.wait(left)
