"""Fixtures that start real device processes serving on loopback."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DeviceProcess:
    """A device process started by a test; ``url`` is where it serves."""

    process: subprocess.Popen
    url: str

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Freeze the process (SIGSTOP): its socket stays open but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def start_device(
    factory: str, *args: object, port: int = 0, timeout: float = 60.0, path: tuple[str, ...] = ()
) -> DeviceProcess:
    """Start ``python -m tests.run_device factory args`` and wait for its URL.

    ``path`` adds folders to the device's ``PYTHONPATH`` (e.g. an installed plugin).
    """
    pythonpath = os.pathsep.join([*path, str(ROOT)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath, FEDSYNC_TEST_PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.run_device", factory, json.dumps(list(args))],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return DeviceProcess(process, line.split()[1])
    process.kill()
    raise RuntimeError(f"device {factory}{args} did not start within {timeout}s (exit code {process.poll()})")


@pytest.fixture
def devices():
    """Start device processes with ``devices(factory, *args)``; all are killed afterwards."""
    started: list[DeviceProcess] = []

    def start(factory: str, *args: object, port: int = 0, path: tuple[str, ...] = ()) -> DeviceProcess:
        device = start_device(factory, *args, port=port, path=path)
        started.append(device)
        return device

    yield start
    for device in started:
        if device.process.poll() is None:
            device.cont()
            device.process.kill()
        device.process.wait(timeout=10)
