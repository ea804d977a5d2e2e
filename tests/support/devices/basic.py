"""FedData factories that test device processes serve (see ``run_device.py``)."""

from __future__ import annotations

import os
import time

import numpy as np

from fedsync import FedArrays
from fedsync.wire import codec
from tests.support.seed_fedfloat import FedFloat


def fedfloat(value: float) -> FedFloat:
    return FedFloat(value)


def zeros() -> FedArrays:
    """The coordinator's side of :func:`constant` and :func:`setting`: the same layout, all zeros."""
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def setting(value: float) -> FedArrays:
    """A model whose training sets every weight to ``value`` and reports 10 samples, no metrics."""

    def train(model):
        for a in model.values():
            a[...] = value
        return 10

    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, train)


def constant(value: float, samples: int) -> FedArrays:
    """A model whose training sets every weight to ``value`` and reports ``samples``."""
    weights = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}

    def train(model):
        for a in model.values():
            a[...] = value
        return samples, {"loss": value}

    return FedArrays(weights, train)


def linear_regression_data(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Shared ground truth, device-specific inputs: y = X @ w_true + b_true + noise."""
    rng = np.random.default_rng(seed)
    w_true = np.array([[2.0], [-1.0], [0.5]])
    x = rng.normal(shift, 1.0, size=(n, 3))
    y = x @ w_true + 0.3 + rng.normal(0, 0.1, size=(n, 1))
    return x, y


def linreg(seed: int, n: int, shift: float = 0.0, epochs: int = 20, lr: float = 0.05) -> FedArrays:
    """Linear regression trained by full-batch gradient descent on this device's data."""
    x, y = linear_regression_data(seed, n, shift)
    weights = {"w": np.zeros((3, 1)), "b": np.zeros(1)}

    def train(model):
        for _ in range(epochs):
            err = x @ model["w"] + model["b"] - y
            model["w"] -= lr * x.T @ err / len(x)
            model["b"] -= lr * err.mean(axis=0)
        return x.shape[0], {"mse": float(((x @ model["w"] + model["b"] - y) ** 2).mean())}

    return FedArrays(weights, train)


def flaky(fail_on: int = 1) -> FedArrays:
    """Training raises on its ``fail_on``-th call and works otherwise."""
    calls = {"n": 0}

    def train(model):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise RuntimeError("disk full on device")
        model["w"][...] = 5.0
        return 7

    return FedArrays({"w": np.zeros(4, np.float32)}, train)


def slow(seconds: float) -> FedArrays:
    """Training that takes ``seconds``."""

    def train(model):
        time.sleep(seconds)
        return 1

    return FedArrays({"w": np.zeros(4, np.float32)}, train)


def pid() -> FedFloat:
    return FedFloat(float(os.getpid()))


def by_specs(specs: str, *args):
    """Whatever adapter the plugin registry resolves for ``specs``, built with ``args``."""
    from fedsync.plugins import adapter_for

    return adapter_for(specs)(*args)


def mixed(value: float, samples: int, threshold: float) -> dict:
    """Two FedData of different types, served under named bases by one process."""
    return {"weights": constant(value, samples), "threshold": FedFloat(threshold)}


def bundle(value: float, samples: int, threshold: float):
    """The same two parts travelling in one payload and one round."""
    from fedsync import FedBundle

    return FedBundle({"weights": constant(value, samples), "threshold": FedFloat(threshold)})


def evaluating(value: float, samples: int, eval_samples: int, accuracy: float) -> FedArrays:
    """A constant-training model whose evaluation reports the global model's mean weight."""
    data = constant(value, samples)

    def evaluate(model):
        return eval_samples, {"accuracy": accuracy, "mean_w": float(model["w"].mean())}

    data.evaluate_fn = evaluate
    return data


def slow_first(seconds: float, value: float = 1.0) -> FedArrays:
    """Training takes ``seconds`` the first time only; sets every weight to ``value``."""
    calls = {"n": 0}

    def train(model):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(seconds)
        model["w"][...] = value
        return 1

    return FedArrays({"w": np.zeros(4, np.float32)}, train)


BIG = 1 << 21  # float32 elements: 8 MiB, several of the coordinator's 1 MiB read pieces


def big_model() -> dict[str, np.ndarray]:
    """A large first array, then a small last one: a reply's end arrives well after its start."""
    return {"big": np.zeros(BIG, np.float32), "last": np.zeros(3, np.float32)}


def big_constant(value: float, samples: int, delay: float = 0.0, spoil: str = "") -> FedArrays:
    """Training sets every weight to ``value`` after ``delay`` seconds.

    ``spoil="nan"`` makes the reply's very last value NaN (``"nan-first"``: its first); ``spoil="cut"`` makes the
    device's answer stop after the big array, as if it died while sending.
    """

    def train(model):
        time.sleep(delay)
        for a in model.values():
            a[...] = value
        if spoil == "nan":
            model["last"][-1] = np.nan
        if spoil == "nan-first":  # the reply's very first value: refused before any of it is summed
            model["big"][0] = np.nan
        return samples

    class CutShort(FedArrays):
        def serialize(self, repetition):
            payload = super().serialize(repetition)
            if spoil == "cut" and self.samples == samples:
                return _CutPayload(payload.frames)
            return payload

    return CutShort(big_model(), train)


class _CutPayload(codec.Payload):
    """Announces its whole length, then fails after the header and the first array."""

    def __iter__(self):
        yield from self.frames[:2]
        raise ConnectionAbortedError("device died while sending (test)")


def cut_when_read_again(value: float, samples: int) -> FedArrays:
    """Like ``big_constant``; its result's first download is whole, a second one stops after the first array."""

    def train(model):
        for a in model.values():
            a[...] = value
        return samples

    class Fickle(FedArrays):
        def serialize(self, repetition):
            payload = super().serialize(repetition)
            return _CutOnSecondRead(payload.frames) if self.samples == samples else payload

    return Fickle(big_model(), train)


class _CutOnSecondRead(codec.Payload):
    """Whole the first time it is sent; then announces its whole length and fails after the first array."""

    def __init__(self, frames):
        super().__init__(frames)
        self.sent = 0

    def __iter__(self):
        self.sent += 1
        if self.sent == 1:
            yield from self.frames
            return
        yield from self.frames[:2]
        raise ConnectionAbortedError("device died while sending the result again (test)")


def pattern(n: int, k: int) -> np.ndarray:
    """The values training number ``k`` leaves in a ``patterned`` model: distinct per round, exact in float32."""
    return ((np.arange(n) % 251) + 1000.0 * k).astype(np.float32)


class _NonRestoring(FedArrays):
    """An evaluate that loads the coordinator's arrays and leaves them: the model stays changed."""

    def evaluate(self, encoding, repetition):
        arrays, _ = codec.decode(encoding)
        self.set_arrays(arrays)
        return self.evaluate_fn(self.model)


def patterned(n: int, restore: bool = True, hold: str = "") -> FedArrays:
    """A model of ``n`` float32 values; its k-th training sets them to ``pattern(n, k)``.

    ``restore=False``: evaluation writes the coordinator's values and leaves them.
    ``hold``: a file path; each evaluation, once it wrote the model, waits (at most
    30 s) until that file exists, so a test can act while it is in progress.
    """
    calls = {"n": 0}

    def train(model):
        calls["n"] += 1
        model["w"][...] = pattern(n, calls["n"])
        return 5

    def evaluate(model):
        deadline = time.monotonic() + 30
        while hold and not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
        return 2, {"first": float(model["w"][0])}

    return (FedArrays if restore else _NonRestoring)({"w": np.zeros(n, np.float32)}, train, evaluate=evaluate)


def blocked(path: str) -> FedArrays:
    """Training waits (at most 60 s) until the file ``path`` exists: a device that stays busy."""

    def train(model):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        model["w"][...] = 1.0
        return 1

    return FedArrays({"w": np.zeros(4, np.float32)}, train)



def two_models(value: float, samples: int) -> dict:
    """Two array FedData under named bases: no text FedData a random body could satisfy."""
    return {"weights": constant(value, samples), "extra": constant(value + 1.0, samples)}
