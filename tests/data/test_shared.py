"""#25 item 1: ``FedArrays(shared=...)`` chooses what travels; the rest stays on the device.

Numpy arrays carry no trainable flag, so they choose by name pattern: the arrays left out are the device's
own (FedPer's head, FedBN's statistics), kept between rounds, never sent nor overwritten.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation
from fedsync.wire import codec

SHARED = {"exclude": ["head*"]}
seen: dict[int, list[float]] = {}


def personal(device_id: int) -> FedArrays:
    """A shared body, averaged; a local head, each device's own: it adds ``device_id + 1`` every round it trains."""

    def train(model):
        seen.setdefault(device_id, []).append(float(model["head"][0]))
        model["body"] += 1.0
        model["head"] += device_id + 1.0
        return 10

    return FedArrays({"body": np.zeros(2), "head": np.zeros(2)}, train, shared=SHARED)


def test_local_layers_keep_each_devices_own_values_across_rounds_while_the_shared_ones_are_averaged():
    seen.clear()
    data = FedArrays({"body": np.zeros(2), "head": np.full(2, 7.0)}, shared=SHARED)
    history = run_simulation(personal, 4, 5, data=data, devices_per_round=2, seed=3, progress=False)
    assert all(not r.failures for r in history)
    np.testing.assert_array_equal(data.model["body"], [5.0, 5.0])  # +1 a round, averaged
    np.testing.assert_array_equal(data.model["head"], [7.0, 7.0])  # the coordinator's head: never merged
    for device_id, heads in seen.items():  # each device saw its own head: k rounds of + (id + 1), not 7, not a mean
        assert heads == [k * (device_id + 1.0) for k in range(len(heads))]
    assert any(len(h) > 1 for h in seen.values())


def test_only_the_shared_arrays_are_in_the_payload_and_the_specs_pin_the_whole_layout():
    data = FedArrays({"body": np.zeros(3), "head": np.zeros(1000)}, shared=SHARED)
    arrays, _ = codec.decode(bytes(data.serialize(0)))
    assert list(arrays) == ["body"]
    assert len(bytes(data.serialize(0))) < 400  # not the head's 8,000 bytes
    assert [w["name"] for w in data.summary(0)["weights"]] == ["body"]
    other_head = FedArrays({"body": np.zeros(3), "head": np.zeros(999)}, shared=SHARED)
    everything = FedArrays({"body": np.zeros(3), "head": np.zeros(1000)})
    assert len({data.specs(0), other_head.specs(0), everything.specs(0)}) == 3
    assert list(data.device_state()) == ["local/head"]


def test_a_device_state_with_local_layers_saves_and_loads_them_checked():
    from fedsync.data._state import encode_state, restore_state

    fed = personal(2)
    fed.model["head"][:] = [3.0, 4.0]
    saved = encode_state(fed.device_state())
    again = personal(2)
    restore_state(again, saved)
    np.testing.assert_array_equal(again.model["head"], [3.0, 4.0])
    with pytest.raises(ValueError, match="refused, nothing changed"):
        restore_state(FedArrays({"body": np.zeros(2), "head": np.zeros(3)}, shared=SHARED), saved)


@pytest.mark.parametrize(
    "shared, error, message",
    [
        ("some", ValueError, "shared must be None, 'trainable'"),
        ({"only": ["w"]}, TypeError, "include"),
        ({"include": "w"}, TypeError, "list of name patterns"),
        ({"include": [""]}, TypeError, "non-empty strings"),
    ],
)
def test_a_bad_shared_is_refused_at_construction(shared, error, message):
    with pytest.raises(error, match=message):
        FedArrays({"w": np.zeros(2)}, shared=shared)


@pytest.mark.parametrize(
    "shared, error, message",
    [
        ({"include": ["wieghts*"]}, ValueError, "matches no array"),  # a typo must not keep every layer local
        ({"exclude": ["*"]}, ValueError, "selects no array"),
        ("trainable", TypeError, "carry no trainable flag"),
    ],
)
def test_a_selection_that_cannot_hold_is_refused_when_first_used(shared, error, message):
    fed = FedArrays({"weights": np.zeros(2), "head": np.zeros(2)}, shared=shared)
    with pytest.raises(error, match=message):
        fed.serialize(0)


def test_secure_aggregation_with_a_selection_is_refused_with_the_reason():
    from fedsync.secagg import SecAgg
    from fedsync.secagg.coordinator import checked

    with pytest.raises(ValueError, match="whole models"):
        checked(SecAgg(threshold=3), FedArrays({"body": np.zeros(2), "head": np.zeros(2)}, shared=SHARED))
