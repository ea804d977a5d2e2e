"""Devices for the strategy tests (``devices("tests.support.devices.strategies:NAME", ...)``), and a coordinator.

``python -m tests.support.devices.strategies CHECKPOINT ROUNDS OUT STRATEGY URL...`` runs a
coordinator like ``tests.support.run_coordinator`` (linear regression, checkpointed) but
merging with ``STRATEGY``, a name from :data:`STRATEGIES`; it writes the final
arrays to OUT when all rounds are done.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedsync import FedArrays, Federated, strategies
from fedsync.wire import codec

STRATEGIES = {
    "fedadam": lambda: strategies.FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3),
    "fedyogi": lambda: strategies.FedYogi(eta=0.05),
    "fedavgm": lambda: strategies.FedAvgM(server_learning_rate=0.8, server_momentum=0.9),
}


def layout() -> dict[str, np.ndarray]:
    """A small model with a floating matrix, a floating vector and an integer counter."""
    return {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32), "steps": np.zeros((), np.int64)}


def honest(value: float, samples: int, seed: int = 0) -> FedArrays:
    """Training sets the weights to ``value`` plus small seeded noise and counts one step."""
    noise = np.random.default_rng(seed)

    def train(model: dict[str, np.ndarray]) -> int:
        for name in ("w", "b"):
            model[name][...] = value + noise.normal(0.0, 0.01, model[name].shape)
        model["steps"] += 10
        return samples

    return FedArrays(layout(), train)


def scaled(value: float, factor: float, samples: int) -> FedArrays:
    """A Byzantine device: trains like an honest one, then replies its weights times ``factor`` and a huge counter."""

    def train(model: dict[str, np.ndarray]) -> int:
        for name in ("w", "b"):
            model[name][...] = value * factor
        model["steps"][...] = 2**40
        return samples

    return FedArrays(layout(), train)


def main() -> None:
    checkpoint, rounds, out, name, *urls = sys.argv[1:]
    data = FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)}, strategy=STRATEGIES[name]())
    with Federated(data=data, remotes=urls, checkpoint=checkpoint, timeout=60) as alg:
        alg.fit(int(rounds), progress=False)
        Path(out).write_bytes(codec.encode(data.get_arrays()))


if __name__ == "__main__":
    main()
