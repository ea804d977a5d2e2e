"""The privacy a coordinator's run has spent: ε after each round merged under central DP.

:mod:`fedsync.privacy` holds the accountant's math; this module reads what it needs
from the coordinator running the round (a :class:`Run`, which
:class:`~fedsync.coordinator.federated.Federated` is): its strategy, its sample size
and the ``privacy`` entries of its history.

Internal: called by :meth:`Federated.round <fedsync.coordinator.federated.Federated.round>`;
its names may change without notice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sized
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from ..privacy import refuse_running_statistics, round_privacy
from ..strategies.dp import DPFixedClipping
from ._round import sample_size
from .history import RoundResult

__all__ = ["Run", "coordinator_privacy", "check_central_dp"]

logger = logging.getLogger("fedsync")


class Run(Protocol):
    """What the ε of a run reads from the coordinator running it (a ``Federated``), read-only."""

    @property
    def data(self) -> Any:
        """The coordinator's FedData; central DP is on when its ``strategy`` is a ``DPFixedClipping``."""

    @property
    def remotes(self) -> Sized:
        """The devices a round samples from."""

    @property
    def share(self) -> Fraction:
        """The exact share of ``remotes`` a round samples."""

    @property
    def min_results(self) -> int | None:
        """The quorum, which may raise the sample size."""

    @property
    def history(self) -> Iterable[RoundResult]:
        """The rounds merged so far, the one just merged last."""


def check_central_dp(data: Any) -> None:
    """Refuse central DP over a model with running statistics (BatchNorm's), before any round.

    Raises:
        RunningStatistics: a ``ValueError`` naming the layer and what to do instead
            (:func:`fedsync.privacy.refuse_running_statistics`).
    """
    if not isinstance(getattr(data, "strategy", None), DPFixedClipping) or not callable(getattr(data, "layout", None)):
        return
    floats = [name for name, (_, dtype) in data.layout().items() if np.dtype(dtype).kind == "f"]
    refuse_running_statistics(floats, "central DP")


def coordinator_privacy(federated: Run) -> dict[str, Any] | None:
    """The ``privacy`` entry of the round ``federated`` just merged, or ``None`` without central DP.

    The sampling rate is the share of remotes each round samples,
    ``q = ceil(fraction * len(remotes)) / len(remotes)`` (``min_results`` may raise it;
    :func:`~fedsync.coordinator._round.sample_size`, the count ``Federated.sample`` draws),
    exact: it is ``fraction`` itself when ``fraction * len(remotes)`` is whole. The
    accountant treats it as Poisson sampling at rate ``q``; fedsync samples a fixed
    number of devices without replacement, for which that is the usual
    approximation (as in McMahan et al. 2018), not a proof.

    Raises:
        ModuleNotFoundError: central DP is on and dp-accounting is not installed.
    """
    strategy = getattr(federated.data, "strategy", None)
    if not isinstance(strategy, DPFixedClipping):
        return None
    n = len(federated.remotes)
    count = sample_size(federated.share, n, federated.min_results)
    if count != strategy.num_sampled_clients:
        logger.warning(
            "%s(num_sampled_clients=%d) but the coordinator samples %d of %d devices a round: "
            "the mean is divided by %d",
            type(strategy).__name__,
            strategy.num_sampled_clients,
            count,
            n,
            strategy.num_sampled_clients,
        )
    return round_privacy(
        [r.privacy for r in federated.history], strategy.noise_multiplier, Fraction(count, n), strategy.delta
    )
