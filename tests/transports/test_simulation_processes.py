"""run_simulation(worker_kind="processes"): devices on worker processes, over pipes, without pickle."""

import io
import json
import os

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.transports.process._frames import FrameError, frame_head, read_frame
from fedsync.errors import RemoteError
from fedsync.transports.process.pool import ProcessPool, _checked_answer, process_remotes
from fedsync.coordinator.simulation import run_simulation
from tests.support.devices.sim import TRACE, killed_on_3, linreg_device, pure_python


def linreg_model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_a_pure_python_training_runs_on_several_processes_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACE, str(tmp_path))
    history = run_simulation(pure_python, 4, 1, data=FedArrays({"w": np.zeros(3)}), workers=2, worker_kind="processes", progress=False)
    assert sorted(history[0].answered) == [f"local://device-{i}" for i in range(4)]
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    pids = {run["pid"] for run in runs}
    assert len(runs) == 4 and len(pids) == 2 and os.getpid() not in pids
    # Trainings of different processes overlapped: the GIL of one process did not serialize them.
    assert any(a["pid"] != b["pid"] and a["start"] < b["end"] and b["start"] < a["end"] for a in runs for b in runs)


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_processes_give_the_same_model_as_threads_for_the_same_seed():
    models = {}
    for kind in ("threads", "processes"):
        run_simulation(linreg_device, 12, 3, data=(data := linreg_model()), fraction=0.5, seed=7, workers=2, worker_kind=kind, progress=False)
        models[kind] = data.get_arrays()
    for name in ("w", "b"):
        np.testing.assert_allclose(models["processes"][name], models["threads"][name], rtol=1e-12)
    assert abs(models["processes"]["w"][0, 0] - 2.0) < 0.5  # trained, toward the ground truth


@pytest.mark.slow  # a few seconds of real waiting: the full suite runs it (fast tier: 90 s budget)
def test_a_killed_worker_is_its_devices_failure_and_is_replaced():
    with ProcessPool(killed_on_3, 2) as pool:
        remotes = process_remotes(pool, 6, timeout=60)
        alg = Federated(FedArrays({"w": np.zeros(3)}), remotes, min_results=1)
        for _ in range(2):
            before = pool.pids
            result = alg.round()
            for remote in remotes:
                remote.release()
            assert "local://device-3" in result.failures
            assert "killed by SIGKILL" in result.failures["local://device-3"]
            assert all("worker process" in why for why in result.failures.values())
            assert result.answered and not set(result.answered) & set(result.failures)
            pool.unplace(pool.place())  # placing the next device replaces the dead worker
            after = pool.pids
            assert len(set(before) - set(after)) == 1  # exactly the dead worker was replaced


def test_a_device_fn_given_by_name_must_name_an_importable_function():
    # A lambda runs (sent by value): tests/transports/test_device_functions_by_value.py.
    data = FedArrays({"w": np.zeros(3)})
    with pytest.raises(ImportError, match="no_such_module"):
        run_simulation("tests.no_such_module:device_fn", 2, 1, data=data, workers=1, worker_kind="processes", progress=False)
    with pytest.raises(ValueError, match="module:function"):
        run_simulation("device_fn", 2, 1, data=data, worker_kind="processes", progress=False)
    with pytest.raises(ValueError, match="worker_kind"):
        run_simulation(linreg_device, 2, 1, data=data, worker_kind="fork", progress=False)


def test_frames_and_answers_from_a_worker_are_checked_before_use():
    with pytest.raises(FrameError, match="above the limit"):
        read_frame(io.BytesIO(frame_head({"id": 1}, 10**9)), max_body=1024)
    with pytest.raises(FrameError, match="ended inside"):
        read_frame(io.BytesIO(frame_head({"id": 1}, 100) + b"short"), max_body=1024)
    with pytest.raises(FrameError, match="JSON object"):
        read_frame(io.BytesIO(frame_head([1], 0)), max_body=1024)  # type: ignore[arg-type]
    assert read_frame(io.BytesIO(b""), max_body=1) is None
    with pytest.raises(RemoteError, match="status"):
        _checked_answer("local://d", {"status": "200", "headers": []}, b"")
    with pytest.raises(RemoteError, match="headers"):
        _checked_answer("local://d", {"status": 200, "headers": [["a", 1]]}, b"")
    assert _checked_answer("local://d", {"status": 202, "headers": [["A", "b"]]}, b"x") == (202, [("A", "b")], b"x")


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """The worker loads the script to find device_fn; a top-level run_simulation must say what to do."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import numpy as np\n"
        "from fedsync import FedArrays\n"
        "from fedsync.coordinator.simulation import run_simulation\n"
        "def device_fn(i):\n"
        "    return FedArrays({'w': np.zeros(2)}, lambda m: 1)\n"
        "run_simulation(device_fn, 2, 1, data=FedArrays({'w': np.zeros(2)}), workers=1, worker_kind='processes', progress=False)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert 'put the script\'s work under `if __name__ == "__main__":`' in done.stderr, done.stderr[-2000:]
