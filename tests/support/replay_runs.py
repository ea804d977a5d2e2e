"""Seeded simulated runs for the replay tests (tests/coordinator/test_replay.py, tests/cli/test_replay.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsync import FedArrays
from fedsync.coordinator.history import History
from fedsync.coordinator.simulation import device_id, run_simulation
from fedsync.strategies import FedAvg

TRUE_W = np.array([[1.0], [2.0], [-1.0]], np.float32)


def device_fn(index: int, shift: float = 0.0) -> FedArrays:
    """Device ``index``: 16 examples of y = x @ TRUE_W (+ ``shift``), a gradient step per round at ``config["lr"]``."""
    rng = np.random.default_rng(index)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = x @ TRUE_W + np.float32(shift)

    def train(model: dict[str, np.ndarray], config: dict[str, Any]) -> int:
        w = model["w"]
        grad = x.T @ (x @ w - y) / np.float32(len(x))
        model["w"] = (w - np.float32(config["lr"]) * grad).astype(np.float32)
        return len(x)

    return FedArrays({"w": np.zeros((3, 1), np.float32)}, train)


def simulate(folder: Path | None, *, seed: int = 7, rounds: int = 3, config: Any = None, **extra: Any) -> History:
    """A seeded run over 8 devices, 3 sampled per round, FedAvg, each device sent its own config."""
    return run_simulation(
        extra.pop("device_fn", device_fn),
        8,
        rounds,
        data=FedArrays({"w": np.zeros((3, 1), np.float32)}),
        strategy=FedAvg(),
        devices_per_round=3,
        seed=seed,
        config=config or (lambda server_round, device: {"lr": 0.05 + 0.01 * (device_id(device) % 3)}),
        checkpoint=folder,
        progress=False,
        **extra,
    )
