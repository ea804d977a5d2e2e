"""A hostile review of the devices' states saved with a simulation's checkpoint (commit 6c229a6): a forged or
crashed folder, two saves into one folder, a hung device, and the readers of such a folder."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator import checkpoint
from fedsync.coordinator.history import History, RoundResult
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import CheckpointError
from fedsync.strategies import Scaffold
from tests.support.checkpoint_files import forged
from tests.support.devices.stateful import DIM, N, scaffold_device


def scaffold_run(folder, rounds, device_fn=scaffold_device, **options):
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    options = {"devices_per_round": 2, "seed": 3, "progress": False, **options}
    history = run_simulation(device_fn, N, rounds, data=data, checkpoint=folder, **options)
    return data, history




def planted(folder, raw):
    """A file of ``raw`` in device-states, named by its sha256 (so it passes the checksum)."""
    digest = hashlib.sha256(raw).hexdigest()
    (folder / "device-states" / digest).write_bytes(raw)
    return digest


def test_a_state_file_far_larger_than_the_runs_model_is_refused_before_it_is_read(tmp_path):
    """A 5-float model's device state is a few hundred bytes; a 3 MiB file is no state of this run."""
    scaffold_run(tmp_path, 2)
    digest = planted(tmp_path, b"\0" * (3 << 20))
    forged(tmp_path, lambda e: [[e[0][0], e[0][1], digest], *e[1:]])
    with pytest.raises(CheckpointError, match=r"over the \d+ bytes"):
        scaffold_run(tmp_path, 3)


def test_one_file_listed_under_many_bases_of_a_device_cannot_multiply_memory(tmp_path):
    """Memory stays in proportion to the files: a device's states, all bases together, are bounded."""
    scaffold_run(tmp_path, 2)
    digest = planted(tmp_path, b"\1" * (40 << 10))
    forged(tmp_path, lambda e: [*e, *([e[0][0], f"/b{k}", digest] for k in range(200))])  # 200 x 40 KiB: 8 MiB
    with pytest.raises(CheckpointError, match=r"local://device-\d+'s states take \d+ bytes"):
        scaffold_run(tmp_path, 3)


def _hanging_once(gate: threading.Event, built: list[int]):
    def device_fn(i):
        built.append(i)
        if i == 0 and built.count(0) == 2:  # device 0's second round: device_fn hangs past the deadline
            gate.wait(30)
        return scaffold_device(i)

    return device_fn


@pytest.mark.slow  # waits out a 1.5 s round deadline
def test_a_device_whose_device_fn_hung_keeps_its_state_in_the_checkpoint(tmp_path):
    gate, built = threading.Event(), []
    saved: dict[int, str] = {}

    def after(federated, result):
        pointer = json.loads((tmp_path / "checkpoint.json").read_text())
        entries = json.loads((tmp_path / pointer["folder"] / "devices.json").read_text())
        saved[result.repetition] = {url: digest for url, _, digest in entries}.get("local://device-0")
        if result.repetition == 2:
            gate.set()  # the hung call returns after its round

    with pytest.warns(RuntimeWarning, match="device_fn has not returned"):
        scaffold_run(tmp_path, 2, _hanging_once(gate, built), fraction=1.0, devices_per_round=None, min_results=1,
                     timeout=1.5, callbacks=[after])  # fmt: skip
    assert saved[1] is not None
    assert saved[2] == saved[1]  # round 2 failed for device 0: its state is round 1's, not lost


@pytest.mark.slow  # ~2 s: waits for a save that must wait for another
def test_two_saves_into_one_folder_leave_a_loadable_checkpoint(tmp_path, monkeypatch):
    """Two runs given the same folder (a user's slip): whichever pointer is last, every file it names is there."""
    urls = [f"local://device-{i}" for i in range(2)]

    def save(rep, fill):
        data = FedArrays({"w": np.full(DIM, float(fill))})
        data.samples = 10  # a merged model's count: what the coordinator saves after a round
        history = History([RoundResult(repetition=r) for r in range(1, rep + 1)])
        states = {u: {"": bytes([fill, k]) * 50} for k, u in enumerate(urls)}
        checkpoint.save(tmp_path, data, rep, history, lambda: states)

    real, other = checkpoint.write_atomically, []

    def interleaved(path, raw):
        if path.name == "devices.json" and not other:  # the first run is between its states and its pointer
            other.append(threading.Thread(target=save, args=(7, 2)))
            other[0].start()
            other[0].join(2.0)  # the other run's whole save, unless it must wait for this one's
        real(path, raw)

    monkeypatch.setattr(checkpoint, "write_atomically", interleaved)
    save(3, 1)
    other[0].join(30)
    assert not other[0].is_alive()
    data = FedArrays({"w": np.zeros(DIM)})
    repetition, _ = checkpoint.load(tmp_path, data)
    states = checkpoint.load_devices(tmp_path, urls, each=1 << 20)
    fill = {3: 1, 7: 2}[repetition]
    assert data.model["w"][0] == fill and states[urls[1]][""] == bytes([fill, 1]) * 50


def test_a_state_file_half_written_by_a_crash_is_removed_by_the_next_save(tmp_path):
    scaffold_run(tmp_path, 1)
    left = tmp_path / "device-states" / (hashlib.sha256(b"x").hexdigest() + ".tmp")
    left.write_bytes(b"half a state")
    keep = tmp_path / "device-states" / "notes.txt"  # not a name checkpoints write: never removed
    keep.write_bytes(b"mine")
    scaffold_run(tmp_path, 2)
    assert not left.exists() and keep.exists()
