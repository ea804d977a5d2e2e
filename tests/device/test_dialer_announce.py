"""A script's ``fedsync.serve(...)`` says where it serves or dials, even with logging not set up (issue #22, Kind 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.cli import read_line
from tests.support.dial_coordinator import DialCoordinator
from tests.support.processes import ROOT

SCRIPT = """\
import sys, numpy as np, fedsync
data = fedsync.FedArrays({"w": np.zeros(3, np.float32)}, lambda model: 1)
if sys.argv[1:]:
    fedsync.serve(data, connect=sys.argv[1], name="site-a", token="token-a")
else:
    fedsync.serve(data, port=0)
"""


def run_script(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def stop(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=10)
    return out, err


@pytest.mark.slow
@pytest.mark.parametrize("dial", [False, True], ids=["listening", "dialing"])
def test_serve_from_a_script_prints_where_it_serves_on_stderr(dial):
    with DialCoordinator({"site-a": "token-a"}, wait=1) as coordinator:
        process = run_script(*([coordinator.url] if dial else []))
        try:
            line = read_line(process.stderr)
            if dial:
                # The warning about plain HTTP comes first (a WARNING reaches stderr without any setup).
                assert "without TLS" in line
                line = read_line(process.stderr)
                assert line == f"fedsync device dialing {coordinator.url} as site-a (Ctrl-C stops)\n"
                coordinator.wait_registered("site-a", timeout=30)
            else:
                assert line.startswith("fedsync device serving on http://127.0.0.1:") and "(Ctrl-C stops)" in line
        finally:
            out, err = stop(process)
        assert out == ""  # stdout stays the script's own
        assert process.returncode == 0 and "Traceback" not in err, err  # Ctrl-C stops it quietly
