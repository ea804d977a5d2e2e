"""A FedData's own state: kept out of payloads, encoded with the codec, refused before anything changes."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedData
from fedsync.data import FedArrays
from fedsync.data._state import encode_state, max_state_bytes, restore_state
from fedsync.wire import codec


def _fed(c: np.ndarray | None = None) -> FedArrays:
    c = np.zeros(3, np.float32) if c is None else c
    return FedArrays({"w": np.zeros(2)}, lambda m: 1, state={"c": c, "n": np.zeros((), np.int64)})


def test_state_round_trips_in_place_and_never_travels():
    c = np.zeros(3, np.float32)
    fed = _fed(c)
    fed.state["c"][:] = [1, 2, 3]
    fed.state["n"][...] = 7
    saved = encode_state(fed.device_state())
    assert len(saved) <= max_state_bytes(fed.device_state())
    fresh_c = np.zeros(3, np.float32)
    fresh = _fed(fresh_c)
    restore_state(fresh, saved)
    assert fresh_c.tolist() == [1, 2, 3]  # the caller's own array, updated in place
    assert int(fresh.state["n"]) == 7
    arrays, _ = codec.decode(bytes(fed.serialize(1)))
    assert set(arrays) == {"w"}  # the state is not in the payload


@pytest.mark.parametrize(
    "other",
    [
        {"c": np.zeros(4, np.float32), "n": np.zeros((), np.int64)},  # another shape
        {"c": np.zeros(3, np.float64), "n": np.zeros((), np.int64)},  # another dtype
        {"c": np.zeros(3, np.float32)},  # a name missing
    ],
)
def test_a_state_of_another_layout_is_refused_before_anything_changes(other):
    fed = _fed(np.full(3, 5, np.float32))
    with pytest.raises(ValueError, match="refused, nothing changed"):
        restore_state(fed, encode_state(other))
    with pytest.raises(ValueError, match="expected|missing"):
        fed.load_device_state(other)
    assert fed.state["c"].tolist() == [5, 5, 5]


def test_damaged_or_foreign_bytes_are_refused_naming_the_source():
    fed = _fed(np.full(3, 5, np.float32))
    good = encode_state(fed.device_state())
    for bad in (good[:-3], b"\xff" * 40, codec.encode(fed.device_state())):  # cut, noise, not marked a state
        with pytest.raises(ValueError, match="state.bin was refused"):
            restore_state(fed, bad, "state.bin")
    assert fed.state["c"].tolist() == [5, 5, 5]


def test_the_default_fed_data_keeps_no_state():
    fed = FedData()
    assert fed.device_state() == {}
    fed.load_device_state({})
    with pytest.raises(ValueError, match="keeps no device state"):
        fed.load_device_state({"c": np.zeros(1)})


def test_a_state_that_is_not_arrays_is_refused_at_construction():
    with pytest.raises(TypeError, match="'c' is a list"):
        FedArrays({"w": np.zeros(2)}, state={"c": [1, 2]})
    with pytest.raises(TypeError, match="complex"):
        FedArrays({"w": np.zeros(2)}, state={"c": np.zeros(2, complex)})
