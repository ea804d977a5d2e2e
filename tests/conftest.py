"""Fixtures and hooks every test folder shares: device processes, the user's folder for the CLI, CI's skips.

Helpers (not fixtures) live in tests/support/: ``processes`` (start_device, tls_files, ...), ``cli``, ``browser``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import DEVICE_FILE, fedsync_command, preload_certs_dependencies, read_line
from tests.support.processes import DeviceProcess, start_device, stop_all


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


# -- the user's folder and the `fedsync` command (tests/cli, and the TLS tests that serve with it) ---------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding the user's device.py, as the current directory; sys.path restored afterwards."""
    preload_certs_dependencies()
    (tmp_path / "device.py").write_text(DEVICE_FILE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    return tmp_path


@pytest.fixture
def serve(workdir):
    """Start `fedsync serve ARGS` in a subprocess; returns (process, url). Stopped afterwards."""
    started = []

    def start(*args: str) -> tuple[subprocess.Popen, str]:
        process = fedsync_command("serve", *args, "--port", "0", cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        line = read_line(process.stdout)
        assert line.startswith("serving "), (line, process.stderr.read() if process.poll() is not None else "")
        return process, line.split()[1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


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


SUITE_MARK = "FEDSYNC_TEST_SUITE_RUN"
"""An environment variable every process this test process starts inherits: how leftovers are found."""


def _marked_processes(mark: str) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live processes (not zombies) whose environment holds ``mark``, but this one."""
    found = []
    needle = f"{SUITE_MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry.name), command))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite():
    """Fail the run if a process started by a test (marked through its inherited environment) is still alive.

    Tests stop every process they start, descendants included (process groups or sessions); a
    ``fedsync serve`` left behind costs hundreds of megabytes until the machine restarts. Leftovers
    are reported by command line, then killed so the machine is clean. Processes started with an
    environment of their own (``env={...}`` without this variable) are not seen.
    """
    if not Path("/proc/self/environ").exists():
        yield
        return
    mark = f"{os.getpid()}-{os.urandom(4).hex()}"
    os.environ[SUITE_MARK] = mark
    yield
    deadline = time.monotonic() + 15.0  # processes being stopped right now (a Ray node shutting down) get time
    while (left := _marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if left:
        listed = "\n".join(f"  pid {pid}: {command}" for pid, command in left[:20])
        pytest.fail(f"{len(left)} processes started by the tests were still running at the end (now killed):\n{listed}")
