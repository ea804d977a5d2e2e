"""run_simulation: many in-process devices on the production round; failures per device; bounded memory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, FedAvg, History
from fedsync.errors import RoundFailed
from fedsync.coordinator.simulation import local_remotes, run_simulation
from tests.support.devices.basic import constant, linreg

ROOT = Path(__file__).resolve().parents[2]


def model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


def test_a_simulation_trains_and_returns_the_history():
    history = run_simulation(lambda i: linreg(i, 40), 20, 4, data=(data := model()), fraction=0.5, seed=3, workers=2, progress=False)
    assert isinstance(history, History) and len(history) == 4
    assert all(len(r.answered) == 10 for r in history)
    assert history[-1].metrics["mse"] < history[0].metrics["mse"]
    assert abs(data.get_arrays()["w"][0, 0] - 2.0) < 0.5  # the ground truth is 2.0


def test_a_raising_device_fn_is_that_devices_failure():
    def device_fn(i):
        if i == 3:
            raise OSError("partition 3 is missing")
        return constant(1.0, 10)

    history = run_simulation(device_fn, 5, 2, data=FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}),
                             min_results=4, workers=2, progress=False)
    first = history[0]
    assert sorted(first.answered) == [f"local://device-{i}" for i in (0, 1, 2, 4)]
    assert set(first.failures) == {"local://device-3"}
    assert "device_fn raised OSError: partition 3 is missing" in first.failures["local://device-3"]


def test_a_training_that_raises_is_that_devices_failure_and_too_many_fail_the_round():
    with pytest.raises(RoundFailed) as caught:
        run_simulation(lambda i: FedArrays({"w": np.zeros(2)}, train=lambda m: 1 / 0), 3, 1, data=FedArrays({"w": np.zeros(2)}), workers=2, progress=False)
    assert set(caught.value.failures) == {f"local://device-{i}" for i in range(3)}
    assert all("ZeroDivisionError" in why for why in caught.value.failures.values())


def test_strategy_and_bad_arguments():
    data = model()
    run_simulation(lambda i: linreg(i, 20), 2, 1, data=data, strategy=(strategy := FedAvg()), progress=False)
    assert data.strategy is strategy
    with pytest.raises(ValueError, match="num_devices"):
        local_remotes(lambda i: None, 0)
    with pytest.raises(TypeError, match="device_fn"):
        local_remotes(None, 3)


MEMORY = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from fedsync import FedArrays
    from fedsync.coordinator.simulation import run_simulation

    PARTITION = 2 * 1024 * 1024  # bytes of data each device holds while it exists

    def device_fn(i):
        data = np.full(PARTITION // 8, float(i))  # pages touched: counted in RSS
        def train(model):
            model["w"] += data[:3].mean() * 1e-9
            return 10
        return FedArrays({"w": np.zeros(3)}, train)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_simulation(device_fn, 1000, 8, data=FedArrays({"w": np.zeros(3)}), fraction=0.01, seed=0, workers=2, progress=False)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"grown_kib": grown, "before": before}))
    """
)


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_a_thousand_devices_keep_only_the_sampled_ones_in_memory():
    out = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=120, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    grown = json.loads(out.stdout.splitlines()[-1])["grown_kib"]
    # 8 rounds x 10 sampled devices x 2 MiB = 160 MiB if devices were kept; 10 at a time is 20 MiB,
    # plus the allocator's per-thread arenas (about 15 MiB measured).
    assert grown < 64 * 1024, f"RSS grew by {grown / 1024:.0f} MiB over 8 rounds of 10 sampled devices of 2 MiB each"


def test_the_pool_size_is_what_was_asked_and_bounds_concurrent_training():
    import threading
    import time

    from fedsync.transports.local import TrainingPool

    assert TrainingPool(3).workers == 3
    with pytest.raises(ValueError, match="workers"):
        TrainingPool(0)
    lock, running, most = threading.Lock(), [0], [0]

    def train(model):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return 1

    run_simulation(lambda i: FedArrays({"w": np.zeros(2)}, train), 8, 1, data=FedArrays({"w": np.zeros(2)}), workers=2, progress=False)
    assert most[0] == 2
