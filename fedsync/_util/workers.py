"""A bounded pool of daemon threads for the coordinator's requests to devices.

Not :class:`concurrent.futures.ThreadPoolExecutor`: its threads are joined
when the interpreter exits, so a script whose round failed would wait at exit
for long-polls the round had abandoned. These threads are daemons; each of
their requests has a timeout all the same.

Internal: the coordinator's plumbing; its names may change without notice (fedsync's public
surface is ``fedsync.__all__``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Workers", "concurrently", "STOP", "take"]

logger = logging.getLogger("fedsync")

STOP = threading.Event()
"""Set while a Ctrl-C waits to be raised (``fedsync.coordinator._interrupt`` defers it).

The coordinator's waits on its threads (:func:`take`, :func:`concurrently`) raise
:class:`KeyboardInterrupt` within :data:`STOP_CHECK` seconds of it: from fedsync's own
code, never from inside a lock's wait (an interrupt there can leave ``queue``'s lock
released twice: ``RuntimeError: release unlocked lock``).
"""

STOP_CHECK = 0.25
"""The longest a wait on the coordinator's threads goes without looking at :data:`STOP`, in seconds."""


def take(tasks: queue.Queue, timeout: float | None) -> Any:
    """``tasks.get(timeout=timeout)`` that raises :class:`KeyboardInterrupt` once :data:`STOP` is set.

    Raises:
        queue.Empty: nothing arrived within ``timeout`` seconds (``None``: wait without end).
        KeyboardInterrupt: :data:`STOP` was set (a deferred Ctrl-C) before anything arrived.
    """
    end = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        if STOP.is_set():
            raise KeyboardInterrupt
        left = STOP_CHECK if end is None else min(STOP_CHECK, end - time.monotonic())
        try:
            return tasks.get(timeout=max(0.0, left))
        except queue.Empty:
            if end is not None and time.monotonic() >= end:
                raise


class Workers:
    """At most ``size`` threads running submitted calls in submission order.

    A call may submit further calls (a long-poll that found nothing queues the
    next one behind the other devices'). :meth:`close` lets every thread end
    after its current call; calls still queued are dropped.
    """

    def __init__(self, size: int, name: str = "fedsync") -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, got {size}")
        self.size = size
        self._tasks: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        for index in range(size):
            threading.Thread(target=self._run, name=f"{name}-{index}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; its exceptions are its own to handle (they are only logged)."""
        if not self._closed.is_set():
            self._tasks.put((fn, args))

    def close(self) -> None:
        """Stop taking calls: each thread ends once its current call returns."""
        self._closed.set()
        for _ in range(self.size):
            self._tasks.put(None)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            if self._closed.is_set():
                continue  # drain: only the None markers matter now
            fn, args = task
            try:
                fn(*args)
            except Exception:  # a call's own errors are reported by the call; this is a bug
                logger.exception("unexpected error in %s", getattr(fn, "__name__", fn))

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def concurrently(calls: dict[str, Callable[[], Any]], limit: int, wait: float | None = None) -> dict[str, Any]:
    """Run the calls on at most ``limit`` threads; each one's result or exception, by key.

    Returns when every call has returned, or after ``wait`` seconds: a call still
    running then is left to end on its own (give each call its own timeout) and
    its key maps to a :class:`TimeoutError`.

    Raises:
        KeyboardInterrupt: :data:`STOP` was set (a deferred Ctrl-C); calls still running end on their own.
    """
    if not calls:
        return {}
    done: queue.Queue = queue.Queue()

    def run(key: str, fn: Callable[[], Any]) -> None:
        try:
            done.put((key, fn()))
        except Exception as exc:
            done.put((key, exc))

    results: dict[str, Any] = {}
    end = None if wait is None else time.monotonic() + max(0.0, wait)
    with Workers(min(limit, len(calls))) as workers:
        for key, fn in calls.items():
            workers.submit(run, key, fn)
        while len(results) < len(calls):
            try:
                key, value = take(done, None if end is None else max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            results[key] = value
    for key in calls.keys() - results.keys():
        results[key] = TimeoutError(f"still running after {wait}s")
    return results
