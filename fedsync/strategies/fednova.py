"""FedNova: normalized averaging, so devices that took more local steps do not pull the model their way.

Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020, equations (8)-(9) and the
authors' code (github.com/JYWa/FedNova). Device ``i`` starts from the model ``x``,
takes ``tau_i`` local steps to ``y_i`` and normalizes its update by ``a_i``, the
l1 norm of its steps' weights (``tau_i`` for plain SGD; with momentum ``rho``,
``sum_k (1 - rho**k) / (1 - rho)``). The coordinator then takes

    x <- x - tau_eff * sum_i p_i (x - y_i) / a_i,    tau_eff = sum_i p_i a_i,

``p_i`` the sample weights: FedAvg when every ``a_i`` is equal, and a straggler that
did fewer steps counts as much as its data, not as little as its work.

On the wire, :func:`finish` (the end of ``train``) sends ``z_i = x + (y_i - x) / a_i``
in place of ``y_i``, and ``a_i`` as the array ``fednova.steps`` (shape ``(1,)``,
float64); the coordinator folds both into FedAvg's exact sample-weighted mean
(order-free) and steps ``x + tau_eff * (mean(z) - x)``, which is the update above.
A reply whose ``fednova.steps`` is not in ``[1, 1e9]`` is refused (that device's failure).
Integer and boolean arrays take FedAvg's exact weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._util.checks import is_int, is_number
from .base import Arrays, Layout, Strategy, WeightedSum, fold_whole

__all__ = ["FedNova", "finish", "STEPS", "MAX_STEPS"]

STEPS = "fednova.steps"
"""The array (shape ``(1,)``, float64) carrying ``a_i``, a device's normalizing steps."""
MAX_STEPS = 1e9
"""The largest ``a_i`` a reply may carry."""


class FedNova(Strategy):
    """FedNova's coordinator side (Wang et al. 2020): the module docstring has the update.

    Devices end ``train`` with :func:`finish`::

        from fedsync.strategies import FedNova, fednova

        fed = FedArrays(arrays, train, strategy=FedNova())

        def train(arrays, config):
            steps = config["steps"]  # may differ from device to device
            for _ in range(steps):
                ...  # plain (or momentum) SGD
            fednova.finish(fed, steps=steps)
            return samples

    Without server momentum (the paper's ``gmf``) or a proximal term in ``a_i``.
    """

    tree_refusal = (
        "FedNova's normalized updates need an aggregator that carries fednova.steps, and aggregators run plain "
        "FedAvg without it"
    )
    device_hint = "fednova.finish(fed, steps=...) at the end of train"

    def companions(self, layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {STEPS: ((1,), np.dtype(np.float64))}

    def accumulator(self, current: Arrays) -> _NovaSum:
        return _NovaSum(current)

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        return fold_whole(self.accumulator(current), results)


class _NovaSum(WeightedSum):
    """FedAvg's exact mean of ``z_i`` and ``a_i``, then the step ``x + tau_eff * (mean(z) - x)``."""

    def __init__(self, current: Arrays) -> None:
        super().__init__(current)
        self._current = current

    def add(self, name: str, first: int, values: np.ndarray, samples: int) -> None:
        if name == STEPS and not ((values >= 1) & (values <= MAX_STEPS)).all():
            raise ValueError(f"{STEPS} must be in [1, {MAX_STEPS:g}] (the device's normalized local steps)")
        super().add(name, first, values, samples)

    def result(self, total: int) -> dict[str, np.ndarray]:
        merged = super().result(total)
        tau = float(merged[STEPS][0])  # tau_eff = sum_i p_i a_i
        for name, array in merged.items():
            if array.dtype.kind != "f" or name == STEPS:
                continue
            x = np.asarray(self._current[name], dtype=np.float64)
            merged[name] = (x + tau * (array.astype(np.float64) - x)).astype(array.dtype)
        return merged


def normalizer(steps: int, momentum: float = 0.0) -> float:
    """``a_i``'s l1 norm: ``steps`` for plain SGD, ``sum_{k=1..steps} (1 - m**k) / (1 - m)`` with momentum ``m``."""
    if momentum == 0.0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


def finish(fed: Any, *, steps: int, momentum: float = 0.0) -> None:
    """End a device's round: send ``z = x + (y - x) / a`` and ``a`` (:func:`normalizer`) for FedNova.

    ``steps``: the local steps taken this round (>= 1); ``momentum``: the local SGD's momentum
    (0 for plain SGD, else in ``(0, 1)``). Replaces the device's floating arrays with ``z``.

    Raises:
        ValueError: ``steps`` or ``momentum`` out of range.
        RuntimeError: called outside ``train``, twice in a round, or without ``FedNova()``.
    """
    if not is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"fednova.finish(steps=...) is the number of local steps taken, in [1, 1e9]; got {steps!r}")
    if not is_number(momentum) or not math.isfinite(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"fednova.finish(momentum=...) must be in [0, 1), got {momentum!r}")
    start = fed.global_weights()
    if start is None or fed.extras_written or STEPS not in fed.extra_arrays:
        raise RuntimeError(
            "fednova.finish(fed, steps=...) works inside train, once per round, on a FedArrays whose strategy is "
            "FedNova()"
        )
    a = normalizer(int(steps), float(momentum))
    trained = fed.get_arrays()
    normalized = {
        name: (np.asarray(start[name], np.float64) + (np.asarray(y, np.float64) - start[name]) / a).astype(y.dtype)
        for name, y in trained.items()
        if name in start
    }
    fed.set_arrays({**trained, **normalized})
    fed.extra_arrays[STEPS][...] = a
    fed.extras_written = True
