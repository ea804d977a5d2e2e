"""Central differential privacy: clip each device's update, add Gaussian noise to their sum, then merge.

:class:`DPFixedClipping` is DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018,
"Learning Differentially Private Recurrent Language Models", ICLR,
arXiv:1710.06963), in the style of Flower's
``DifferentialPrivacyServerSideFixedClipping``; :class:`DPAdaptiveClipping` adds
Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping" (NeurIPS, arXiv:1905.03871), as Flower's
``DifferentialPrivacyServerSideAdaptiveClipping``.

Each round, with ``g`` the coordinator's current model, ``n = num_sampled_clients``
and ``x_i`` the reply of device ``i``::

    Δ_i  = x_i - g                                   over all floating arrays together
    Δ̂_i  = Δ_i * min(1, C / ||Δ_i||₂)                 clipped: ||Δ̂_i|| <= C
    Δ̃    = (Σ_i Δ̂_i + N(0, (σC)² I)) / n             noise on the sum, then the fixed denominator n
    the wrapped strategy merges the single reply g + Δ̃ (weight 1)

The denominator is McMahan et al.'s fixed ``n`` (their estimator ``f̃_f``), not the
number of replies that arrived: the sum's sensitivity is ``C``, so the noise's
std on the mean is ``σC/n`` and the accountant's noise multiplier is exactly
``σ`` however many devices drop. Flower divides by the replies that arrived
(its FedAvg) and adds noise of std ``σC/n`` with ``n = num_sampled_clients``:
the same when every sampled device replies, a weaker guarantee than reported
when some drop. Sample counts are ignored (a device could claim any count, and
weighting would raise the sensitivity above ``C/n``).

The wrapped strategy then sees one reply, ``g + Δ̃``: FedAvg returns it, the server
optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) take their step along it. That
is post-processing of a DP output, so the guarantee holds whatever they do. The
robust strategies (FedMedian, Krum...) need every device's reply, which central
DP hides; they are refused (use them with :class:`fedsync.privacy.LocalDP`).
Integer and boolean arrays keep the coordinator's values: a device's counters
would otherwise leave without noise.

Memory: the strategy takes whole replies (one at a time: each is clipped and
added to the running sum, then released before the next downloads), so the
coordinator holds the model, one reply and the exact sum of the clipped updates
(:class:`~fedsync.strategies.exact.ExactSum` over float64 values: 34 bytes per
floating element, 8.5 float32 model copies), plus what the wrapped strategy
keeps; noise is drawn :data:`~fedsync.privacy.CHUNK` elements at a time.

Reruns: the sum does not depend on the order replies arrive in, and the noise
comes from ``numpy.random.default_rng(seed)`` in a fixed order (the clipped
count's noise first, then each floating array's, a chunk at a time), so with a
``seed`` the same replies give bit-identical results. With ``seed=None`` (OS
entropy, for production) no two runs are alike, by design.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping

import numpy as np

from .._util.checks import is_int, is_number
from ..errors import RoundFailed
from ..privacy import CHUNK, checked_positive, clip_factor, refuse_running_statistics, scaled_update, update_norm
from .base import Arrays, FedAvg, Strategy
from .exact import ExactSum
from .robust import EveryReply

__all__ = ["DPFixedClipping", "DPAdaptiveClipping"]

_STATE = "dp/clipping_norm"
_ROUNDS = "dp/rounds"
"""The rounds merged so far: each round's noise generator is seeded from ``seed`` and this number (checkpointed)."""


