"""serve(state_dir=...): a device's own state is saved after each round and resumed after a restart."""

from __future__ import annotations

import numpy as np
import pytest

import fedsync
from fedsync import Federated
from fedsync.data import FedArrays
from fedsync.data._state import encode_state, restore_state
from fedsync.device._kept import STATE_FILE
from tests.device.factories import counting_state
from tests.support.processes import start_device, stop_all


def _rounds(url: str, n: int) -> None:
    with Federated(FedArrays({"w": np.zeros(2)}), [url], timeout=60) as alg:
        for _ in range(n):
            alg.round()


def _saved(folder) -> list[int]:
    fed = counting_state()
    restore_state(fed, (folder / STATE_FILE).read_bytes())
    return fed.state["seen"].tolist()


@pytest.mark.slow  # starts two device processes
def test_a_restarted_device_resumes_its_state(tmp_path):
    serve = {"state_dir": str(tmp_path)}
    first = start_device("tests.device.factories:counting_state", serve=serve)
    try:
        _rounds(first.url, 2)
    finally:
        stop_all([first])
    assert _saved(tmp_path) == [2, 2]  # saved after each round
    second = start_device("tests.device.factories:counting_state", serve=serve)
    try:
        _rounds(second.url, 1)
    finally:
        stop_all([second])
    assert _saved(tmp_path) == [3, 3]  # resumed from 2, not from 0


def test_a_damaged_or_foreign_state_file_is_refused_at_start_and_left_as_it_is(tmp_path):
    path = tmp_path / STATE_FILE
    good = encode_state({"seen": np.array([4, 4], np.int64)})
    for bad, cause in (
        (good[:-5], "refused"),
        (encode_state({"seen": np.zeros(3, np.int64)}), r"expected \(2,\) int64"),  # another shape
        (b"\x00" * (1 << 20), "refused"),  # over what this state's file can be
    ):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=cause) as refused:
            fedsync.serve(counting_state(), port=0, block=False, state_dir=tmp_path)
        assert str(path) in str(refused.value) or "over the" in str(refused.value)
        assert path.read_bytes() == bad  # nothing changed
    path.write_bytes(good)
    fed = counting_state()
    with fedsync.serve(fed, port=0, block=False, state_dir=tmp_path):
        assert fed.state["seen"].tolist() == [4, 4]


def test_a_state_path_that_is_a_folder_stops_the_start_naming_it(tmp_path):
    (tmp_path / STATE_FILE).mkdir()
    with pytest.raises(ValueError, match=f"{STATE_FILE} cannot be read"):
        fedsync.serve(counting_state(), port=0, block=False, state_dir=tmp_path)


def test_a_state_that_cannot_be_saved_fails_the_round_saying_where(tmp_path):
    with fedsync.serve(counting_state(), port=0, block=False, state_dir=tmp_path) as served:
        (tmp_path / STATE_FILE).mkdir()  # a folder where the file goes: the rename over it fails
        with pytest.raises(Exception) as failed:
            _rounds(served.url, 1)
    assert "the device state could not be saved to" in str(failed.value)
    assert str(tmp_path / STATE_FILE) in str(failed.value)
