"""FedData factories for the tree tests (tests/aggregator): leaves that train deterministically, and aggregators.

A leaf's training is a pure function of the model it receives (full-batch gradient descent on its own data), so
the same leaf processes can serve a flat run and a tree run and give the same replies.
"""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays, Remote
from fedsync.aggregator import Aggregator
from fedsync.strategies import FedAvg
from fedsync.transports.dial import Listener
from tests.support.devices.basic import linear_regression_data


def model() -> dict[str, np.ndarray]:
    return {"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)}


def declaration(exact: bool = True) -> FedArrays:
    """The model's declaration without training: what the top coordinator and every aggregator hold."""
    return FedArrays(model(), strategy=FedAvg(exact=exact))


def leaf(seed: int, n: int, extra: bool = False, fail: bool = False, empty: bool = False) -> FedArrays:
    """Linear regression on ``n`` examples of its own; reports ``loss``, and ``extra`` only when asked.

    ``fail``: training raises. ``empty``: reports 0 samples.
    """
    x, y = linear_regression_data(seed, n, shift=seed * 0.1)

    def train(m):
        if fail:
            raise RuntimeError(f"leaf {seed} cannot train today")
        if empty:
            return 0
        w, b = m["w"].astype(np.float64), m["b"].astype(np.float64)
        for _ in range(5):
            error = x @ w + b - y
            w -= 0.05 * x.T @ error / n
            b -= 0.05 * error.mean(axis=0)
        m["w"][...], m["b"][...] = w, b
        loss = float(np.mean((x @ w + b - y) ** 2))
        metrics = {"loss": loss, "extra": float(seed)} if extra else {"loss": loss}
        return n, metrics

    return FedArrays(model(), train)


def aggregator(
    urls: list[str], min_results: int | None = None, timeout: float = 30.0, tokens: dict | None = None
) -> Aggregator:
    """An aggregator over ``urls`` (leaves or aggregators), each with its token from ``tokens`` if given."""
    remotes = [Remote(url, token=(tokens or {}).get(url)) for url in urls]
    return Aggregator(declaration(), remotes, min_results=min_results, timeout=timeout)


def dialed_aggregator(port: int, tokens: dict[str, str], min_results: int | None = None) -> Aggregator:
    """An aggregator whose devices dial in to its own Listener on ``port`` (allow-list ``tokens``).

    Returns once every device on the allow-list registered (start them first: they retry until it listens).
    """
    listener = Listener("127.0.0.1", port, devices=tokens)
    listener.wait_for(len(tokens), timeout=60)
    return Aggregator(declaration(), listener.remotes(timeout=20), min_results=min_results, timeout=30)