class DPFixedClipping(Strategy):
    """Central DP with a fixed clipping norm (DP-FedAvg, McMahan et al. 2018): see the module's docstring.

    Args:
        strategy: the strategy merging the privatized mean; :class:`FedAvg` by default.
            A server optimizer works; a robust strategy raises ValueError.
        noise_multiplier: ``σ`` >= 0; the noise on the sum has std ``σ·C`` per element.
        clipping_norm: ``C`` > 0, the bound on each update's L2 norm.
        num_sampled_clients: ``n``, the devices sampled per round (e.g.
            ``ceil(fraction * len(remotes))``); the privatized sum is divided by it.
        delta: the δ for which ``History`` reports ε (see :func:`fedsync.privacy.round_privacy`).
        seed: seeds the noise's :class:`numpy.random.Generator`; ``None`` (production)
            draws from OS entropy. A fixed seed is for tests: replayed noise can be removed.

    Attributes:
        last_round: after a merge, ``{"replies", "clipped", "clipping_norm", "noise_std"}``
            (``noise_std``: on the mean, ``σC/n``).

    Raises:
        ValueError: a parameter out of range, or a strategy that needs every reply.
        ModuleNotFoundError: dp-accounting (the ``dp`` extra) is not installed.
        RoundFailed: from :meth:`aggregate` when no device replied with samples.
    """

    tree_refusal = (
        "central DP clips each reply to bound one device's influence, and an aggregator's reply mixes several "
        "devices: the bound and the privacy spent would no longer hold; use LocalDP on the devices instead"
    )

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        delta: float = 1e-5,
        seed: int | None = None,
    ) -> None:
        self.strategy = FedAvg() if strategy is None else strategy
        if not isinstance(self.strategy, Strategy) or isinstance(self.strategy, DPFixedClipping):
            raise ValueError(
                f"strategy must be a fedsync strategy and not itself a DP wrapper, got {type(self.strategy).__name__}"
            )
        if type(self.strategy).companions is not Strategy.companions:
            raise ValueError(
                f"{type(self.strategy).__name__} sends arrays beside the model (control variates, local steps), "
                "which central DP would neither clip nor noise; use FedAvg or a server optimizer here"
            )
        if isinstance(self.strategy, EveryReply):
            raise ValueError(
                f"{type(self.strategy).__name__} needs every device's reply, but central DP merges only their "
                "noised sum; use FedAvg or a server optimizer here, or keep the robust strategy and add LocalDP "
                "on the devices"
            )
        self.noise_multiplier = checked_positive("noise_multiplier", noise_multiplier, zero=True)
        self.clipping_norm = checked_positive("clipping_norm", clipping_norm)
        if not is_int(num_sampled_clients) or num_sampled_clients < 1:
            raise ValueError(
                "num_sampled_clients must be an integer >= 1 (the devices sampled per round), got "
                f"{num_sampled_clients!r}"
            )
        self.num_sampled_clients = num_sampled_clients
        if not is_number(delta) or not 0 < delta < 1:
            raise ValueError(f"delta must be a number in (0, 1), e.g. 1e-5 (below 1/number of devices), got {delta!r}")
        self.delta = float(delta)
        if importlib.util.find_spec("dp_accounting") is None:  # fail here, not after the first round merged
            raise ModuleNotFoundError(
                "central DP reports the privacy spent (ε) with Google's dp-accounting: pip install 'fedsync[dp]'"
            )
        self.rng = np.random.default_rng(seed)  # checks the seed now; each round then draws from its own
        self.seed = seed
        self.rounds = 0
        self.last_round: dict[str, float] | None = None

    def accumulator(self, current: Arrays) -> None:
        return None  # clipping needs each update's whole norm before it is added

    def _update_noise_std(self) -> float:
        """The std of the noise on the sum of clipped updates."""
        return self.noise_multiplier * self.clipping_norm

    def _observe(self, norms: list[float]) -> None:
        """Called with the round's update norms before noise is drawn (adaptive clipping's hook)."""

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """Clip each reply's update, sum, add noise, divide by ``n``, and let the wrapped strategy merge ``g + Δ̃``.

        Raises:
            RoundFailed: no reply (with samples) arrived; nothing changes.
            RunningStatistics: ``current`` holds running statistics (BatchNorm's), before any reply is read:
                also when this strategy is nested in another or used without ``Federated``.
        """
        refuse_running_statistics(current.keys(), "central DP")
        # This round's noise comes from the seed and the round's number, not from the draws before it: a run
        # resumed from its checkpoint (which saves ``rounds``) draws what the uninterrupted run drew.
        self.rng = np.random.default_rng(None if self.seed is None else [self.seed, self.rounds])
        clip = self.clipping_norm
        floats = [name for name, a in current.items() if np.asarray(a).dtype.kind == "f"]
        # The clipped updates' exact sum: independent of the order replies arrive in (fedsync.strategies.exact).
        sums = {name: ExactSum(np.size(current[name]), np.float64) for name in floats}
        reference = {name: current[name] for name in floats}
        norms: list[float] = []
        replies = iter(results)
        while (result := next(replies, None)) is not None:
            arrays, _samples = result
            del result  # hold no reply while asking for the next: it may not download before
            norm = update_norm(arrays, reference)
            factor = clip_factor(norm, clip)
            norms.append(norm)
            if factor > 0:
                for name in floats:
                    x = np.asarray(arrays[name]).reshape(-1)
                    g = np.asarray(current[name]).reshape(-1)
                    acc = sums[name]
                    for first in range(0, x.size, CHUNK):
                        end = min(first + CHUNK, x.size)
                        acc.add(first, scaled_update(x[first:end], g[first:end], factor), 1)
            del arrays
        if not norms:
            raise RoundFailed(
                "no device reported any training samples, so there is nothing to merge; "
                "train(model) must return the number of samples it trained on, e.g. `return x.shape[0]`"
            )
        self._observe(norms)
        std = self._update_noise_std()
        n = self.num_sampled_clients
        privatized: dict[str, np.ndarray] = {}
        for name, a in current.items():
            a = np.asarray(a)
            if name not in sums:
                privatized[name] = np.array(a, copy=True)
                continue
            summed, g = sums.pop(name).mean(1, np.dtype(np.float64)), a.reshape(-1)  # the sum, rounded once
            for first in range(0, summed.size, CHUNK):
                end = min(first + CHUNK, summed.size)
                noisy = summed[first:end]
                if std > 0:
                    noisy += self.rng.normal(0.0, std, end - first)
                summed[first:end] = g[first:end] + noisy / n
            privatized[name] = summed.astype(a.dtype, copy=False).reshape(a.shape)
        self.last_round = {
            "replies": len(norms),
            "clipped": sum(1 for v in norms if not v <= clip),
            "clipping_norm": clip,
            "noise_std": std / n,
        }
        merged = self.strategy.aggregate(current, [(privatized, 1)])
        self.rounds += 1  # only once the round merged: a failed one draws the same noise when tried again
        return merged

    # -- state: the wrapped strategy's ----------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        return {**self.strategy.state(), _ROUNDS: np.array(self.rounds, np.int64)}

    def check_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        """The wrapped strategy's state, and ``dp/rounds`` (an int64 scalar in ``[0, 2**53]``) when present.

        A checkpoint written before the rounds were counted has none: its noise then starts over.
        """
        rounds = state.get(_ROUNDS)
        if rounds is not None and (
            not isinstance(rounds, np.ndarray)
            or rounds.shape != ()
            or rounds.dtype != np.int64
            or not 0 <= int(rounds) <= 2**53
        ):
            raise ValueError(
                f"{type(self).__name__} state {_ROUNDS!r} must be an int64 scalar in [0, 2**53], got {rounds!r}"[:300]
            )
        self.strategy.check_state({k: v for k, v in state.items() if k != _ROUNDS}, layout)

    def load_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        DPFixedClipping.check_state(self, state, layout)
        self.strategy.load_state({k: v for k, v in state.items() if k != _ROUNDS}, layout)
        self.rounds = int(state[_ROUNDS]) if _ROUNDS in state else 0


