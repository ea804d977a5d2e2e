"""A simulation's checkpoint keeps its devices' states (SCAFFOLD's c_i, error-feedback residuals), so a resumed
run ends bit-identical to an unbroken one; the devices file is checked like the rest of a checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator import checkpoint
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import CheckpointError
from fedsync.strategies import Scaffold
from tests.support.checkpoint_files import forged, listed
from tests.support.devices.stateful import DIM, N, scaffold_device

TOPK_DIM = 40


def scaffold_run(folder, rounds, **options):
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    history = run_simulation(
        scaffold_device, N, rounds, data=data, devices_per_round=2, seed=3, progress=False, checkpoint=folder, **options
    )
    assert not any(r.failures for r in history), [r.failures for r in history]
    return data, history


def topk_device(i: int) -> FedArrays:
    rng = np.random.default_rng(i)
    x = rng.standard_normal((30, TOPK_DIM)).astype(np.float32)
    y = (x @ np.linspace(-1, 1, TOPK_DIM) + i).astype(np.float32)

    def train(model):
        for _ in range(3):
            model["w"] -= np.float32(0.05) * x.T @ (x @ model["w"] - y) / np.float32(len(x))
        return len(x)

    return FedArrays({"w": np.zeros(TOPK_DIM, np.float32)}, train, updates="stc", top_k=0.1)


def test_a_resumed_scaffold_simulation_ends_bit_identical_to_an_unbroken_one(tmp_path):
    unbroken, _ = scaffold_run(tmp_path / "unbroken", 5)
    scaffold_run(tmp_path / "broken", 2)  # stops after round 2: the checkpoint holds the sampled devices' c_i
    assert (tmp_path / "broken" / "round-000002" / "devices.json").is_file()
    resumed, history = scaffold_run(tmp_path / "broken", 5)
    assert len(history) == 5
    np.testing.assert_array_equal(resumed.model["w"], unbroken.model["w"])
    np.testing.assert_array_equal(resumed.extra_arrays["scaffold.c/w"], unbroken.extra_arrays["scaffold.c/w"])


def test_a_resumed_error_feedback_simulation_ends_bit_identical_to_an_unbroken_one(tmp_path):
    def run(folder, rounds):
        data = FedArrays({"w": np.zeros(TOPK_DIM, np.float32)})
        run_simulation(topk_device, 4, rounds, data=data, seed=1, progress=False, checkpoint=folder)
        return data.model["w"].copy()

    unbroken = run(tmp_path / "unbroken", 4)
    run(tmp_path / "broken", 2)
    np.testing.assert_array_equal(run(tmp_path / "broken", 4), unbroken)


@pytest.mark.slow  # ~4 s: two worker processes, three runs
def test_worker_processes_resume_their_devices_states_too(tmp_path):
    device = "tests.support.devices.stateful:scaffold_device"
    unbroken, _ = scaffold_run(tmp_path / "unbroken", 4)
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    options = {"devices_per_round": 2, "seed": 3, "progress": False, "workers": 2, "worker_kind": "processes"}
    run_simulation(device, N, 2, data=data, checkpoint=tmp_path / "broken", **options)
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    run_simulation(device, N, 4, data=data, checkpoint=tmp_path / "broken", **options)
    np.testing.assert_array_equal(data.model["w"], unbroken.model["w"])






def test_states_are_files_named_by_their_sha256_and_those_no_round_lists_are_removed(tmp_path):
    scaffold_run(tmp_path, 1)
    first = set((tmp_path / "device-states").iterdir())
    assert len(first) == 2  # the 2 devices sampled in round 1
    scaffold_run(tmp_path, 2)
    pointer, path = listed(tmp_path)
    entries = json.loads(path.read_text())
    names = {p.name for p in (tmp_path / "device-states").iterdir()}
    assert names == {digest for _, _, digest in entries}  # nothing unlisted is left
    for _, _, digest in entries:
        assert hashlib.sha256((tmp_path / "device-states" / digest).read_bytes()).hexdigest() == digest


def test_a_changed_state_file_is_refused_and_names_it(tmp_path):
    scaffold_run(tmp_path, 2)
    state = next((tmp_path / "device-states").iterdir())
    raw = bytearray(state.read_bytes())
    raw[-1] ^= 1
    state.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{state.name} does not match the sha256"):
        scaffold_run(tmp_path, 3)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: [["local://device-99", *e[0][1:]]], "not one of this run's devices"),
        (lambda e: e + e[:1], "is there twice"),
        (lambda e: [[e[0][0], e[0][1], "../../etc/passwd"]], "64 lowercase hex digits"),
        (lambda e: [[1, 2, 3]], r"list of \[url, base, sha256\]"),
        (lambda e: {"not": "a list"}, r"list of \[url, base, sha256\]"),
        (lambda e: [[e[0][0], e[0][1], "0" * 64]], "cannot be read"),
    ],
    ids=["unknown-device", "twice", "path", "not-strings", "not-a-list", "missing-file"],
)
def test_a_forged_devices_list_is_refused_before_any_device_is_built(tmp_path, edit, message):
    scaffold_run(tmp_path, 2)
    forged(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        scaffold_run(tmp_path, 3)


def test_a_damaged_state_fails_that_device_by_name_and_the_others_go_on(tmp_path):
    """A state file that matches its name but is no state (written by a forger): its device fails, alone."""
    scaffold_run(tmp_path, 2)
    junk = b"not a state"
    digest = hashlib.sha256(junk).hexdigest()
    (tmp_path / "device-states" / digest).write_bytes(junk)
    entries = forged(tmp_path, lambda e: [[e[0][0], e[0][1], digest], *e[1:]])
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    history = run_simulation(scaffold_device, N, 3, data=data, fraction=1.0, seed=3, progress=False,
                             checkpoint=tmp_path, min_results=1)  # fmt: skip
    assert list(history[2].failures) == [entries[0][0]], history[2].failures
    assert len(history[2].answered) == N - 1


def test_a_state_over_the_limit_is_refused_before_it_is_read(tmp_path):
    scaffold_run(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"is \d+ bytes, over the 10 "):
        checkpoint.load_devices(tmp_path, [f"local://device-{i}" for i in range(N)], each=10)
