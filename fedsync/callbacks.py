"""Callbacks for :meth:`fedsync.Federated.fit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .history import RoundResult

if TYPE_CHECKING:
    from .client import Federated

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """A ``fit`` callback that stops when a metric has not improved for ``patience`` rounds.

    Args:
        metric: the metric's name, e.g. ``"accuracy"``.
        patience: rounds without improvement before stopping.
        mode: ``"max"`` (higher is better) or ``"min"``.
        evaluation: read the metric from federated evaluation (else from training).
    """

    def __init__(self, metric: str, patience: int = 3, mode: str = "max", evaluation: bool = True) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.patience, self.mode, self.evaluation = metric, patience, mode, evaluation
        self.best: float | None = None
        self.waited = 0

    def __call__(self, alg: "Federated", result: RoundResult) -> bool:
        source = result.evaluation.metrics if (self.evaluation and result.evaluation) else None if self.evaluation else result.metrics
        if source is None or self.metric not in source:
            return False
        value = source[self.metric]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.waited = value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience
