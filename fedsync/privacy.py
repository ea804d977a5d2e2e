"""Differential privacy's shared parts: clipping an update, Gaussian noise, local DP and the privacy accountant.

- :func:`update_norm` and :func:`clip_factor`: the L2 norm of a model update
  ``Δ = x - x_global`` over all its floating arrays together, and the factor
  ``min(1, C / ||Δ||)`` that clips it to norm ``C``.
- :class:`LocalDP`: clipping and noise applied on the device, before its reply
  leaves it (set ``fed.local_dp = LocalDP(...)`` on the device's FedArrays).
- :func:`epsilon` and :func:`round_privacy`: the privacy spent, ε for a given δ,
  by Google's ``dp-accounting`` RDP accountant (Mironov 2017, "Rényi Differential
  Privacy"; Mironov, Talwar and Zhang 2019 for the subsampled Gaussian). That
  library is behind the ``dp`` extra (``pip install 'fedsync[dp]'``) and is
  imported only when ε is computed.

Central DP (the coordinator clips and noises the sum) lives in
:mod:`fedsync.strategies.dp`; docs/privacy.md says what each one defends against.
The ε of a coordinator's run is computed by the coordinator
(``fedsync.coordinator._privacy``) from :func:`round_privacy`: this module is
the math only, and imports nothing of fedsync.

Noise comes from a :class:`numpy.random.Generator`. ``seed=None`` (the default)
seeds it from the operating system's entropy (``np.random.default_rng()``), as
production should; a fixed seed is for tests only (replayed noise can be
subtracted out).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from ._util.checks import is_int, is_number

__all__ = [
    "LocalDP",
    "RunningStatistics",
    "refuse_running_statistics",
    "running_statistics",
    "update_norm",
    "clip_factor",
    "scaled_update",
    "epsilon",
    "round_privacy",
    "checked_privacy",
    "checked_positive",
    "PRIVACY_KEYS",
    "CHUNK",
]

CHUNK = 1 << 18  # elements handled at a time: bounded scratch memory
PRIVACY_KEYS = ("epsilon", "delta", "noise_multiplier", "sampling_rate", "rounds")
"""The keys of ``RoundResult.privacy``."""


def checked_positive(name: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``zero``), or a ValueError naming ``name``."""
    if not is_number(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)


_RUNNING = re.compile(r"(?:^|[./])(running_mean|running_var|moving_mean|moving_variance)(?::\d+)?$")
"""A normalization layer's running statistics by their torch state-dict or Keras variable name."""


class RunningStatistics(ValueError):
    """DP was asked to privatize a normalization layer's running statistics (BatchNorm's), which it refuses."""


def running_statistics(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are a normalization layer's running statistics.

    torch's ``<layer>.running_mean`` / ``<layer>.running_var`` (BatchNorm, InstanceNorm with
    ``track_running_stats``) and Keras's ``<layer>/moving_mean`` / ``<layer>/moving_variance``.
    """
    return [name for name in names if _RUNNING.search(name)]


def refuse_running_statistics(names: Iterable[str], what: str) -> None:
    """Raise :class:`RunningStatistics` (a ``ValueError``) naming the layers if ``names`` hold running statistics.

    DP (``what``: central or local) privatizes the floating weights that train. A running
    mean or variance is a statistic of the training data, not a weight: noised, a variance
    turns negative (NaN outputs in eval mode); left out, it would either stay at its initial
    value (a wrong model in eval mode) or travel without noise, outside the guarantee. So it is
    refused, as Opacus refuses BatchNorm.
    """
    found = running_statistics(names)
    if not found:
        return
    layers = sorted({_RUNNING.sub("", name) or name for name in found})
    shown = ", ".join(repr(layer) for layer in layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
    raise RunningStatistics(
        f"{what} noises the floating weights that train, but layer {shown} keeps running statistics of "
        f"the data ({found[0]!r}): noised they go negative (NaN outputs in eval mode), unnoised they leak. "
        "Replace BatchNorm by GroupNorm or LayerNorm (Opacus's ModuleValidator.fix(model) does it for torch), "
        "or build it with track_running_stats=False (torch); see docs/privacy.md"
    )


def _floats(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, a in arrays.items() if np.asarray(a).dtype.kind == "f"]


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||arrays - reference||_2`` over every floating array of ``reference`` together, in float64.

    Computed a chunk of :data:`CHUNK` elements at a time (no model-sized temporary).
    Integer and boolean arrays are not part of the update (DP leaves them at
    ``reference``'s values, see :class:`LocalDP` and :mod:`fedsync.strategies.dp`).
    """
    norm = _norm(arrays, reference, 0)
    if math.isinf(norm):  # float64 values whose squares overflow: measured scaled, so a finite update has a finite norm
        norm = math.ldexp(_norm(arrays, reference, -600), 600)
    return norm


