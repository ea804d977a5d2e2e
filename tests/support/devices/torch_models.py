"""FedTorch factories that test device processes serve (``devices("tests.support.devices.torch_models:NAME", ...)``)."""

from __future__ import annotations

import numpy as np
import torch

from fedsync_torch import FedTorch

# Which digits each device mostly holds: a non-IID split, as real devices have.
MAJORITY = {"a": range(0, 5), "b": range(5, 10)}
MINORITY_SHARE = 0.1  # of each other digit's training examples, so the devices overlap a little


def mlp(hidden: int = 64, seed: int = 0) -> torch.nn.Module:
    """The digits classifier: 64 pixels -> ``hidden`` -> 10 classes."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def digits_split() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Each device's (x, y) and the held-out test set, the same in every process.

    Inputs are standardized with statistics of the training pool: preprocessing
    the participants agreed on beforehand. The test set is never on a device.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train).astype(np.float32), scaler.transform(x_test).astype(np.float32)
    rng = np.random.default_rng(0)
    owner = np.empty(len(y_train), dtype="<U1")
    for digit in range(10):
        where = rng.permutation(np.flatnonzero(y_train == digit))
        major, minor = ("a", "b") if digit in MAJORITY["a"] else ("b", "a")
        split = int(round(len(where) * MINORITY_SHARE))
        owner[where[:split]] = minor
        owner[where[split:]] = major
    shards = {name: (x_train[owner == name], y_train[owner == name]) for name in MAJORITY}
    return shards, (x_test, y_test)


def digits(name: str, epochs: int = 2, lr: float = 0.005) -> FedTorch:
    """A device holding shard ``name`` of the digits; trains ``epochs`` of Adam per round."""
    torch.set_num_threads(1)
    x, y = digits_split()[0][name]
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    model = mlp(seed=1)  # whatever its initial weights, the coordinator's replace them
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # created once: loading weights keeps its parameters
    generator = torch.Generator().manual_seed(0)

    def train(model: torch.nn.Module) -> tuple[int, dict[str, float]]:
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(32):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
        return len(x), {"loss": loss.item()}

    return FedTorch(model, train)


def with_batchnorm() -> torch.nn.Module:
    """A small model with floating parameters, floating buffers and an int64 buffer."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))


def constant(value: float, samples: int, batches: int) -> FedTorch:
    """Training sets every floating tensor to ``value`` and ``num_batches_tracked`` to ``batches``."""
    torch.set_num_threads(1)

    def train(model: torch.nn.Module) -> int:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.fill_(value if tensor.is_floating_point() else batches)
        return samples

    return FedTorch(with_batchnorm(), train)


def untrained(hidden: int) -> FedTorch:
    """An MLP of width ``hidden`` whose training does nothing."""
    torch.set_num_threads(1)
    return FedTorch(mlp(hidden), lambda model: 1)


def digits_and_threshold(name: str, threshold: float) -> dict:
    """A torch model and a custom FedData of another type, served side by side."""
    from tests.support.seed_fedfloat import FedFloat

    return {"digits": digits(name, epochs=1), "threshold": FedFloat(threshold)}


def digits_bundle(name: str, threshold: float):
    """The same two, bundled into one payload and one round."""
    from fedsync import FedBundle

    return FedBundle(digits_and_threshold(name, threshold))
