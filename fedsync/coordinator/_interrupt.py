"""Ctrl-C during ``Federated.fit()``, ``round()`` or ``evaluate()``: stop at a safe point, say how to resume.

A ``KeyboardInterrupt`` raised wherever the main thread happens to be can land inside a
lock's wait (``queue.Queue.get`` between ``Condition.wait`` releasing the queue's lock and
its ``try``), whose ``with`` block then releases the lock again: ``RuntimeError: release
unlocked lock`` after a 45-line traceback. So while a method marked :func:`stoppable` runs
in the main thread, the first Ctrl-C only sets :data:`fedsync._util.workers.STOP`; the
coordinator's waits on its threads see it within ``STOP_CHECK`` seconds and raise
``KeyboardInterrupt`` from fedsync's own code, the round's ``finally`` cancels it (its
threads end after their current request, each bounded by its timeout; they are daemons,
so the interpreter never waits for them), and a plain ``KeyboardInterrupt`` (scripts still
stop, with the exit status of Ctrl-C) carries one line saying what was saved and how to
resume; uncaught, Python prints only that line (:func:`_quiet_hook`). A second Ctrl-C
stops at once (user code such as a callback or ``evaluate_fn`` may run for long).

A checkpoint is written only after a round merged (``checkpoint.save`` runs with Ctrl-C
deferred too), so the folder always holds the last merged round.

Internal: the plumbing of :class:`fedsync.Federated`; its names may change without notice.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

from .._util.workers import STOP

__all__ = ["stopped", "stoppable", "describe_stop"]

F = TypeVar("F", bound=Callable[..., Any])

_depth = threading.local()


def stopped(message: str) -> KeyboardInterrupt:
    """The ``KeyboardInterrupt`` a stopped run raises: ``message`` is its text, all Python prints of it uncaught.

    Exactly ``KeyboardInterrupt``, not a subclass: Python then exits with Ctrl-C's status
    (killed by SIGINT, 130 in a shell) as for any uncaught Ctrl-C.
    """
    exc = KeyboardInterrupt(message)
    exc.fedsync_stopped = True  # type: ignore[attr-defined]  # read by _quiet_hook
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _quiet_hook
    return exc


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if STOP.is_set():
        raise KeyboardInterrupt  # the second Ctrl-C: at once, wherever the main thread is
    STOP.set()


def _quiet_hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` once a run was :func:`stopped`: its one line, no traceback; other errors as before."""
    if getattr(value, "fedsync_stopped", False):
        print(value, file=sys.stderr, flush=True)
        return
    sys.__excepthook__(kind, value, tb)


def describe_stop(federated: Any, during: str) -> str:
    """The line a :func:`stopped` run says: where (``during``: "during round 3"), what is saved, how to resume."""
    merged = len(federated.history)
    rounds = "1 merged round" if merged == 1 else f"{merged} merged rounds"
    if federated.checkpoint is not None:
        saved = (
            f"{federated.checkpoint} holds {rounds}: run the same code again to resume from it"
            " (a device still training the stopped round answers busy until it is done)"
        )
    else:
        saved = (
            f"the model holds {rounds}, and nothing was saved: call fit() again in this process to continue, "
            "or pass Federated(..., checkpoint=FOLDER) to make a run resumable"
        )
    return f"fedsync: stopped by Ctrl-C {during}; {saved}"


def stoppable(during: Callable[..., str]) -> Callable[[F], F]:
    """Mark a ``Federated`` method that Ctrl-C stops cleanly (see the module's text).

    ``during(federated, *args, **kwargs)`` says what was running (``"round 3 of 5"``),
    asked when Ctrl-C stopped it. Only the outermost marked call in the main
    thread takes over SIGINT, and only from Python's default handler (a handler of
    the application's own stays).
    """

    def mark(method: F) -> F:
        @functools.wraps(method)
        def run(federated: Any, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(_depth, "value", 0)
            owner = (
                depth == 0
                and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler
            )
            previous = None
            if owner:
                STOP.clear()
                previous = signal.signal(signal.SIGINT, _on_sigint)
            _depth.value = depth + 1
            try:
                result = method(federated, *args, **kwargs)
                if owner and STOP.is_set():  # asked while its last step ran (a callback, the last merge)
                    raise stopped(describe_stop(federated, f"after round {len(federated.history)}"))
                return result
            except KeyboardInterrupt as exc:
                if depth or getattr(exc, "fedsync_stopped", False):
                    raise
                raise stopped(describe_stop(federated, f"during {during(federated, *args, **kwargs)}")) from None
            finally:
                _depth.value = depth
                if owner:
                    signal.signal(signal.SIGINT, previous)
                    STOP.clear()

        return run  # type: ignore[return-value]  # same signature as method

    return mark
