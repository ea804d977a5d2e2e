"""The demo's model in each framework: build it, wrap it as FedData, train and evaluate it.

Every backend trains the same kind of model with plain minibatch SGD, so the
federated, central and device-alone runs differ only in where the data is.
Frameworks are imported inside the backends: picking ``numpy`` never imports torch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.arrays import FedArrays
from .data import CLASSES, FEATURES, DemoError

__all__ = ["Backend", "BACKENDS", "backend_class", "choose_backend", "available"]

BATCH = 32
HIDDEN = 32


class Backend:
    """How the demo builds, wraps, trains and evaluates its model in one framework."""

    name = ""
    extra: str | None = None
    description = ""

    @classmethod
    def missing(cls) -> str | None:
        """Why this backend cannot run here, or ``None`` if it can."""
        return None

    def build(self, seed: int) -> Any:
        """A freshly initialized model; the same ``seed`` gives the same weights."""
        raise NotImplementedError

    def fed(self, model: Any, train: Callable[[Any], Any] | None = None) -> FedArrays:
        """``model`` as FedData: a device's (with ``train``) or the coordinator's."""
        raise NotImplementedError

    def fit(
        self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        """Train in place; the last epoch's mean loss and accuracy."""
        raise NotImplementedError

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on ``(x, y)``."""
        raise NotImplementedError


def _batches(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + BATCH] for i in range(0, n, BATCH)]


def _softmax_loss(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    p = exp / exp.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    return p, loss


class NumpyBackend(Backend):
    """Softmax regression in numpy: runs with the core alone."""

    name = "numpy"
    description = "softmax regression (numpy, fedsync.FedArrays)"
    lr = 0.5

    def build(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "w": (rng.normal(0, 0.01, (FEATURES, CLASSES))).astype(np.float32),
            "b": np.zeros(CLASSES, np.float32),
        }

    def fed(self, model: Any, train: Callable[[Any], Any] | None = None) -> FedArrays:
        return FedArrays(model, train)

    def fit(
        self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        w, b = model["w"], model["b"]
        for _ in range(epochs):
            losses, correct = [], 0
            for batch in _batches(len(y), rng):
                xb, yb = x[batch], y[batch]
                p, loss = _softmax_loss(xb @ w + b, yb)
                losses.append(loss * len(batch))
                correct += int((p.argmax(axis=1) == yb).sum())
                p[np.arange(len(yb)), yb] -= 1.0
                grad = p / len(yb)
                w -= (self.lr * xb.T @ grad).astype(w.dtype)
                b -= (self.lr * grad.sum(axis=0)).astype(b.dtype)
        return sum(losses) / len(y), correct / len(y)

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        p, loss = _softmax_loss(x @ model["w"] + model["b"], y)
        return loss, float((p.argmax(axis=1) == y).mean())


def _adapter(module: str, name: str) -> type[FedArrays] | None:
    """The adapter class if its package defines it (it never imports the framework)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _framework_missing(framework: str, module: str, cls: str, extra: str) -> str | None:
    if importlib.util.find_spec(framework) is None:
        return f"{framework} is not installed; install it with: pip install 'fedsync[{extra}]'"
    if _adapter(module, cls) is None:
        return f"{module}.{cls} is not available in this fedsync installation"
    return None


