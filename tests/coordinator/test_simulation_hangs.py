"""A call that hangs in a simulation is its device's failure at the deadline, and gives its slot back after the round.

Threads cannot be stopped: another thread takes the hung one's slot (with a warning); a worker
process is killed and replaced. Either way the later rounds go on with every honest device.
"""

import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation

HANG_ONCE = "FEDSYNC_TEST_HANG_ONCE"
"""A file; the first device 0 to claim it (by renaming it away) hangs, in a worker process."""

UNBLOCK = threading.Event()  # set at each test's end: a hung thread of this process ends then


@pytest.fixture(autouse=True)
def unblock_hung_threads():
    UNBLOCK.clear()
    yield
    UNBLOCK.set()


def hang() -> None:
    UNBLOCK.wait(120)  # bounded; the test sets it when it ends


def ones(train=None) -> FedArrays:
    def count(model):
        model["w"] += 1.0
        return 1

    return FedArrays({"w": np.zeros(2)}, train or count)


def hangs_in_train_0(device_id: int) -> FedArrays:
    """Device 0's training hangs (every round); the others train at once."""

    def train(model):
        if device_id == 0:
            hang()
        model["w"] += 1.0
        return 1

    return ones(train)


def hangs_building_0(device_id: int) -> FedArrays:
    """device_fn(0) hangs; the others are built at once."""
    if device_id == 0:
        hang()
    return ones()


def hangs_once_in_a_worker(device_id: int) -> FedArrays:
    """Device 0's first training hangs for good (the worker process must be killed); later ones train."""

    def train(model):
        flag = os.environ[HANG_ONCE]
        if device_id == 0:
            try:
                os.rename(flag, flag + ".claimed")
            except FileNotFoundError:
                pass
            else:
                time.sleep(3600)
        model["w"] += 1.0
        return 1

    return ones(train)


def simulate(device_fn, *, rounds=3, **options):
    """run_simulation on a thread of its own, so that a stalled run fails the test instead of hanging it."""
    outcome: dict = {}

    def run():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outcome["history"] = run_simulation(
                    device_fn,
                    options.pop("devices", 3),
                    rounds,
                    data=FedArrays({"w": np.zeros(2)}),
                    min_results=1,
                    progress=False,
                    **options,
                )
            outcome["warnings"] = [str(w.message) for w in caught]
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "run_simulation stalled for good behind a hung call"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["history"], outcome["warnings"]


@pytest.mark.slow  # waits out a round's deadline per round
def test_a_training_that_hangs_every_round_costs_its_device_alone_on_threads():
    # 2 threads: a hung training used to keep its thread, so round 2 had none left for the honest devices.
    history, warned = simulate(hangs_in_train_0, workers=2, timeout=1.5)
    assert len(history) == 3
    for result in history:
        assert sorted(result.answered) == ["local://device-1", "local://device-2"]
        assert set(result.failures) == {"local://device-0"}
    assert any("local://device-0's training or evaluation still runs after its round" in w for w in warned), warned


@pytest.mark.slow
def test_a_device_fn_that_hangs_does_not_stall_the_run_on_threads():
    history, warned = simulate(hangs_building_0, workers=2, timeout=1.5)
    assert len(history) == 3 and all(set(r.failures) == {"local://device-0"} for r in history)
    assert all(len(r.answered) == 2 for r in history)
    # Later rounds refuse to call it again (one hung thread, not one per round), and say why.
    assert "device_fn(0) has not returned since it was called" in history[-1].failures["local://device-0"]
    assert any("device_fn has not returned after its round" in w for w in warned), warned


@pytest.mark.slow  # starts worker processes and waits out a deadline
def test_a_worker_whose_training_hangs_is_killed_and_replaced(tmp_path, monkeypatch):
    flag = tmp_path / "hang-once"
    flag.write_text("")
    monkeypatch.setenv(HANG_ONCE, str(flag))
    name = f"{__name__}:hangs_once_in_a_worker"
    history, _ = simulate(name, devices=2, workers=2, timeout=3.0, worker_kind="processes")
    assert Path(str(flag) + ".claimed").exists()
    assert set(history[0].failures) == {"local://device-0"}
    # Round 2 places device 0 on a worker again: the hung one used to be kept, so device 0 failed every round.
    for result in history[1:]:
        assert sorted(result.answered) == ["local://device-0", "local://device-1"], result.failures


def test_a_replaced_thread_is_bounded_and_warns():
    from fedsync.transports.process._hung import ReplaceableExecutor

    executor = ReplaceableExecutor(1, max_replaced=1)
    owner = object()
    started = threading.Event()

    class Job:
        def run(self):
            started.set()
            hang()

    job = Job()
    executor.submit(job.run)
    assert started.wait(10)
    with pytest.warns(RuntimeWarning, match="another thread takes its training slot"):
        assert executor.replace({id(job)}, "job") == 1
    assert executor.submit(lambda: 7).result(timeout=10) == 7  # the replacement runs the next call
    second = Job()
    started.clear()
    executor.submit(second.run)
    assert started.wait(10)
    with pytest.warns(RuntimeWarning, match="replaced already"):
        assert executor.replace({id(second)}, "job") == 0  # past the bound: no thread more
    assert executor.replace({id(owner)}, "nothing") == 0
    executor.shutdown()
