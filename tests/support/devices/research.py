"""Devices for the research patterns of issue #23 (docs/simulation.md): module-level, so worker processes import them.

:func:`straggler` trains linear regression for ``config["epochs"]`` local epochs (20 when not told),
drops its work (reports 0 samples) when ``config["drop"]`` is true, and reports the epochs it ran and the
configuration's lists and mappings it got as metrics, so a test sees what each device was told.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsync import FedArrays
from tests.support.devices.basic import linear_regression_data


def straggler(device_id: int, samples: int = 40) -> FedArrays:
    """Linear regression on device ``device_id``'s ``samples`` examples, told its local epochs by the config."""
    x, y = linear_regression_data(device_id, samples)

    def mse(model: dict[str, np.ndarray]) -> float:
        return float(((x @ model["w"] + model["b"] - y) ** 2).mean())

    def train(model: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[int, dict[str, float]]:
        told = {"device": float(device_id), "stragglers": float(len(config.get("stragglers", [])))}
        told["momentum"] = float(config.get("optimizer", {}).get("momentum", 0.0))
        if config.get("drop"):
            return 0, {**told, "epochs": 0.0}
        epochs = int(config.get("epochs", 20))
        for _ in range(epochs):
            err = x @ model["w"] + model["b"] - y
            model["w"] -= 0.05 * x.T @ err / len(x)
            model["b"] -= 0.05 * err.mean(axis=0)
        return len(x), {**told, "epochs": float(epochs), "mse": mse(model)}

    def evaluate(model: dict[str, np.ndarray]) -> tuple[int, dict[str, float]]:
        return len(x), {"mse": mse(model), "device": float(device_id)}

    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)}, train, evaluate=evaluate)