class TorchBackend(Backend):
    """A small MLP as a torch.nn.Module, through fedsync_torch.FedTorch."""

    name = "torch"
    extra = "torch"
    description = f"MLP {FEATURES}-{HIDDEN}-{CLASSES} (torch, fedsync_torch.FedTorch)"
    lr = 0.3

    @classmethod
    def missing(cls) -> str | None:
        return _framework_missing("torch", "fedsync_torch", "FedTorch", "torch")

    def __init__(self) -> None:
        import torch

        # The model is tiny: one thread is faster than several, and leaves the cores to the devices.
        torch.set_num_threads(1)
        self.torch = torch

    def build(self, seed: int) -> Any:
        torch = self.torch
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))

    def fed(self, model: Any, train: Callable[[Any], Any] | None = None) -> FedArrays:
        from fedsync_torch import FedTorch

        return FedTorch(model, train)

    def fit(
        self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        torch = self.torch
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        parameters = list(model.parameters())
        model.train()
        for _ in range(epochs):
            total, correct = 0.0, 0
            for batch in _batches(len(y), rng):
                index = torch.from_numpy(batch)
                logits = model(xt[index])
                loss = torch.nn.functional.cross_entropy(logits, yt[index])
                for p in parameters:
                    p.grad = None
                loss.backward()
                # Plain SGD by hand: torch.optim's first use imports torch._dynamo,
                # which takes longer than the whole demo's training.
                with torch.no_grad():
                    for p in parameters:
                        p -= self.lr * p.grad
                total += loss.item() * len(batch)
                correct += int((logits.argmax(dim=1) == yt[index]).sum())
        return total / len(y), correct / len(y)

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        torch = self.torch
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
            accuracy = (logits.argmax(dim=1) == torch.from_numpy(y)).float().mean()
        return float(loss), float(accuracy)


class KerasBackend(Backend):
    """A small MLP as a Keras 3 model, through fedsync_keras.FedKeras."""

    name = "keras"
    extra = "keras"
    description = f"MLP {FEATURES}-{HIDDEN}-{CLASSES} (keras, fedsync_keras.FedKeras)"
    lr = 0.3

    @classmethod
    def missing(cls) -> str | None:
        return _framework_missing("keras", "fedsync_keras", "FedKeras", "keras")

    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
        import keras

        self.keras = keras

    def build(self, seed: int) -> Any:
        keras = self.keras
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(CLASSES),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(self.lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            # The model is tiny: XLA compilation would cost more than all its training,
            # and several batches per graph call cut Python's per-batch overhead.
            jit_compile=False,
            steps_per_execution=16,
        )
        return model

    def fed(self, model: Any, train: Callable[[Any], Any] | None = None) -> FedArrays:
        from fedsync_keras import FedKeras

        return FedKeras(model, train)

    def fit(
        self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        history = model.fit(x, y, epochs=epochs, batch_size=BATCH, shuffle=True, verbose=0)
        return float(history.history["loss"][-1]), float(history.history["accuracy"][-1])

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        loss, accuracy = model.evaluate(x, y, batch_size=256, verbose=0)
        return float(loss), float(accuracy)


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (NumpyBackend, TorchBackend, KerasBackend)}
"""In the order ``auto`` prefers them: the fastest ``fedsync demo`` first.

Measured on 2 shared cores, the default demo (4 devices, 20 rounds, baselines
included) took 2.2 s with numpy, 6.4 s with torch and 30 s with Keras, almost
all of it each process importing its framework; the accuracy is the same
(0.95). ``auto`` is therefore numpy, which the core always has; a framework
is one ``--adapter`` away.
"""


def available() -> dict[str, str | None]:
    """Each backend's name and why it cannot run here (``None``: it can)."""
    return {name: cls.missing() for name, cls in BACKENDS.items()}


def backend_class(name: str) -> type[Backend]:
    """The backend called ``name``, or for ``auto`` the fastest that can run here; nothing is imported yet.

    Raises:
        DemoError: an unknown name, or a backend whose framework is not installed.
    """
    if name == "auto":
        return next(cls for cls in BACKENDS.values() if cls.missing() is None)
    if name not in BACKENDS:
        raise DemoError(f"unknown adapter {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    why = BACKENDS[name].missing()
    if why is not None:
        raise DemoError(f"--adapter {name} cannot run: {why}; or use --adapter numpy, which needs nothing more")
    return BACKENDS[name]


def choose_backend(name: str) -> Backend:
    """An instance of :func:`backend_class` (this imports its framework)."""
    return backend_class(name)()
