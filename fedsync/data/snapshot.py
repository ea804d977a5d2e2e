"""A FedData's coordinator state held in memory: :class:`Snapshot`, what a checkpoint saves without the disk.

:class:`fedsync.data.bundle.FedBundle` takes one of each part before merging it, so
that a part's failed merge leaves the parts merged before it unchanged too;
:mod:`fedsync.coordinator.checkpoint` restores a saved payload the same way
(:func:`restore`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..protocol import FedData
from ..strategies import FedAvg, Strategy

__all__ = ["Snapshot", "restore", "strategy_of"]


def strategy_of(data: FedData) -> Strategy | None:
    """``data.strategy`` when it is a :class:`~fedsync.strategies.Strategy`, else ``None`` (no such attribute too)."""
    strategy = getattr(data, "strategy", None)
    return strategy if isinstance(strategy, Strategy) else None


class Snapshot:
    """A FedData's coordinator state held in memory, to put back if a later step fails.

    What a checkpoint saves, without the disk: the FedData's ``serialize(repetition)``
    (copied, so later writes to the model do not reach it) and its strategy's state.
    Costs one copy of the model. :class:`fedsync.data.bundle.FedBundle` uses it so that a
    part's failed merge leaves the parts merged before it unchanged too.
    """

    def __init__(self, data: FedData, repetition: int) -> None:
        self.data, self.repetition = data, repetition
        encoding = data.serialize(repetition)
        self.encoding = encoding if isinstance(encoding, str) else bytes(encoding)
        strategy = strategy_of(data)
        self.strategy_state = {k: np.array(v, copy=True) for k, v in strategy.state().items()} if strategy else {}
        self.attributes = {
            k: getattr(data, k) for k in ("samples", "metrics", "metric_weights", "last_merge") if hasattr(data, k)
        }

    def restore(self) -> None:
        """Put the state back (the merge of the saved payload under FedAvg, as a checkpoint restores)."""
        restore(self.data, self.encoding, self.repetition)
        strategy = strategy_of(self.data)
        if strategy is not None and self.strategy_state:
            strategy.load_state(self.strategy_state, self.data.layout())  # type: ignore[attr-defined]  # an array kind: it has a strategy
        for name, value in self.attributes.items():
            setattr(self.data, name, value)


def restore(data: FedData, encoding: Any, repetition: int) -> None:
    """Put a saved state back into ``data``: the merge of one payload, under FedAvg, is that payload.

    ``encoding``: what ``data.serialize(repetition)`` returned (bytes or text). The
    strategy is FedAvg during the merge (a server optimizer must not step, nor Krum
    refuse a single reply), and ``data``'s own strategy again afterwards.

    Raises:
        ValueError, RoundFailed: as ``data.merge`` raises for a payload it refuses.
    """
    strategy = strategy_of(data)
    if strategy is None:
        data.merge([encoding], repetition)
        return
    getattr(data, "extra_arrays", None)  # made from data's own strategy, not FedAvg's (none): the payload's layout
    data.strategy = FedAvg()  # type: ignore[attr-defined]  # an array kind (strategy_of checked it)
    try:
        data.merge([encoding], repetition)
    finally:
        data.strategy = strategy  # type: ignore[attr-defined]  # an array kind (strategy_of checked it)
