"""Helpers of the dial-out end-to-end tests: `fedsync serve --connect` device processes and a coordinator script.

A dialing device is the real command in a subprocess, serving ``DEVICE_FILE:data`` (its model and training set
by ``$E2E_DEVICE``, JSON), its log (stderr) in a file the test reads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT

DEVICE_FILE = """\
import json, os
import numpy as np
import fedsync

config = json.loads(os.environ.get("E2E_DEVICE", "{}"))
value, samples, size = config.get("value", 1.0), config.get("samples", 1), config.get("size")
weights = {"w": np.zeros(size, np.float32)} if size else {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}

def train(model):
    for a in model.values():
        a[...] = value
    return samples

data = fedsync.FedArrays(weights, train)
"""


@dataclass
class Dialer:
    """A ``fedsync serve --connect`` process; ``log`` its stderr."""

    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Until ``text`` is in the log (AssertionError after ``timeout`` s, with the log)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s:\n{self.log_text()}"
            assert self.process.poll() is None, f"the dialer exited ({self.process.returncode}):\n{self.log_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def device_file(folder: Path) -> Path:
    path = folder / "e2e_device.py"
    if not path.exists():
        path.write_text(DEVICE_FILE)
    return path


def dial(folder: Path, url: str, name: str, token: str, *extra: str, **device: object) -> Dialer:
    """Start ``fedsync serve e2e_device.py:data --connect url --name name --token token extra``."""
    device_file(folder)
    log = folder / f"dialer-{name}-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", E2E_DEVICE=json.dumps(device))
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedsync", "serve", "e2e_device.py:data", "--connect", url, "--name", name,
             "--token", token, *extra],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        )  # fmt: skip
    return Dialer(process, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
