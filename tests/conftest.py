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
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Freeze the process (SIGSTOP): its socket stays open but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def cont(self) -> None:
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


@pytest.fixture
def devices():
    """Start device processes with ``devices(factory, *args)``; all are killed afterwards."""
    started: list[DeviceProcess] = []

    def start(
        factory: str, *args: object, port: int = 0, path: tuple[str, ...] = (), log: Path | None = None, token: str | None = None
    ) -> DeviceProcess:
        device = start_device(factory, *args, port=port, path=path, log=log, token=token)
        started.append(device)
        return device

    yield start
    stop_all(started)


def stop_all(started: "list[DeviceProcess]") -> None:
    """Kill every device process a test started (a frozen one is resumed first, so it can die)."""
    for device in started:
        if device.process.poll() is None:
            device.cont()
            device.process.kill()
        device.process.wait(timeout=10)


# -- skips that must not hide a failure in CI ---------------------------------------------

REQUIRED_EXTRAS = ("torch", "keras", "tensorflow", "sklearn", "safetensors", "tensorboardX", "tensorboard", "cryptography", "matplotlib", "dp_accounting", "mlflow", "ray", "Crypto", "fedsync")
"""What `pip install -e '.[all,test]'` installs (and fedsync itself): with FEDSYNC_REQUIRE_EXTRAS=1 (set by .ci/run)
a test skipped because one of them is missing fails instead, so a broken install cannot pass CI as skips."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("FEDSYNC_REQUIRE_EXTRAS") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    missing = [name for name in REQUIRED_EXTRAS if f"'{name}" in reason or f" {name} " in reason or f"the {name} extra" in reason]
    if missing:
        report.outcome = "failed"
        report.longrepr = f"FEDSYNC_REQUIRE_EXTRAS=1: skipped for a missing required package ({', '.join(missing)}): {reason}"


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


def rounds_done(folder):
    """Rounds in the checkpoint's history (0 while there is none yet): how far a coordinator process got."""
    try:
        pointer = json.loads((folder / "checkpoint.json").read_text())
        return len(json.loads((folder / pointer["folder"] / "history.json").read_text())["rounds"])
    except (FileNotFoundError, ValueError):
        return 0
