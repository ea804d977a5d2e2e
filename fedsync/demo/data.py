"""The demo's data: scikit-learn's digits, a held-out test set, and a non-IID split across devices."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..wire import codec

__all__ = [
    "Shard",
    "Split",
    "load_split",
    "load_digits",
    "stratified_split",
    "dirichlet_split",
    "save_shard",
    "load_shard",
    "DemoError",
    "CLASSES",
    "FEATURES",
]

CLASSES = 10
FEATURES = 64
TEST_FRACTION = 0.25


class DemoError(RuntimeError):
    """The demo cannot run as asked; the message says what to do instead."""


@dataclass
class Shard:
    """One device's private training data."""

    x: np.ndarray
    y: np.ndarray

    def label_counts(self) -> list[int]:
        return np.bincount(self.y, minlength=CLASSES).tolist()


@dataclass
class Split:
    """The devices' shards and the coordinator's held-out test set."""

    shards: list[Shard]
    x_test: np.ndarray
    y_test: np.ndarray

    def pooled(self) -> Shard:
        """All devices' training data in one place (the central baseline's data)."""
        return Shard(np.concatenate([s.x for s in self.shards]), np.concatenate([s.y for s in self.shards]))


def load_split(devices: int, alpha: float, seed: int) -> Split:
    """Digits scaled to [0, 1], a stratified test set, the rest split by Dirichlet(alpha) labels."""
    x, y = load_digits()
    train, test = stratified_split(y, TEST_FRACTION, seed)
    parts = dirichlet_split(y[train], devices, alpha, seed)
    return Split([Shard(x[train][p], y[train][p]) for p in parts], x[test], y[test])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as float32 in [0, 1] and int64 labels."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DemoError(
            "the demo trains on scikit-learn's digits data set, and scikit-learn is not installed; "
            "install it with: pip install 'fedsync[demo]'"
        )
    # The data ships inside scikit-learn; reading it directly skips importing
    # sklearn and scipy, which takes longer than the whole numpy demo.
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits as sklearn_digits

        x, y = sklearn_digits(return_X_y=True)
    return (np.asarray(x) / 16.0).astype(np.float32), np.asarray(y).astype(np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, with ``fraction`` of every class in the test set."""
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for c in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == c))
        cut = round(Fraction(str(fraction)) * len(indices))  # exact: 0.575 * 100 is 57.49999... in floats
        test.append(indices[:cut])
        train.append(indices[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def dirichlet_split(
    labels: np.ndarray, devices: int, alpha: float, seed: int, attempts: int = 1000
) -> list[np.ndarray]:
    """Indices per device: each class is shared out by proportions drawn from Dirichlet(alpha).

    Small ``alpha`` gives each device a few dominant labels (non-IID); large
    ``alpha`` approaches an even, IID split. Draws are repeated (seeded) until
    every device holds at least a handful of samples.
    """
    if devices < 1:
        raise DemoError(f"--devices must be at least 1, got {devices}")
    if not alpha > 0:
        raise DemoError(f"--alpha must be a positive number, got {alpha}; e.g. 0.1 (very skewed) to 100 (nearly even)")
    minimum = min(10, len(labels) // (2 * devices))
    if minimum < 1:
        raise DemoError(f"{len(labels)} training samples cannot be split across {devices} devices; use fewer devices")
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(devices)]
        for indices in by_class:
            shares = rng.dirichlet(np.full(devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for device, chunk in enumerate(np.split(indices, cuts)):
                parts[device].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= minimum:
            return merged
    raise DemoError(
        f"could not give each of {devices} devices at least {minimum} samples with alpha={alpha}; "
        "use a larger --alpha or fewer --devices"
    )


def save_shard(shard: Shard, path: Path) -> None:
    """Write a shard as a .safetensors file (our own codec: no pickle)."""
    path.write_bytes(codec.encode({"x": shard.x, "y": shard.y}))


def load_shard(path: Path) -> Shard:
    arrays, _ = codec.decode(Path(path).read_bytes())
    return Shard(np.array(arrays["x"]), np.array(arrays["y"]))
