"""What a hung call leaves behind in a simulation, and how its slot is given back.

A ``train``, an evaluation or a ``device_fn`` that never returns outlives its round:
the round fails that device at its deadline, but the call still holds what it runs on.
A worker *process* is killed and replaced (:mod:`fedsync.transports.process.pool`); a
*thread* cannot be killed, so :class:`ReplaceableExecutor` starts another thread in the
hung one's place (bounded by ``max_replaced``, with a warning each time), and
:class:`OnceAtATime` keeps a hung ``device_fn`` from taking one more thread every round.

:func:`still_running` tells whether a device's work outlived its round: at release
(after the round) nothing of a device may still run.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..local import TrainingPool

__all__ = ["ReplaceableExecutor", "ReplaceablePool", "OnceAtATime", "still_running", "owners", "MAX_REPLACED"]

MAX_REPLACED = 64
"""The most hung threads a pool replaces in a run; past it, each hung call costs a slot for good."""


def still_running(transport: Any) -> bool:
    """Whether a :class:`~fedsync.transports.local.LocalTransport`'s device is building, training or evaluating.

    Read without waiting: a build holds the transport's lock; a training or an evaluation
    holds its :class:`~fedsync.device._state.Device`'s ``busy`` lock.
    """
    app = transport.device_app
    if app is None:
        return bool(transport.lock.locked())
    return any(device.busy.locked() for device in app.devices.values())


def owners(transport: Any) -> set[int]:
    """The ids of the objects whose calls run a device's work on a pool (its app and its devices)."""
    app = transport.device_app
    if app is None:
        return set()
    return {id(app), *(id(device) for device in app.devices.values())}


class _Slot:
    """One thread of the pool and what it runs now."""

    def __init__(self) -> None:
        self.owner: int | None = None  # id of the object the running call belongs to
        self.replaced = False


class ReplaceableExecutor(concurrent.futures.Executor):
    """``workers`` daemon threads running submitted calls in order; a hung one can be replaced.

    As :class:`concurrent.futures.ThreadPoolExecutor` for ``submit``/``shutdown``, but the
    threads are daemons (a hung call does not hold the interpreter at exit), and
    :meth:`replace` starts a new thread in place of each one running a call of a given owner.

    Args:
        workers: threads running at once.
        max_replaced: the most threads :meth:`replace` starts over the pool's life.
        name: the threads' name prefix.
    """

    def __init__(self, workers: int, *, max_replaced: int = MAX_REPLACED, name: str = "fedsync-local") -> None:
        self.workers = workers
        self.max_replaced = max_replaced
        self.replaced = 0
        self.name = name
        self._tasks: queue.Queue[tuple[concurrent.futures.Future, Callable[..., Any], tuple, dict] | None] = (
            queue.Queue()
        )
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closed = False
        for _ in range(workers):
            self._start()

    def _start(self) -> None:
        slot = _Slot()
        self._slots.append(slot)
        threading.Thread(target=self._run, args=(slot,), name=f"{self.name}-{len(self._slots)}", daemon=True).start()

    def _run(self, slot: _Slot) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args, kwargs = task
            if not future.set_running_or_notify_cancel():
                continue
            owner = getattr(fn, "__self__", None)
            slot.owner = id(owner if owner is not None else (args[0] if args else fn))
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                slot.owner = None
            del future, fn, args, kwargs, task
            if slot.replaced:  # another thread took this one's place while it hung: leave
                return

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Queue ``fn(*args, **kwargs)``.

        Raises:
            RuntimeError: the executor was shut down.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._tasks.put((future, fn, args, kwargs))
        return future

    def replace(self, owner_ids: set[int], what: str) -> int:
        """Start a new thread in place of each thread running a call of one of ``owner_ids``; how many.

        The hung thread runs on (a thread cannot be stopped) and ends if its call ever returns.
        Each replacement warns (``RuntimeWarning``); past ``max_replaced`` none is started and
        the hung call keeps its slot.
        """
        started = 0
        with self._lock:
            for slot in list(self._slots):
                if slot.replaced or slot.owner is None or slot.owner not in owner_ids:
                    continue
                if self.replaced >= self.max_replaced or self._closed:
                    warnings.warn(
                        f"{what} still runs after its round and its thread cannot be stopped; {self.replaced} hung "
                        f"threads were replaced already (the most: {self.max_replaced}), so it keeps one of the "
                        f"{self.workers} training slots. Fix the hang, or use worker_kind='processes' (hung worker "
                        "processes are killed and replaced)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    continue
                slot.replaced = True
                self.replaced += 1
                self._start()
                started += 1
                warnings.warn(
                    f"{what} still runs after its round (hung?): a thread cannot be stopped, so it is left running "
                    f"and another thread takes its training slot ({self.replaced} of at most {self.max_replaced} "
                    "replaced); worker_kind='processes' kills a hung worker instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return started

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; every thread ends after the calls queued (``wait`` is not honoured: hung calls)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        task = self._tasks.get_nowait()
                    except queue.Empty:
                        break
                    if task is not None:
                        task[0].cancel()
            for _ in self._slots:
                self._tasks.put(None)


class OnceAtATime:
    """``device_fn(device_id)``, refused while an earlier call of it has not returned.

    A ``device_fn`` that hangs holds its thread for good; without this, each round's
    attempt to build the device would hang one more thread. The refusal is that device's
    failure (a ``RuntimeError`` naming how long the earlier call has run).
    """

    def __init__(self, device_fn: Callable[[int], Any], device_id: int) -> None:
        self.device_fn = device_fn
        self.device_id = device_id
        self._lock = threading.Lock()
        self._since: float | None = None

    def __call__(self) -> Any:
        with self._lock:
            if self._since is not None:
                raise RuntimeError(
                    f"device_fn({self.device_id}) has not returned since it was called "
                    f"{time.monotonic() - self._since:.0f} s ago (it hangs?); a thread cannot be stopped, so it is "
                    "not called again until it returns. Fix device_fn, or use worker_kind='processes' (a hung worker "
                    "is killed and replaced)"
                )
            self._since = time.monotonic()
        try:
            return self.device_fn(self.device_id)
        finally:
            with self._lock:
                self._since = None


class ReplaceablePool(TrainingPool):
    """A :class:`~fedsync.transports.local.TrainingPool` on a :class:`ReplaceableExecutor`: a hung call's thread
    can be replaced (``run_simulation``'s threads backend).

    Args:
        workers: threads training at once (default: the CPU count).
    """

    executor: ReplaceableExecutor  # type: ignore[assignment]  # a concurrent.futures.Executor as the base's

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self.executor.shutdown(wait=False)  # the base's, never used: no thread was started yet
        self.executor = ReplaceableExecutor(self.workers)
