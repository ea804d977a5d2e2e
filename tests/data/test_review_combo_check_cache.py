"""check() keeps its decoded payload for the receive of that same payload (#25); nothing else may keep it.

A payload checked but never received (an evaluation, a coordinator checking a bundle's replies) must not stay
in memory past its use: the test holds a weak reference to the payload's buffer and drops its own.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from fedsync import FedArrays


def payload_buffer(value: float) -> np.ndarray:
    """A coordinator's payload copied into a numpy buffer of its own, as a device reads one off the socket."""
    coordinator = FedArrays({"w": np.full(64, value, np.float32)})
    return np.frombuffer(bytes(coordinator.serialize(1)), np.uint8).copy()


@pytest.mark.parametrize("role", ["device-evaluates", "coordinator-checks-a-reply"])
def test_a_payload_checked_and_not_received_is_not_kept(role):
    if role == "device-evaluates":
        fed = FedArrays(
            {"w": np.zeros(64, np.float32)}, lambda m: 1, evaluate=lambda m: (1, {"mean": float(m["w"].mean())})
        )
    else:
        fed = FedArrays({"w": np.zeros(64, np.float32)})
    buffer = payload_buffer(2.0)
    alive = weakref.ref(buffer)
    fed.check(buffer.data, 1)
    if role == "device-evaluates":
        assert fed.evaluate(buffer.data, 1) == (1, {"mean": 2.0})
    del buffer
    gc.collect()
    assert alive() is None, "the payload's buffer is still held after its use"


def test_a_device_receives_the_payload_it_checked_and_the_next_one_afresh():
    seen = []
    fed = FedArrays({"w": np.zeros(64, np.float32)}, lambda m: seen.append(float(m["w"][0])) or 1)
    first, second = payload_buffer(1.0), payload_buffer(2.0)
    view = first.data
    fed.check(view, 1)
    fed.receive(view, 1)
    # The same memoryview object, its buffer now holding another payload (a reused receive buffer): decoded anew
    first[...] = second
    fed.check(view, 2)
    fed.receive(view, 2)
    assert seen == [1.0, 2.0]
