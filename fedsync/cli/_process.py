"""How a ``fedsync`` command process behaves as a process: signals, pipes, what it tells the terminal."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

__all__ = ["say_how_to_stop", "sigterm_as_exit", "stdout_to_devnull"]


def say_how_to_stop() -> None:
    """'press Ctrl-C to stop' on stderr, only where Ctrl-C reaches us: the terminal's foreground group.

    Devices started by a script in their own session (examples/run.py, the demo)
    are stopped by that script, so they keep quiet.
    """
    try:
        if os.tcgetpgrp(sys.stderr.fileno()) != os.getpgrp():
            return
    except (OSError, ValueError):  # stderr is not a terminal: no key to press
        return
    except AttributeError:  # no process groups (Windows)
        if not sys.stderr.isatty():
            return
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)


class sigterm_as_exit:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks (stopping devices) run."""

    def __enter__(self) -> None:
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass

    @staticmethod
    def _handle(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def stdout_to_devnull() -> None:
    """After a broken pipe, as Python's documentation recommends (``signal`` module, "Note on SIGPIPE").

    Python flushes stdout once more at exit, which would fail again and print
    an error; pointing stdout at /dev/null lets it exit quietly. SIGPIPE is
    not reset to its default instead: it would kill a device whose *client*
    hangs up.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (e.g. captured in a test)
        pass