def _norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], shift: int) -> float:
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for name in _floats(reference):
            x = np.asarray(arrays[name]).reshape(-1)
            g = np.asarray(reference[name]).reshape(-1)
            for first in range(0, x.size, CHUNK):
                d = scaled_update(x[first : first + CHUNK], g[first : first + CHUNK], math.ldexp(1.0, shift))
                total += float(np.dot(d, d))
    return math.sqrt(total)


def scaled_update(x: np.ndarray, g: np.ndarray, factor: float) -> np.ndarray:
    """``(x - g) * factor`` in float64 (``factor`` <= 1), finite whenever the result is.

    A difference past float64's range (values near 1.8e308 of opposite signs) is taken
    halved, ``(x/2 - g/2) * (2 * factor)``; every other element as written.
    """
    x64, g64 = x.astype(np.float64, copy=False), g.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        d = x64 - g64
    wide = ~np.isfinite(d)
    d *= factor
    if wide.any():
        d[wide] = (x64[wide] * 0.5 - g64[wide] * 0.5) * (2 * factor)
    return d


def clip_factor(norm: float, clipping_norm: float) -> float:
    """``min(1, C / norm)``: multiplying the update by it makes its norm at most ``C``; 0 for a non-finite norm."""
    if not math.isfinite(norm):
        return 0.0  # an update of NaN/inf counts as no update: within the bound, nothing leaks
    return 1.0 if norm <= clipping_norm else clipping_norm / norm


