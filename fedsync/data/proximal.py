"""FedProx's proximal term on the device: ``mu/2 * ||w - w_global||^2``.

FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020) adds this term to each device's local loss,
so local training cannot drift far from the global model it started from; the
server side is FedAvg unchanged. An array FedData keeps a copy of the global
weights it received each round (:func:`snapshot`); ``fed.proximal_term(mu)``
returns the term as a float (numpy, :class:`fedsync.FedArrays`) or as a tensor
to add to the loss (``FedTorch``, ``FedKeras``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._util.json import shown

__all__ = ["snapshot", "checked_mu", "numpy_term", "NO_GLOBAL"]

NO_GLOBAL = (
    "proximal_term() needs the global weights of this round, and none were received yet; "
    "call it inside train(model, config), which runs after the coordinator's weights were loaded"
)


def snapshot(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Owned copies of the floating arrays among ``arrays`` (the global model of this round).

    Copies, not views: the payload's buffer is reused for the next round's payload.
    Integer and boolean arrays (counters such as ``num_batches_tracked``) are left
    out: they have no gradient.
    """
    return {name: np.array(a, copy=True) for name, a in arrays.items() if np.asarray(a).dtype.kind == "f"}


def checked_mu(mu: Any) -> float:
    """``mu`` as a finite float >= 0.

    Raises:
        ValueError: ``mu`` is not a finite number >= 0 (a string from a config, a NaN).
    """
    if (
        isinstance(mu, bool)
        or not isinstance(mu, (int, float, np.integer, np.floating))
        or not (math.isfinite(float(mu)) and mu >= 0)
    ):
        raise ValueError(
            f"mu must be a finite number >= 0, got {shown(mu, 40)}; e.g. fed.proximal_term(config.get('mu', 0.01))"
        )
    return float(mu)


def numpy_term(current: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray] | None, mu: Any) -> float:
    """``mu/2 * sum ||current - global||^2`` over the floating arrays, in float64.

    Raises:
        RuntimeError: no global arrays were received yet.
        ValueError: a bad ``mu`` (:func:`checked_mu`).
    """
    mu = checked_mu(mu)
    if global_arrays is None:
        raise RuntimeError(NO_GLOBAL)
    total = 0.0
    for name, start in global_arrays.items():
        difference = np.asarray(current[name], np.float64) - start
        total += float(np.vdot(difference, difference))
    return 0.5 * mu * total
