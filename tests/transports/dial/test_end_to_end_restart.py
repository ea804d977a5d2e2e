"""The listening side killed (SIGKILL) after a round and restarted on its port (issue #20): the `fedsync serve
--connect` device processes reconnect by themselves, and the run resumes from its checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.cli import read_line
from tests.support.processes import ROOT, rounds_done
from tests.transports.dial.e2e import dial, free_port

pytestmark = pytest.mark.slow

COORDINATOR = """\
import sys
import numpy as np
from fedsync import FedArrays, Federated
from fedsync.transports.dial import Listener

port, folder, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with Listener("127.0.0.1", port, devices={"site-a": "token-a", "site-b": "token-b"}) as listener:
    print("LISTENING", flush=True)
    listener.wait_for(2, timeout=120)
    data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})

    def said(alg, result):
        print(f"ROUND {result.repetition}", flush=True)

    with Federated(data, listener.remotes(), timeout=30, checkpoint=folder) as alg:
        alg.fit(rounds, callbacks=[said], progress=False)
print("DONE", flush=True)
"""


def coordinator(tmp_path, port: int, rounds: int) -> subprocess.Popen:
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR)
    return subprocess.Popen(
        [sys.executable, str(script), str(port), str(tmp_path / "run"), str(rounds)],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_killed_and_restarted_listener_gets_its_devices_back_and_the_run_resumes(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    devices = []
    try:
        first = coordinator(tmp_path, port, 3)
        processes.append(first)
        assert read_line(first.stdout, 60).strip() == "LISTENING"
        devices = [dial(tmp_path, url, "site-a", "token-a", value=1.0), dial(tmp_path, url, "site-b", "token-b", value=3.0)]
        assert read_line(first.stdout, 120).strip() == "ROUND 1"
        first.kill()  # SIGKILL: no close, no goodbye
        first.wait(timeout=10)
        assert rounds_done(tmp_path / "run") == 1
        for device in devices:
            device.wait_log("lost the coordinator", timeout=60)
        second = coordinator(tmp_path, port, 3)
        processes.append(second)
        lines = [read_line(second.stdout, 120).strip() for _ in range(4)]
        assert lines == ["LISTENING", "ROUND 2", "ROUND 3", "DONE"]  # numbering continues from the checkpoint
        assert second.wait(timeout=30) == 0
        for device in devices:
            device.wait_log("reconnected to", timeout=5)  # they came back by themselves, and said so
            assert device.process.poll() is None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        for device in devices:
            device.stop()
    pointer = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    history = json.loads((tmp_path / "run" / pointer["folder"] / "history.json").read_text())
    assert [r["repetition"] for r in history["rounds"]] == [1, 2, 3]
    assert all(r["failures"] == {} for r in history["rounds"][1:])
