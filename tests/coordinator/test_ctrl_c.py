"""Ctrl-C on a coordinator mid-round: one line saying what is saved and how to resume, no traceback, resumable.

A real coordinator process runs rounds against a real device process whose second
training waits for the test (a file it creates), and gets a real SIGINT while that
round is under way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays
from tests.support.processes import ROOT, rounds_done

COORDINATOR = """\
import json, logging, signal, sys
import numpy as np
from fedsync import FedArrays, Federated
folder, rounds, level, url = sys.argv[1:]
logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
data = FedArrays({"w": np.zeros(4, np.float32)})
with Federated(data, [url], checkpoint=folder or None, timeout=60, poll=1.0) as alg:
    if rounds == "catch":  # a script that catches Ctrl-C and goes on
        try:
            alg.round()
        except KeyboardInterrupt as exc:
            print("caught:", exc, flush=True)
        print("handler restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
    else:
        alg.fit(int(rounds), progress=False)
    print(json.dumps({"rounds": len(alg.history), "w": data.model["w"].tolist()}), flush=True)
"""


def gated(gate: str, wait_on: int) -> FedArrays:
    """Training number ``wait_on`` waits (at most 60 s) until the file ``gate`` exists; each sets w to 1."""
    calls = {"n": 0}

    def train(model):
        calls["n"] += 1
        if calls["n"] == wait_on:
            for _ in range(600):
                if Path(gate).exists():
                    break
                time.sleep(0.1)
        model["w"][...] = 1.0
        return 1

    return FedArrays({"w": np.zeros(4, np.float32)}, train)


def coordinator(folder: str, rounds: str, level: str, url: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, folder, rounds, level, url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, what: str, limit: float = 60.0) -> None:
    """Poll ``condition()`` every 0.1 s, at most ``limit`` seconds."""
    for _ in range(int(limit * 10)):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def training(url: str) -> bool:
    """The device is working on a round (its status page says so)."""
    import requests

    return requests.get(f"{url}/info", timeout=10).json().get("repetition", 0) >= 2


@pytest.mark.slow  # two coordinator processes and a device process
def test_ctrl_c_mid_round_prints_one_line_and_the_checkpoint_resumes(devices, tmp_path):
    gate = tmp_path / "gate"
    device = devices("tests.coordinator.test_ctrl_c:gated", str(gate), 2)
    folder = tmp_path / "run"
    process = coordinator(str(folder), "3", "WARNING", device.url)
    try:
        wait_until(lambda: rounds_done(folder) == 1, "round 1 saved")
        wait_until(lambda: training(device.url), "round 2 under way on the device")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGINT, err  # as any uncaught Ctrl-C: scripts still stop
    assert "Traceback" not in err and "release unlocked lock" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsync: stopped by Ctrl-C during round 2 of 3; ")
    assert f"{folder} holds 1 merged round: run the same code again to resume from it" in lines[0]
    assert out == "" and rounds_done(folder) == 1  # the checkpoint still holds round 1, whole

    gate.touch()  # the device finishes the stopped round; the resumed run continues above it
    resumed = coordinator(str(folder), "3", "INFO", device.url)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"rounds": 3, "w": [1.0] * 4}
    assert "resumed from" in err and "1 rounds done" in err
    # The device accepted repetition 2 before Ctrl-C: people's round 2 is repetition 3, said once, in parentheses.
    assert "round 2 (repetition 3): 1 device(s), 0 failed" in err, err
    assert "round 3 (repetition 4): 1 device(s)" in err, err


@pytest.mark.slow  # a coordinator process and a device process
def test_a_script_that_catches_ctrl_c_goes_on_with_its_handler_back(devices, tmp_path):
    gate = tmp_path / "gate"
    device = devices("tests.coordinator.test_ctrl_c:gated", str(gate), 1)
    process = coordinator("", "catch", "WARNING", device.url)
    try:
        wait_until(lambda: device_busy(device.url), "round 1 under way on the device")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)  # the device is still training: round 1 cannot merge
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    caught, restored, final = out.splitlines()
    assert caught.startswith("caught: fedsync: stopped by Ctrl-C during round 1; the model holds 0 merged rounds")
    assert "pass Federated(..., checkpoint=FOLDER) to make a run resumable" in caught
    assert restored == "handler restored: True"
    assert json.loads(final) == {"rounds": 0, "w": [0.0] * 4}  # nothing merged: the model is unchanged


def device_busy(url: str) -> bool:
    import requests

    return requests.get(f"{url}/info", timeout=10).json().get("repetition", 0) >= 1
