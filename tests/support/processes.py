"""Device processes a test starts and stops, and the files they need: what conftest's fixtures and the tests share.

``start_device`` runs ``python -m tests.support.run_device FACTORY ARGS`` (a factory named by path, as
``"tests.support.devices.basic:linreg"``) and waits for the URL it serves on; the ``devices`` fixture in
tests/conftest.py starts them through it and stops them with ``stop_all``.
"""

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

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DeviceProcess:
    """A device process started by a test; ``url`` is where it serves.

    ``log``: the file its stderr goes to, when the test asked for one.
    """

    process: subprocess.Popen
    url: str
    log: Path | None = None

    def log_text(self) -> str:
        """What the device wrote to stderr so far (``log`` must be set)."""
        assert self.log is not None, "start the device with log=PATH to read its stderr"
        return self.log.read_text(errors="replace")

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status (Linux only)")

    def kill(self) -> None:
        """Kill the process and wait for it."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Freeze the process (SIGSTOP): its socket stays open but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """Resume a frozen process (SIGCONT)."""
        os.kill(self.process.pid, signal.SIGCONT)


def start_device(
    factory: str,
    *args: object,
    port: int = 0,
    timeout: float = 60.0,
    path: tuple[str, ...] = (),
    log: Path | None = None,
    token: str | None = None,
    serve: dict | None = None,
) -> DeviceProcess:
    """Start ``python -m tests.support.run_device factory args`` and wait for its URL.

    ``path`` adds folders to the device's ``PYTHONPATH`` (e.g. an installed plugin);
    ``log`` is a file that receives the device's stderr; ``token`` the device's token;
    ``serve`` more keyword arguments of :func:`fedsync.serve` (JSON: paths as strings).
    """
    pythonpath = os.pathsep.join([*path, str(ROOT)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath, FEDSYNC_TEST_PORT=str(port))
    env.pop("FEDSYNC_TEST_TOKEN", None)
    env["FEDSYNC_TEST_SERVE"] = json.dumps(serve or {})
    if token is not None:
        env["FEDSYNC_TEST_TOKEN"] = token
    stderr = open(log, "w") if log is not None else None
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_device", factory, json.dumps(list(args))],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=env,
            text=True,
        )
    finally:
        if stderr is not None:
            stderr.close()  # the child holds its own copy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return DeviceProcess(process, line.split()[1], log)
    process.kill()
    raise RuntimeError(f"device {factory}{args} did not start within {timeout}s (exit code {process.poll()})")


def stop_all(started: "list[DeviceProcess]") -> None:
    """Kill every device process a test started (a frozen one is resumed first, so it can die)."""
    for device in started:
        if device.process.poll() is None:
            device.cont()
            device.process.kill()
        device.process.wait(timeout=10)


def tls_files(folder: Path) -> tuple[str, str, str]:
    """``(certfile, keyfile, cafile)``: a device certificate for 127.0.0.1 and the CA that signed it.

    Every TLS test gets its certificates here, from :mod:`fedsync.wire.certs` (the
    ``cryptography`` package, a test dependency): no ``openssl`` binary to skip without.
    """
    from fedsync.wire import certs

    pki = folder / "pki"
    ca = certs.init_ca(pki)
    cert, key = certs.issue_device(pki, ["127.0.0.1"])
    return str(cert), str(key), str(ca)


def rounds_done(folder: Path) -> int:
    """Rounds in the checkpoint's history (0 while there is none yet): how far a coordinator process got."""
    try:
        pointer = json.loads((folder / "checkpoint.json").read_text())
        return len(json.loads((folder / pointer["folder"] / "history.json").read_text())["rounds"])
    except (FileNotFoundError, ValueError):
        return 0
