"""What a FedData's ``serialize`` returns crosses HTTP byte for byte, whatever its buffer's item size."""

from __future__ import annotations

import numpy as np

import fedsync
from fedsync import FedData, Federated


class FloatView(FedData):
    """Serializes to a float32 ``memoryview`` (3 items, 12 bytes); merges by keeping the devices' bytes."""

    def __init__(self, values: list[float]) -> None:
        self.values = np.asarray(values, np.float32)
        self.received: list[bytes] = []

    def specs(self, repetition: int) -> str:
        return "floatview:v1"

    def serialize(self, repetition: int) -> memoryview:
        return memoryview(self.values)

    def check(self, encoding, repetition: int) -> None:
        if memoryview(encoding).nbytes != self.values.nbytes:
            raise ValueError(f"expected {self.values.nbytes} bytes, got {memoryview(encoding).nbytes}")

    def receive(self, encoding, repetition: int) -> None:
        self.received.append(bytes(memoryview(encoding).cast("B")))
        self.values = np.frombuffer(bytes(memoryview(encoding).cast("B")), np.float32) + 1

    def merge(self, encodings, repetition: int) -> None:
        replies = [np.frombuffer(bytes(memoryview(e).cast("B")), np.float32) for e in encodings]
        self.values = np.mean(replies, axis=0).astype(np.float32)


def test_a_float32_memoryview_payload_arrives_whole_both_ways():
    device = FloatView([0.0, 0.0, 0.0])
    server = fedsync.serve(device, host="127.0.0.1", port=0, block=False)
    try:
        coordinator = FloatView([1.0, 2.0, 3.0])
        with Federated(data=coordinator, remotes=[server.url], timeout=20) as federated:
            federated.round()
            federated.round()
        assert device.received[0] == np.asarray([1.0, 2.0, 3.0], np.float32).tobytes()
        assert coordinator.values.tolist() == [3.0, 4.0, 5.0]  # two rounds of +1 on the device, whole each way
    finally:
        server.close()


def test_the_same_payload_arrives_whole_over_local():
    """The body is made a byte view once, in Remote, for every transport (local://, processes, Ray, plugins)."""
    from fedsync.coordinator.simulation import local_remotes

    devices: list[FloatView] = []

    def device_fn(i: int) -> FloatView:
        devices.append(FloatView([0.0, 0.0, 0.0]))
        return devices[-1]

    coordinator = FloatView([1.0, 2.0, 3.0])
    with Federated(data=coordinator, remotes=local_remotes(device_fn, 1), timeout=20) as federated:
        federated.round()
    assert devices[0].received[0] == np.asarray([1.0, 2.0, 3.0], np.float32).tobytes()
    assert coordinator.values.tolist() == [2.0, 3.0, 4.0]
