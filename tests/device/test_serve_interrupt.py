"""``serve(block=True)`` and ``fedsync serve`` stop cleanly on Ctrl-C (SIGINT to a real device process)."""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]

BLOCKING = """\
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
import fedsync
from tests.support.seed_fedfloat import FedFloat
import socket
port = int(sys.argv[1])
returned = fedsync.serve(FedFloat(1.0), port=port)
with socket.socket() as again:  # still in this process: serve gave the port back before it returned
    again.bind(("127.0.0.1", port))
print("serve returned", returned, "and port", port, "binds again", flush=True)
"""


def start(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """A process started with ``argv`` and the URL it announced on stdout or stderr (bounded wait)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout, process.stderr], [], [], 1)
        for stream in ready:
            seen += stream.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", seen)
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the device announced no URL: {seen!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def interrupt(process: subprocess.Popen, url: str) -> tuple[str, str]:
    assert requests.get(f"{url}/info", timeout=10).json()["specs"] == "Float"  # serving, with a connection kept open
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=30)


def test_serve_block_true_returns_on_ctrl_c_saying_so_and_frees_the_port(tmp_path):
    port = free_port()
    process, url = start([sys.executable, "-c", BLOCKING, str(port)], tmp_path)
    out, err = interrupt(process, url)
    assert process.returncode == 0, err
    assert f"serve returned None and port {port} binds again" in out
    assert f"fedsync device stopped (Ctrl-C); port {port} released" in err
    assert "Traceback" not in err


@pytest.mark.slow  # the fast tier's budget is tight; the CLI's SIGTERM stop runs there (test_cli)
def test_fedsync_serve_exits_0_on_ctrl_c_without_a_traceback(tmp_path):
    (tmp_path / "device.py").write_text("from tests.support.seed_fedfloat import FedFloat\ndata = FedFloat(1.0)\n")
    process, url = start([sys.executable, "-m", "fedsync", "serve", "device.py:data", "--port", "0"], tmp_path)
    out, err = interrupt(process, url)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
