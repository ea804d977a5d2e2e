"""A reply that trickles just faster than the stall limit is its own device's failure: the honest replies merge.

The merge reads replies one at a time. A device that sends half its reply at once, then a
byte every 0.5 s (under ``transfer.STALL``), was read on through the round's deadline and
grace period while the honest replies, ready in time, waited for the merge; they were then
dropped as late and the round failed. Each reply the merge reaches past the deadline now has
its own short window (``fedsync.coordinator._round.ReplyDeadline``). Real device processes,
real HTTP; the trickler is ``tests/support/hostile.py``'s ``drip`` scenario.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.strategies import FedAvg, FedMedian, FedTrimmedAvg, Krum
from tests.support.processes import ROOT, DeviceProcess, stop_all


@pytest.fixture
def spawn():
    """``spawn("hostile", scenario, {options})``: a misbehaving device process (tests/support/hostile.py)."""
    started: list[DeviceProcess] = []

    def start(command: str, scenario: str, options: dict) -> DeviceProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        args = [sys.executable, "-m", "tests.support.run_hostile", command, scenario, json.dumps(options)]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True)
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        device = DeviceProcess(process, line.split()[1] if line.startswith("READY ") else "")
        started.append(device)
        if not device.url:
            raise RuntimeError(f"{command} {scenario} did not start (exit code {process.poll()})")
        return device

    yield start
    stop_all(started)


def honest(value: float, samples: int, delay: float) -> FedArrays:
    """The hostile device's declaration, for a device process: training takes ``delay`` s, sets weights to ``value``."""

    def train(model):
        time.sleep(delay)
        for array in model.values():
            array[...] = value
        return samples, {"loss": value}

    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, train)


def honest_float(value: float, delay: float):
    """A FedFloat device (whole replies, no streams) whose training takes ``delay`` s and answers ``value``."""
    from tests.support.seed_fedfloat import FedFloat

    class Slow(FedFloat):
        def receive(self, encoding, repetition):
            time.sleep(delay)
            self.value = value

    return Slow(value)


def declaration(strategy) -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, strategy=strategy)


@pytest.mark.slow  # each case waits out a 4 s deadline and its grace: the full suite runs it
@pytest.mark.parametrize("strategy", [FedAvg, FedMedian, FedTrimmedAvg, lambda: Krum(num_malicious_clients=0)])
def test_a_trickling_reply_cannot_make_the_honest_replies_late(devices, spawn, strategy):
    # Honest devices answer 1 s in: the trickler's reply reaches the merge first and holds it.
    good = [devices("tests.coordinator.test_trickling_reply:honest", 2.0, 10, 1.0) for _ in range(3)]
    trickler = spawn("hostile", "drip", {"value": 9.0, "every": 0.5, "half_at_once": True})
    data = declaration(strategy())
    started = time.monotonic()
    with Federated(data, [trickler.url, *(d.url for d in good)], min_results=1, timeout=4) as alg:
        result = alg.round()
    elapsed = time.monotonic() - started
    assert sorted(result.answered) == sorted(d.url for d in good), result.failures
    assert list(result.failures) == [trickler.url]
    assert "late" in result.failures[trickler.url] or "stopped arriving" in result.failures[trickler.url]
    assert np.all(data.model["w"] == 2.0) and np.all(data.model["b"] == 2.0)
    # Bounded: the deadline, its 0.4 s grace, and a short window per honest reply (generous for a loaded machine).
    assert elapsed < 4 + 0.4 + 3 * 1.0 + 5


@pytest.mark.slow  # waits out a 3 s deadline and its grace: the full suite runs it
def test_whole_replies_downloaded_one_at_a_time_are_not_made_late_either(devices, spawn):
    from tests.support.seed_fedfloat import FedFloat

    # downloads=1: one whole reply downloads at a time, so the trickler's download holds the others'.
    good = [devices("tests.coordinator.test_trickling_reply:honest_float", 2.0, 1.0) for _ in range(2)]
    trickler = spawn(
        "hostile", "drip", {"kind": "fedfloat", "value": 9.000000000000002, "every": 0.5, "half_at_once": True}
    )
    data = FedFloat(0.0)
    with Federated(data, [trickler.url, *(d.url for d in good)], min_results=1, timeout=3, downloads=1) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted(d.url for d in good), result.failures
    assert list(result.failures) == [trickler.url]
    assert data.value == 2.0
