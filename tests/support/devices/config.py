"""Device factories for the round configuration and FedProx tests (``devices("tests.support.devices.config:NAME", ...)``).

Each reports the configuration it was handed back to the coordinator as metrics
(numbers only travel as metrics): see :func:`mirrored`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsync import FedArrays, FedData


def mirrored(config: dict[str, Any]) -> dict[str, float]:
    """The config as metrics: numbers and booleans as they are, strings as a checksum of their characters."""
    metrics = {"config.keys": float(len(config))}
    for key, value in config.items():
        if isinstance(value, str):
            metrics[f"str.{key}"] = float(sum((i + 1) * ord(c) for i, c in enumerate(value)))
        else:
            metrics[f"cfg.{key}"] = float(value)
    return metrics


def configured(samples: int) -> FedArrays:
    """``train(model, config)`` and ``evaluate(model, config)``: both report the config they got."""

    def train(model, config):
        model["w"][...] = config.get("value", 0.0)
        return samples, mirrored(config)

    def evaluate(model, config):
        return samples, mirrored(config)

    return FedArrays({"w": np.zeros(3, np.float32)}, train, evaluate=evaluate)


def one_argument(samples: int) -> FedArrays:
    """The seed's ``train(model)``: no config, and it must not be given one."""

    def train(model):
        model["w"][...] = 2.0
        return samples, {"called": 1.0}

    def evaluate(model):
        return samples, {"evaluated": 1.0}

    return FedArrays({"w": np.zeros(3, np.float32)}, train, evaluate=evaluate)


class ConfiguredFloat(FedData):
    """A custom FedData that reads the config: ``receive(encoding, repetition, config)``."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0.0

    def specs(self, repetition: int) -> str:
        return "ConfiguredFloat"

    def receive(self, encoding: str, repetition: int, config: dict[str, Any]) -> None:
        self.value = float(encoding) * config.get("scale", 1.0)

    def merge(self, encodings, repetition: int) -> None:
        values = [float(e) for e in encodings]
        self.value = sum(values) / len(values)

    def serialize(self, repetition: int) -> str:
        return str(self.value)


def configured_float() -> ConfiguredFloat:
    return ConfiguredFloat()


def torch_configured(samples: int):
    """FedTorch with ``train(model, config)`` reporting its config."""
    import torch

    from fedsync_torch import FedTorch

    torch.set_num_threads(1)
    torch.manual_seed(0)

    def train(model, config):
        with torch.no_grad():
            model.weight.fill_(config.get("value", 0.0))
        return samples, mirrored(config)

    return FedTorch(torch.nn.Linear(2, 1), train)


def keras_configured(samples: int):
    """FedKeras with ``train(model, config)`` reporting its config."""
    import keras

    from fedsync_keras import FedKeras

    def train(model, config):
        kernel = model.layers[0].kernel
        kernel.assign(np.full(kernel.shape, config.get("value", 0.0), np.float32))
        return samples, mirrored(config)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    return FedKeras(model, train)


def torch_fedprox(device: int):
    """A torch device of the non-IID digits that adds ``mu/2 ||w - w_global||^2`` to its loss.

    ``config``: ``mu`` (default 0), ``epochs`` (default 3), ``lr`` (default 0.1);
    plain SGD from the same seed every round, so that rounds differ only in what
    the coordinator sends.
    """
    import torch

    from fedsync.demo.data import load_split
    from fedsync_torch import FedTorch

    torch.set_num_threads(1)
    shard = load_split(4, 0.1, 0).shards[device]
    x, y = torch.from_numpy(shard.x), torch.from_numpy(shard.y)

    def train(model, config):
        mu = config.get("mu", 0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.get("lr", 0.1))
        generator = torch.Generator().manual_seed(0)
        for _ in range(config.get("epochs", 3)):
            for batch in torch.randperm(len(x), generator=generator).split(16):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch]) + fed.proximal_term(mu)
                loss.backward()
                optimizer.step()
        return len(x), {"loss": loss.item()}

    torch.manual_seed(0)
    fed = FedTorch(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)), train)
    return fed
