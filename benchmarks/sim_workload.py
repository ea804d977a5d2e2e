"""benchmarks/simulation.py's workload, the same for every peer: digits split non-IID, a small MLP, SGD.

Only numpy is imported at the top (torch inside the functions that need it): Flower's
peer imports this module in Flower's own venv (benchmarks/setup_flower.sh), where fedsync
is not installed. Everything a peer needs was written once by :func:`prepare` (in
fedsync's environment) as ``.npy`` files, read with ``allow_pickle=False``:

- ``x_train``/``y_train``, ``x_test``/``y_test``: scikit-learn's digits, scaled to [0, 1],
  a stratified quarter held out (fedsync.demo.data);
- ``shards``: ``(devices, SHARD)`` int32 indices into the training set. Device ``i``
  holds ``SHARD`` samples whose labels follow its own Dirichlet(``ALPHA``) mixture of the
  10 classes (non-IID). With 10,000 devices and 1,347 training samples, devices cannot
  hold disjoint shards: samples are drawn with replacement across devices, so every N
  trains devices of the same size and a round's work is the same at every N;
- ``init_{k}``: the initial model, ``W1 (HIDDEN, 64)``, ``b1 (HIDDEN,)``, ``W2 (10, HIDDEN)``,
  ``b2 (10,)`` float32, laid out as torch's ``nn.Linear`` holds them.

Local training: one epoch of mini-batch SGD (``BATCH`` samples, learning rate ``LR``, in
shard order) on softmax cross-entropy; numpy and torch compute the same thing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARD = 32
BATCH = 16
HIDDEN = 32
LR = 0.5
ALPHA = 0.5
NAMES = ["W1", "b1", "W2", "b2"]


def prepare(folder: Path, devices: int, seed: int = 0) -> None:
    """Write the data, the devices' shards and the initial model to ``folder`` (fedsync's environment)."""
    from fedsync.demo.data import TEST_FRACTION, load_digits, stratified_split

    x, y = load_digits()
    train, test = stratified_split(y, TEST_FRACTION, seed)
    x_train, y_train = x[train], y[train]
    rng = np.random.default_rng([seed, 2])
    by_class = [np.flatnonzero(y_train == c) for c in range(10)]
    shards = np.empty((devices, SHARD), np.int32)
    for i in range(devices):
        counts = rng.multinomial(SHARD, rng.dirichlet([ALPHA] * 10))
        shards[i] = np.concatenate([rng.choice(by_class[c], n) for c, n in enumerate(counts) if n])
    init = rng.standard_normal
    model = [
        (init((HIDDEN, 64)) * np.sqrt(2 / 64)).astype(np.float32), np.zeros(HIDDEN, np.float32),
        (init((10, HIDDEN)) * np.sqrt(2 / HIDDEN)).astype(np.float32), np.zeros(10, np.float32),
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x[test], "y_test": y[test], "shards": shards}
    arrays.update({f"init_{k}": a for k, a in enumerate(model)})
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


class Workload:
    """The prepared files of ``folder``, loaded once per process."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        load = lambda name: np.load(folder / f"{name}.npy", allow_pickle=False)  # noqa: E731
        self.x_train, self.y_train = load("x_train"), load("y_train")
        self.x_test, self.y_test = load("x_test"), load("y_test")
        self.shards = load("shards")
        self.init = [load(f"init_{k}") for k in range(len(NAMES))]

    @property
    def devices(self) -> int:
        return len(self.shards)

    def shard(self, device_id: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.shards[device_id]
        return self.x_train[index], self.y_train[index]


def train_numpy(model: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """One epoch of SGD on ``model`` (in place); the epoch's mean loss."""
    w1, b1, w2, b2 = model
    losses = []
    for start in range(0, len(x), BATCH):
        xb, yb = x[start : start + BATCH], y[start : start + BATCH]
        h = xb @ w1.T + b1
        a = np.maximum(h, 0)
        logits = a @ w2.T + b2
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        losses.append(float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()))
        g = p
        g[np.arange(len(yb)), yb] -= 1
        g /= len(yb)
        gw2, gb2 = g.T @ a, g.sum(axis=0)
        ga = (g @ w2) * (h > 0)
        gw1, gb1 = ga.T @ xb, ga.sum(axis=0)
        w1 -= LR * gw1
        b1 -= LR * gb1
        w2 -= LR * gw2
        b2 -= LR * gb2
    return float(np.mean(losses))


def train_torch(model: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """:func:`train_numpy` computed by torch (``nn.Linear``, ``F.cross_entropy``, SGD); ``model`` updated in place."""
    import torch
    import torch.nn.functional as F

    params = [torch.from_numpy(a).requires_grad_(True) for a in model]  # shares memory with model
    optimizer = torch.optim.SGD(params, lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for start in range(0, len(x), BATCH):
        xb, yb = xt[start : start + BATCH], yt[start : start + BATCH]
        logits = F.linear(F.relu(F.linear(xb, params[0], params[1])), params[2], params[3])
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def accuracy(model: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``x``, ``y``."""
    w1, b1, w2, b2 = model
    logits = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    return float((logits.argmax(axis=1) == y).mean())


def trainer(framework: str):
    """:func:`train_numpy` or :func:`train_torch` by name."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be numpy or torch, got {framework!r}")
    return train_numpy if framework == "numpy" else train_torch
