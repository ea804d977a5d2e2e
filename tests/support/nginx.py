"""A real nginx (Debian's package) in front of fedsync, run from a temporary folder with the shipped config.

:func:`proxy_config` turns ``deploy/nginx/fedsync-proxy.conf`` (the file docs/deployment.md includes verbatim) into the
config a test runs: the same blocks and settings, only the addresses, ports and certificate paths replaced (each
replacement must match exactly once, so the shipped file cannot drift from what is tested). :class:`Nginx` runs it
with ``nginx -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'daemon off;'`` in a session of its own, logs every
request to ``DIR/access.log`` (:meth:`Nginx.requests`) and stops it, workers included, in :meth:`Nginx.stop`.
:func:`start_fedsync` runs the real ``fedsync serve`` command the same way. benchmarks/nginx.py uses both.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT

SHIPPED = ROOT / "deploy" / "nginx" / "fedsync-proxy.conf"
DEVICE_UPSTREAM, LISTENER_UPSTREAM = "127.0.0.1:8000", "127.0.0.1:9000"
DEVICE_LISTEN, LISTENER_LISTEN = "listen 8443 ssl;", "listen 9443 ssl;"
CERT, KEY = "/etc/fedsync/tls/proxy.pem", "/etc/fedsync/tls/proxy-key.pem"
LOG_FORMAT = "$request_method $request_uri $status $request_length $bytes_sent $request_time"
DEVICE_FILE = "tests/support/deploy_device.py"


def nginx_binary() -> str | None:
    """The nginx executable (Debian's ``nginx-light`` or ``nginx`` put it in /usr/sbin), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def require_nginx() -> str:
    """nginx's path; skips the test where nginx is missing, fails it under FEDSYNC_REQUIRE_EXTRAS=1 (CI installs it)."""
    import pytest

    found = nginx_binary()
    if found is None:
        reason = "nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)"
        if os.environ.get("FEDSYNC_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"FEDSYNC_REQUIRE_EXTRAS=1: {reason}")
        pytest.skip(reason)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def top_blocks(text: str) -> list[str]:
    """The top-level ``upstream NAME { ... }`` and ``server { ... }`` blocks of an nginx config, comments dropped."""
    lines = [line.split("#", 1)[0].rstrip() for line in text.splitlines()]
    blocks, current, depth = [], [], 0
    for line in lines:
        if not line.strip() and depth == 0:
            continue
        current.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0:
            blocks.append("\n".join(current))
            current = []
    assert depth == 0 and not current, "unbalanced braces in the nginx config"
    return blocks


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    assert count == 1, f"{SHIPPED.name}: expected {old!r} once in a block, found it {count} times"
    return text.replace(old, new)


def proxy_config(devices: list[str], listener: str | None, cert: str, key: str) -> tuple[str, list[int], int | None]:
    """The shipped config's blocks for ``devices`` (``host:port`` each) and a ``listener``: ``(text, ports, port)``.

    The device's upstream and server blocks are repeated once per device (upstream ``fedsync_device`` becomes
    ``fedsync_device_{i}``), each on a free port of 127.0.0.1; ``port`` is the listener's proxy port (None without).
    """
    blocks = top_blocks(SHIPPED.read_text())
    device_up = [b for b in blocks if b.startswith("upstream fedsync_device ")]
    listener_up = [b for b in blocks if b.startswith("upstream fedsync_listener ")]
    device_server = [b for b in blocks if b.startswith("server ") and "http://fedsync_device;" in b]
    listener_server = [b for b in blocks if b.startswith("server ") and "http://fedsync_listener;" in b]
    assert all(len(found) == 1 for found in (device_up, listener_up, device_server, listener_server)), blocks
    assert len(blocks) == 4, f"{SHIPPED.name} has blocks the tests do not know: {blocks}"
    out, ports = [], []
    for i, address in enumerate(devices):
        port = free_port()
        ports.append(port)
        up = _replace_once(device_up[0], f"server {DEVICE_UPSTREAM};", f"server {address};")
        out.append(_replace_once(up, "fedsync_device ", f"fedsync_device_{i} "))
        server = _replace_once(device_server[0], DEVICE_LISTEN, f"listen 127.0.0.1:{port} ssl;")
        server = _replace_once(server, "http://fedsync_device;", f"http://fedsync_device_{i};")
        out.append(_replace_once(_replace_once(server, CERT, cert), KEY, key))
    listener_port = None
    if listener is not None:
        listener_port = free_port()
        out.append(_replace_once(listener_up[0], f"server {LISTENER_UPSTREAM};", f"server {listener};"))
        server = _replace_once(listener_server[0], LISTENER_LISTEN, f"listen 127.0.0.1:{listener_port} ssl;")
        out.append(_replace_once(_replace_once(server, CERT, cert), KEY, key))
    return "\n\n".join(out) + "\n", ports, listener_port


@dataclass
class Request:
    """One line of the access log: what nginx passed, how big it was both ways, and how long it took (s)."""

    method: str
    uri: str
    status: int
    received: int  # $request_length: the request line, headers and body
    sent: int  # $bytes_sent: the answer, headers included
    seconds: float


class Nginx:
    """nginx serving ``config`` (http-level blocks) from ``folder``; a context manager that stops it."""

    def __init__(self, folder: Path, config: str, ports: list[int], workers: int = 1) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fedsync-proxy.conf").write_text(config)
        # nginx started as root hands requests to workers running as nobody: they read nothing in the folder.
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {folder}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"{user}worker_processes {workers};\npid {folder}/nginx.pid;\nerror_log {folder}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    log_format fedsync '{LOG_FORMAT}';\n    access_log {folder}/access.log fedsync;\n{temp}"
            f"    include {folder}/fedsync-proxy.conf;\n}}\n"
        )
        with open(folder / "stderr.log", "w") as stderr:
            self.process = subprocess.Popen(
                [require_nginx_path(), "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e",
                 str(folder / "error.log"), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        try:
            for port in ports:
                self._wait_for(port)
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.process.returncode}):\n{self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {port} within {timeout} s:\n{self.errors()}")

    def errors(self) -> str:
        """nginx's error log and stderr so far."""
        return "\n".join(
            p.read_text(errors="replace") for p in (self.folder / "error.log", self.folder / "stderr.log") if p.exists()
        )

    def requests(self) -> list[Request]:
        """Every request nginx finished so far, from its access log."""
        log = self.folder / "access.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            method, uri, status, received, sent, seconds = line.split()
            found.append(Request(method, uri, int(status), int(received), int(sent), float(seconds)))
        return found

    def stop(self) -> None:
        """Fast shutdown (SIGTERM: the master stops its workers), then SIGKILL to the whole session if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_nginx_path() -> str:
    found = nginx_binary()
    if found is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


@dataclass
class FedsyncProcess:
    """A ``fedsync serve`` process in a session of its own; ``url`` where it serves (None when it dials out)."""

    process: subprocess.Popen
    log: Path
    url: str | None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_fedsync(log: Path, *args: str, device: dict | None = None, timeout: float = 60.0) -> FedsyncProcess:
    """``fedsync serve tests/support/deploy_device.py:data ARGS`` (this checkout's fedsync), ``device`` its settings.

    A listening device's URL is read from its ``serving URL`` line; with ``--connect`` it is None (wait for the
    listener to see it instead).
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FEDSYNC_DEPLOY_DEVICE=json.dumps(device or {}))
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedsync", "serve", f"{DEVICE_FILE}:data", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
        )  # fmt: skip
    started = FedsyncProcess(process, log, None)
    if "--connect" in args:
        return started
    deadline = time.monotonic() + timeout
    stdout = process.stdout
    assert stdout is not None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = stdout.readline() if ready else ""
            if not line:
                break
            if match := re.match(r"serving (\S+)", line):
                started.url = match.group(1)
                return started
        raise RuntimeError(f"fedsync serve did not start within {timeout} s:\n{started.log_text()}")
    except BaseException:
        started.stop()
        raise
