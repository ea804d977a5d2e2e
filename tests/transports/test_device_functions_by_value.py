"""A device function from a notebook on worker processes: a lambda, a closure, ``__main__``, a script from stdin.

Such a function travels by value (cloudpickle) from the coordinator to the worker processes it starts, and
only in that direction: what a worker sends back is still frames, refused when it is anything else.
"""

import os
import pickle
import sys
import threading

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.simulation import run_simulation
from fedsync.transports import device_functions
from fedsync.transports.process.pool import ProcessPool, process_remotes
from tests.support.devices.basic import linreg
from tests.support.devices.by_value import adding, run_script
from tests.support.devices.sim import linreg_device


def linreg_model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


@pytest.mark.slow  # ~0.9 s: keeps the fast tier under 90 s
def test_a_lambda_runs_on_processes_and_merges_what_the_function_by_name_merges():
    models = []
    for device_fn in (linreg_device, lambda i: linreg(i, 40)):
        run_simulation(device_fn, 4, 1, data=(data := linreg_model()), fraction=0.5, seed=3, workers=2,
                       worker_kind="processes", progress=False)  # fmt: skip
        models.append(data.get_arrays())
    assert not np.allclose(models[0]["w"], 0.0)  # trained
    for name in ("w", "b"):
        np.testing.assert_array_equal(models[1][name], models[0][name])


def test_a_closure_capturing_data_runs_on_processes_with_that_data():
    captured = np.array([1.0, -2.0, 0.5])

    def device_fn(device_id):
        return adding(captured, device_id)

    history = run_simulation(device_fn, 4, 1, data=(data := FedArrays({"w": np.zeros(3)})), workers=2,
                             worker_kind="processes", progress=False)  # fmt: skip
    assert sorted(history[0].answered) == [f"local://device-{i}" for i in range(4)] and not history[0].failures
    np.testing.assert_allclose(data.get_arrays()["w"], captured * 2.5)  # the mean of 1, 2, 3, 4


def test_a_function_by_name_is_not_pickled_and_one_without_a_name_is():
    by_name = device_functions.ship(linreg_device)
    assert by_name.pickled is None and (by_name.module, by_name.name) == ("tests.support.devices.sim", "linreg_device")
    assert device_functions.ship("tests.support.devices.sim:linreg_device").pickled is None
    by_value = device_functions.ship(lambda i: linreg(i, 40))
    assert (
        by_value.module is None
        and by_value.path is None
        and by_value.name == ("test_a_function_by_name_is_not_pickled_and_one_without_a_name_is.<locals>.<lambda>")
    )
    assert callable(device_functions.unpickle(by_value.pickled or b""))


def test_a_function_capturing_what_cannot_travel_is_refused_before_any_process_starts():
    lock = threading.Lock()

    def device_fn(device_id):
        with lock:
            return adding(np.ones(2), device_id)

    with pytest.raises(TypeError, match="cannot serialize it.*lock.*create that inside device_fn"):
        ProcessPool(device_fn, 1)


def test_without_cloudpickle_a_lambda_is_refused_naming_the_pip_command_and_a_function_by_name_still_runs(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ImportError, match=r"travels to the workers by value.*pip install 'fedsync\[sim\]'"):
        run_simulation(lambda i: linreg(i, 40), 2, 1, data=linreg_model(), workers=1, worker_kind="processes",
                       progress=False)  # fmt: skip
    history = run_simulation(linreg_device, 2, 1, data=linreg_model(), workers=1, worker_kind="processes",
                             progress=False)  # fmt: skip
    assert len(history[0].answered) == 2


def _writes_to_the_coordinator(what: bytes, device_id: int) -> FedArrays:
    """In a worker, device 0 writes ``what`` on the pipe to the coordinator, in place of frames (user code gone
    rogue); the others are honest."""
    import gc

    if device_id != 0:
        return adding(np.ones(2), device_id)
    worker = next(o for o in gc.get_objects() if type(o).__name__ == "_Worker")
    with worker.write_lock:
        worker.out.write(what)
        worker.out.flush()
    return adding(np.ones(2), device_id)


class _Planted:
    """Unpickling it creates the directory ``path``: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.slow  # ~1.2 s: keeps the fast tier under 90 s
@pytest.mark.parametrize("shape", ["a bare pickle", "a frame whose header is a pickle"])
def test_a_worker_that_sends_back_a_pickle_instead_of_frames_fails_its_device_alone_and_nothing_is_unpickled(
    tmp_path, shape
):
    planted = tmp_path / "unpickled"
    evil = pickle.dumps(_Planted(str(planted)))
    if shape != "a bare pickle":
        evil = len(evil).to_bytes(4, "big") + (0).to_bytes(8, "big") + evil  # a frame's prefix, then the pickle
    with ProcessPool(lambda i: _writes_to_the_coordinator(evil, i), 2) as pool:  # a worker each
        remotes = process_remotes(pool, 2, timeout=60)
        result = Federated(FedArrays({"w": np.zeros(2)}), remotes, min_results=1).round()
        for remote in remotes:
            remote.release()
    assert result.answered == ["local://device-1"]
    assert "sent a malformed frame" in result.failures["local://device-0"]
    assert not planted.exists()


@pytest.mark.slow  # a fresh interpreter that starts its own worker processes
@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_function_of_a_script_run_as_main_or_read_from_stdin_runs_on_processes(tmp_path, how):
    assert run_script(tmp_path, how, "processes") == '{"answered": 3, "w": [2.0, 4.0]}'
