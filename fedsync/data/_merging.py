"""What FedArrays' merge and receive share: the empty-round check, callbacks, finiteness, refusals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import EmptyRound, RemoteError, failure_reason
from ..strategies import Accumulator
from ..wire.config import Config, takes_extra
from ..wire.shapes import DeviceReport

__all__ = ["empty", "call", "finite", "add_whole", "why", "Rejected", "PIECE"]

PIECE = 1 << 20  # bytes of a reply read and folded at a time


def empty(kept: list[DeviceReport]) -> None:
    """Raise :class:`~fedsync.errors.EmptyRound` if every reply read reported 0 samples (a straggler's, on purpose)."""
    if kept and not any(report["samples"] for report in kept):
        raise EmptyRound(
            f"every device that answered ({len(kept)}) reported 0 samples (a straggler dropping its work, or no "
            "data), so there is nothing to merge and the model is unchanged; Federated(empty_rounds='keep') (also "
            "in run_simulation) keeps the model, records the round as empty and goes on",
            reports=kept,
        )


def call(function: Callable[..., Any], model: Any, config: Config | None) -> Any:
    """``function(model, config)`` if it takes a second argument, else ``function(model)``."""
    return function(model, config or {}) if takes_extra(function, 1) else function(model)


def finite(a: np.ndarray) -> bool:
    """No NaN or infinity in ``a``, scanned a chunk at a time (no model-sized temporary)."""
    if a.dtype.kind != "f":
        return True
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i : i + PIECE]).all() for i in range(0, flat.size, PIECE))


def add_whole(accumulator: Accumulator, arrays: Mapping[str, np.ndarray], report: DeviceReport) -> DeviceReport:
    """Fold whole, checked arrays in; returns their ``report``."""
    if (samples := report["samples"]) > 0:
        accumulator.start(samples)
        for name, a in arrays.items():
            accumulator.add(name, 0, a.reshape(-1), samples)
    return report


def why(exc: Exception) -> str:
    """Why a reply was refused: a transport error's type and reason, else the message."""
    if isinstance(exc, Rejected):
        return exc.reason
    if isinstance(exc, RemoteError):
        return failure_reason(exc)
    return str(exc)  # a codec's or a check's message: its type adds nothing


class Rejected(Exception):
    """A reply refused during a merge; ``spoiled``: part of it was already folded into the sum."""

    def __init__(self, reason: str, spoiled: bool) -> None:
        super().__init__(reason)
        self.reason, self.spoiled = reason, spoiled