class LocalDP:
    """Local differential privacy: the device clips its update and adds Gaussian noise before replying.

    After ``train``, with ``g`` the global arrays this device received and ``x`` its
    trained arrays, each floating array becomes ``g + Δ * min(1, C/||Δ||) + N(0, (σC)²)``
    per element, ``Δ = x - g`` and ``||Δ||`` the L2 norm over all floating arrays
    together. Integer and boolean arrays go back as received (their values would
    otherwise leave without noise). The device's own model holds the privatized
    arrays afterwards; the next round overwrites them with the global ones.

    This is the Gaussian mechanism on an update of L2 sensitivity ``C`` (the
    device's whole dataset replaced by none moves the clipped update by at most
    ``C``: device-level privacy), so each reply is private against everyone who
    sees it, the coordinator included. The cost: the noise does not average down
    across devices the way central DP's does (the mean of ``n`` replies carries
    noise ``σC/√n`` instead of central DP's ``σC/n``).

    Args:
        clipping_norm: ``C`` > 0, in the units of the weights.
        noise_multiplier: ``σ`` >= 0; the noise's std is ``σ·C`` per element.
        seed: for the generator; ``None`` (production) draws from OS entropy.

    Use: ``fed = FedArrays(arrays, train); fed.local_dp = LocalDP(clipping_norm=1.0, noise_multiplier=1.0)``
    on the device (the Keras and torch adapters too: it is an attribute of FedArrays).
    """

    def __init__(self, *, clipping_norm: float, noise_multiplier: float, seed: int | None = None) -> None:
        self.clipping_norm = checked_positive("clipping_norm", clipping_norm)
        self.noise_multiplier = checked_positive("noise_multiplier", noise_multiplier, zero=True)
        self.rng = np.random.default_rng(seed)
        self.last_norm: float | None = None
        """The norm of the last update before clipping (kept on the device, never sent)."""

    def apply(self, arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The privatized arrays: new arrays of ``arrays``' dtypes and shapes (``arrays`` unchanged).

        ``global_arrays``: the floating arrays received this round (FedArrays'
        ``global_arrays``); an array not in it is returned as in ``global_arrays``'s
        absence: integer and boolean arrays are handled by the caller.

        Raises:
            ValueError: ``global_arrays`` lacks a floating array of ``arrays``.
            RunningStatistics: ``arrays`` hold a normalization layer's running statistics
                (:func:`refuse_running_statistics`).
        """
        refuse_running_statistics(_floats(arrays), "local DP")
        missing = [name for name in _floats(arrays) if name not in global_arrays]
        if missing:
            raise ValueError(f"local DP needs this round's global value of every floating array; missing {missing[:5]}")
        reference = {name: global_arrays[name] for name in _floats(arrays)}
        self.last_norm = update_norm(arrays, reference)
        factor = clip_factor(self.last_norm, self.clipping_norm)
        std = self.noise_multiplier * self.clipping_norm
        out = {}
        for name, g in reference.items():
            x = np.asarray(arrays[name]).reshape(-1)
            flat_g = np.asarray(g).reshape(-1)
            new = np.empty(x.size, np.asarray(arrays[name]).dtype)
            for first in range(0, x.size, CHUNK):
                end = min(first + CHUNK, x.size)
                d = scaled_update(x[first:end], flat_g[first:end], factor)
                if std > 0:
                    d += self.rng.normal(0.0, std, end - first)
                new[first:end] = flat_g[first:end] + d
            out[name] = new.reshape(np.shape(arrays[name]))
        return out

    def epsilon(self, delta: float, rounds: int) -> float:
        """ε of this device's replies over ``rounds`` rounds at ``delta``.

        By the RDP accountant, without sampling amplification (every round counts in full).
        """
        return epsilon(self.noise_multiplier, [(Fraction(1), rounds)], delta)


def epsilon(noise_multiplier: float, rounds: Iterable[tuple[Fraction | float, int]], delta: float) -> float:
    """ε for ``delta`` after the rounds given as ``(sampling rate q, count)`` runs, by dp-accounting's RDP accountant.

    Each round is ``PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier))``
    (``GaussianDpEvent`` alone when ``q == 1``), composed in order.
    Returns ``math.inf`` when ``noise_multiplier`` is 0 (no guarantee).

    Raises:
        ModuleNotFoundError: dp-accounting is not installed; the message says how.
        ValueError: ``delta`` not in (0, 1), a rate not in (0, 1], or a negative count.
    """
    sigma = checked_positive("noise_multiplier", noise_multiplier, zero=True)
    return _account([(sigma, q, count) for q, count in rounds], delta)


def _account(runs: Iterable[tuple[float, Fraction | float, int]], delta: float) -> float:
    """ε at ``delta`` of the runs ``(σ, q, count)`` composed in order; ``math.inf`` if some σ is 0."""
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "reporting the privacy spent (ε) needs Google's dp-accounting: pip install 'fedsync[dp]'"
        ) from exc
    if not is_number(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), e.g. 1e-5 (below 1/number of devices), got {delta!r}")
    accountant = rdp.RdpAccountant()
    # dp-accounting logs (through absl) each fractional RDP order whose series does not
    # converge, five lines a round for common settings; it leaves that order out, and ε
    # stays a valid bound (the minimum over the other orders). Not the user's concern.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return _compose(accountant, dp_accounting, runs, delta)
    finally:
        absl.setLevel(level)


def _compose(
    accountant: Any, dp_accounting: Any, runs: Iterable[tuple[float, Fraction | float, int]], delta: float
) -> float:
    for sigma, q, count in runs:
        q = float(q)
        if not 0 < q <= 1 or not is_int(count) or count < 0:
            raise ValueError(f"each round needs a sampling rate in (0, 1] and a count >= 0, got {q!r}, {count!r}")
        if sigma == 0:
            return math.inf
        event: Any = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return float(accountant.get_epsilon(delta))


def round_privacy(
    previous: Iterable[Mapping[str, Any] | None], noise_multiplier: float, sampling_rate: Fraction, delta: float
) -> dict[str, Any]:
    """``RoundResult.privacy`` for a round that just merged under central DP.

    ``previous``: the earlier rounds' ``privacy`` entries (``None`` for rounds without
    DP, which are not counted: they released their updates without a guarantee).
    Runs of equal ``(σ, q)`` compose as one self-composed event, so the cost grows
    with the number of distinct settings, not of rounds. ε is ``None`` (JSON null)
    when it is infinite (σ = 0).

    Raises:
        ModuleNotFoundError: dp-accounting is not installed.
    """
    runs: list[tuple[float, float, int]] = []
    for row in [*previous, {"noise_multiplier": noise_multiplier, "sampling_rate": float(sampling_rate)}]:
        if not row:
            continue
        key = (float(row["noise_multiplier"]), float(row["sampling_rate"]))
        if runs and runs[-1][:2] == key:
            runs[-1] = (*key, runs[-1][2] + 1)
        else:
            runs.append((*key, 1))
    eps = _account(runs, delta)
    return {
        "epsilon": eps if math.isfinite(eps) else None,
        "delta": float(delta),
        "noise_multiplier": float(noise_multiplier),
        "sampling_rate": float(sampling_rate),
        "rounds": sum(count for _, _, count in runs),
    }


def checked_privacy(row: Any, what: str) -> dict[str, Any]:
    """A ``RoundResult.privacy`` entry read from JSON or a checkpoint, checked; ValueError names the bad key."""
    if not isinstance(row, dict) or set(row) != set(PRIVACY_KEYS):
        keys = sorted(str(k)[:40] for k in row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{what}: privacy must be null or an object with keys {list(PRIVACY_KEYS)}, got {keys}")

    def number(key: str, low: float, high: float, *, none: bool = False, low_open: bool = False) -> None:
        value = row[key]
        if none and value is None:
            return
        if (
            not is_number(value)
            or not math.isfinite(value)
            or value > high
            or value < low
            or (low_open and value == low)
        ):
            raise ValueError(
                f"{what}: privacy {key} must be a finite number in {'(' if low_open else '['}{low}, {high}], got "
                f"{str(value)[:40]}"
            )

    number("epsilon", 0.0, math.inf, none=True)
    number("delta", 0.0, 1.0, low_open=True)
    number("noise_multiplier", 0.0, math.inf)
    number("sampling_rate", 0.0, 1.0, low_open=True)
    rounds = row["rounds"]
    if type(rounds) is not int or not 1 <= rounds <= 2**31:
        raise ValueError(f"{what}: privacy rounds must be an integer >= 1, got {str(rounds)[:40]}")
    return dict(row)
