"""Devices that reply compressed updates (#25): least squares on their own data, ``updates=`` as asked.

``forging(seed, updates, top_k)`` replies like ``least_squares`` and then sets a bitmap bit beyond the
array's entries in its STC reply: a hostile device whose payload the coordinator must refuse alone.
"""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays
from fedsync.strategies import Scaffold, scaffold

DIM = 30


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, DIM)).astype(np.float32)
    return x, (x @ np.linspace(-1, 1, DIM) + seed).astype(np.float32)


def model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(DIM, np.float32)}


def least_squares(seed: int, updates: str, top_k: float) -> FedArrays:
    x, y = data(seed)

    def train(m: dict[str, np.ndarray]) -> int:
        for _ in range(5):
            m["w"] -= np.float32(0.05) * x.T @ (x @ m["w"] - y) / np.float32(len(x))
        return len(x) + seed

    return FedArrays(model(), train, updates=updates, top_k=top_k)


class Forging(FedArrays):
    def receive(self, encoding, repetition, config=None):  # type: ignore[no-untyped-def]
        super().receive(encoding, repetition, config)
        blob = self._update[0]["w"]  # type: ignore[index]  # mu (4 bytes), a bitmap of 4 bytes, the signs
        blob[7] |= 0x80  # entry 31 of 30


def forging(seed: int, updates: str, top_k: float) -> FedArrays:
    honest = least_squares(seed, updates, top_k)
    return Forging(model(), honest.train, updates=updates, top_k=top_k)


def scaffold_devices(updates: str | None):
    """``device_fn(i)``: SCAFFOLD (5 devices) on device ``i``'s least squares, replying as ``updates`` says."""

    def make(i: int) -> FedArrays:
        x, y = data(i)

        def train(m: dict[str, np.ndarray]) -> int:
            fix = scaffold.correction(fed)
            for _ in range(3):
                m["w"] -= np.float32(0.05) * (x.T @ (x @ m["w"] - y) / np.float32(len(x)) + fix["w"])
            scaffold.finish(fed, steps=3, lr=0.05)
            return len(x)

        fed = FedArrays(model(), train, strategy=Scaffold(num_devices=5), updates=updates)
        return fed

    return make
