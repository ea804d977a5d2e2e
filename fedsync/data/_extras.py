"""Arrays a strategy adds to a FedArrays: those that travel beside the model, and those a device keeps.

SCAFFOLD sends control variates both ways and keeps each device's own; FedNova sends each
device's normalizing steps (:meth:`~fedsync.strategies.Strategy.companions`,
:meth:`~fedsync.strategies.Strategy.device_arrays`). They are made once, zero, from the
strategy the FedArrays has when it first needs them, and keep that layout (a checkpoint's
restore swaps the strategy for FedAvg, never the payload's layout).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

__all__ = ["make", "model_part"]


def make(fed: Any) -> dict[str, np.ndarray]:
    """The travelling arrays of ``fed``'s strategy, zero; its device arrays added, zero, to ``fed.state``.

    Raises:
        ValueError: a model array already has one of their names, or ``state=`` holds one of
            the device arrays' names with another shape or dtype.
    """
    everything = fed.layout()
    layout = fed._shared_part(everything)  # the arrays that travel: a local layer's control variate would leak
    travelling = fed.strategy.companions(layout)
    kept = fed.strategy.device_arrays(layout)
    clash = sorted(set(everything) & (set(travelling) | set(kept)))
    if clash:
        raise ValueError(
            f"{type(fed.strategy).__name__} adds arrays named {clash[:3]}, which the model already has; "
            "rename those model arrays"
        )
    state: MutableMapping[str, np.ndarray] = fed.state
    for name, (shape, dtype) in kept.items():
        have = state.get(name)
        if have is None:
            state[name] = np.zeros(shape, dtype)
        elif have.shape != tuple(shape) or have.dtype != dtype:
            raise ValueError(
                f"state= holds {name!r} as {have.shape} {have.dtype}, but {type(fed.strategy).__name__} keeps it "
                f"as {tuple(shape)} {np.dtype(dtype)}"
            )
    return {name: np.zeros(shape, dtype) for name, (shape, dtype) in travelling.items()}


def model_part(arrays: Mapping[str, np.ndarray], extras: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` without the travelling arrays' names."""
    return {name: a for name, a in arrays.items() if name not in extras}