class DPAdaptiveClipping(DPFixedClipping):
    """Central DP whose clipping norm follows a quantile of the update norms (Andrew et al. 2021, Algorithm 1).

    Each round, after clipping with the current ``C``: ``b = #{i : ||Δ_i|| <= C}`` (the
    unclipped updates), noised ``b̃ = (b + N(0, σ_b²)) / n``, then the geometric update
    ``C ← C · exp(-η_C (b̃ - γ))``: ``C`` shrinks while more than the target share ``γ``
    of updates fit under it, and grows otherwise. Estimating ``b̃`` costs privacy too:
    the updates' noise multiplier becomes ``σ_Δ = (σ⁻² - (2σ_b)⁻²)^(-1/2)``, so that the
    round's overall noise multiplier (what ``History`` accounts) stays ``σ`` (Andrew et
    al., Theorem 1; Flower does the same).

    Args:
        strategy, noise_multiplier, num_sampled_clients, delta, seed: as :class:`DPFixedClipping`.
        initial_clipping_norm: ``C`` of the first round, > 0 (Flower's default 0.1).
        target_clipped_quantile: ``γ`` in [0, 1], the share of updates meant to fit under ``C`` (0.5).
        clip_norm_lr: ``η_C`` > 0 (0.2, the paper's suggestion).
        clipped_count_stddev: ``σ_b`` >= 0, the std of the noise on the count of unclipped
            updates; ``None``: ``n / 20`` (the paper's suggestion). Must be above ``σ/2``
            when ``σ > 0`` (e.g. ``n = 20`` devices allow ``σ < 2`` with the default).

    State: the current ``C``, saved in the coordinator's checkpoint as
    ``dp/clipping_norm`` (a float64 scalar) next to the wrapped strategy's state.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float = 0.1,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        delta: float = 1e-5,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier=noise_multiplier,
            clipping_norm=initial_clipping_norm,
            num_sampled_clients=num_sampled_clients,
            delta=delta,
            seed=seed,
        )
        gamma = checked_positive("target_clipped_quantile", target_clipped_quantile, zero=True)
        if gamma > 1:
            raise ValueError(f"target_clipped_quantile must be in [0, 1], got {target_clipped_quantile!r}")
        self.target_clipped_quantile = gamma
        self.clip_norm_lr = checked_positive("clip_norm_lr", clip_norm_lr)
        sigma_b = num_sampled_clients / 20 if clipped_count_stddev is None else clipped_count_stddev
        self.clipped_count_stddev = checked_positive("clipped_count_stddev", sigma_b, zero=True)
        if self.noise_multiplier > 0:
            # The count's noise multiplier is 2σ_b (its sensitivity is 1/2, bits centred at 1/2);
            # both together must cost no more than σ: 1/σ² = 1/σ_Δ² + 1/(2σ_b)².
            if self.noise_multiplier >= 2 * self.clipped_count_stddev:
                raise ValueError(
                    f"clipped_count_stddev ({self.clipped_count_stddev:g}) must be above noise_multiplier / 2 "
                    f"({self.noise_multiplier / 2:g}): below it, estimating the clipped share alone costs more privacy "
                    "than the whole budget. Raise clipped_count_stddev (or sample more devices: its default is n/20)"
                )
            self.update_noise_multiplier = (self.noise_multiplier**-2 - (2 * self.clipped_count_stddev) ** -2) ** -0.5
        else:
            self.update_noise_multiplier = 0.0

    def _update_noise_std(self) -> float:
        return self.update_noise_multiplier * self.clipping_norm

    def _observe(self, norms: list[float]) -> None:
        self._next_norm = self._adapted(norms)

    def _adapted(self, norms: list[float]) -> float:
        # Andrew et al. sum the centred bits b_i - 1/2 (sensitivity 1/2); with every sampled
        # device replying this is Flower's (Σ b_i + noise) / n.
        centred = sum(0.5 if v <= self.clipping_norm else -0.5 for v in norms)
        noise = float(self.rng.normal(0.0, self.clipped_count_stddev)) if self.clipped_count_stddev > 0 else 0.0
        noised = (centred + noise) / self.num_sampled_clients + 0.5
        new = self.clipping_norm * math.exp(-self.clip_norm_lr * (noised - self.target_clipped_quantile))
        return new if math.isfinite(new) and new > 0 else self.clipping_norm

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """As :meth:`DPFixedClipping.aggregate` with the current ``C``; ``C`` moves only once the round merged."""
        self._next_norm = self.clipping_norm
        merged = super().aggregate(current, results)
        self.clipping_norm = self._next_norm
        return merged

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), _STATE: np.array(self.clipping_norm, np.float64)}

    def check_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        if not state:
            return
        norm = state.get(_STATE)
        if (
            not isinstance(norm, np.ndarray)
            or norm.shape != ()
            or norm.dtype != np.float64
            or not (math.isfinite(float(norm)) and float(norm) > 0)
        ):
            raise ValueError(
                f"{type(self).__name__} state {_STATE!r} must be a positive finite float64 scalar, got {norm!r}"[:300]
            )
        super().check_state({k: v for k, v in state.items() if k != _STATE}, layout)

    def load_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        self.check_state(state, layout)
        if state:
            super().load_state({k: v for k, v in state.items() if k != _STATE}, layout)
            self.clipping_norm = float(state[_STATE])
