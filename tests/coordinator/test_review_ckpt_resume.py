"""Review of resumed simulations with their devices' states (commit 6c229a6): FedNova with sampling, error
feedback on worker processes, the largest legitimate state (local layers, residuals, a download's view,
``state=``), a device whose state layout changed, and the readers of such a folder (replay, dashboard)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.replay import read_run
from fedsync.coordinator.simulation import run_simulation
from fedsync.dashboard.app import FolderRun
from fedsync.strategies import FedNova, Scaffold
from tests.support.devices.stateful import DIM, N, fednova_device, scaffold_device

TOPK = "tests.coordinator.test_checkpoint_device_states:topk_device"


def test_a_resumed_fednova_run_with_sampling_ends_bit_identical(tmp_path):
    def run(folder, rounds):
        data = FedArrays({"w": np.zeros(DIM)}, strategy=FedNova())
        run_simulation(fednova_device, N, rounds, data=data, devices_per_round=3, seed=5, progress=False,
                       checkpoint=folder)  # fmt: skip
        return data.model["w"].copy()

    unbroken = run(tmp_path / "unbroken", 4)
    run(tmp_path / "broken", 2)
    np.testing.assert_array_equal(run(tmp_path / "broken", 4), unbroken)


@pytest.mark.slow  # ~5 s: worker processes, three runs
def test_error_feedback_on_worker_processes_resumes_bit_identical(tmp_path):
    def run(folder, rounds):
        data = FedArrays({"w": np.zeros(40, np.float32)})
        run_simulation(TOPK, 4, rounds, data=data, devices_per_round=2, seed=1, progress=False, checkpoint=folder,
                       workers=2, worker_kind="processes")  # fmt: skip
        return data.model["w"].copy()

    unbroken = run(tmp_path / "unbroken", 4)
    run(tmp_path / "broken", 2)
    assert json.loads((tmp_path / "broken" / "checkpoint.json").read_text()).get("devices_sha256")
    np.testing.assert_array_equal(run(tmp_path / "broken", 4), unbroken)


def rich_device(i: int) -> FedArrays:
    """A device keeping every kind of state: a local head, an STC residual, a download's view, its own array."""
    rng = np.random.default_rng(i)
    x = rng.standard_normal((20, 8)).astype(np.float32)

    def train(model):
        model["w"] -= np.float32(0.1) * x.T @ (x @ model["w"] - 1) / np.float32(len(x))
        model["head"] += np.float32(i)
        fed.state["seen"] += 1
        return len(x)

    fed = FedArrays({"w": np.zeros(8, np.float32), "head": np.zeros((64, 8), np.float32)}, train,
                    shared={"include": ["w"]}, updates="stc", top_k=0.25,
                    state={"seen": np.zeros(16, np.float32)})  # fmt: skip
    return fed


def test_the_largest_legitimate_device_state_is_within_the_resume_bound(tmp_path):
    """Local layers, residuals, a view and state= all saved and restored: the bound refuses none of them."""

    def run(rounds):
        data = FedArrays({"w": np.zeros(8, np.float32), "head": np.zeros((64, 8), np.float32)},
                         shared={"include": ["w"]}, download="delta")  # fmt: skip
        return run_simulation(rich_device, 3, rounds, data=data, seed=2, progress=False, checkpoint=tmp_path)

    run(2)
    history = run(4)
    assert len(history) == 4 and not any(r.failures for r in history), [r.failures for r in history]
    entries = json.loads((tmp_path / "round-000004" / "devices.json").read_text())
    assert len(entries) == 3


def test_a_device_whose_state_layout_changed_between_runs_fails_by_name_and_the_others_go_on(tmp_path):
    def data():
        return FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))

    run_simulation(scaffold_device, N, 2, data=data(), fraction=1.0, seed=3, progress=False, checkpoint=tmp_path)

    def changed(i):
        fed = scaffold_device(i)
        if i == 0:  # this device's code now keeps another array too
            fed.state["extra"] = np.zeros(3)
        return fed

    history = run_simulation(changed, N, 3, data=data(), fraction=1.0, seed=3, progress=False, checkpoint=tmp_path,
                             min_results=1)  # fmt: skip
    assert list(history[2].failures) == ["local://device-0"], history[2].failures
    assert len(history[2].answered) == N - 1


def test_replay_and_the_dashboard_read_a_folder_with_device_states(tmp_path):
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    run_simulation(scaffold_device, N, 2, data=data, devices_per_round=2, seed=3, progress=False, checkpoint=tmp_path)
    assert (tmp_path / "device-states").is_dir()
    assert [r.repetition for r in read_run(tmp_path)] == [1, 2]
    assert len(FolderRun(tmp_path).snapshot().rounds) == 2
