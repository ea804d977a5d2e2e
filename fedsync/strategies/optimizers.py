"""Server optimizers on FedAvg's mean: FedAvgM, FedAdam, FedYogi and FedAdagrad.

Each one streams like :class:`~fedsync.strategies.FedAvg`: replies fold into the
sample-weighted running mean as they download, then one server step moves the
model along the pseudo-gradient. The coordinator holds the model, the mean (one
copy, which becomes the new model) and the optimizer's state (one or two copies
of the floating arrays), whatever the number of devices.

Integer and boolean arrays (counters such as torch's ``num_batches_tracked``,
masks) are not parameters a gradient moves: they take FedAvg's exact weighted
mean rounded half to even (booleans: weighted majority), and keep no state.

The step is computed twice, a chunk at a time: once to check that the new model
and state are finite, then to write them. A step that would overflow fails the
round (:class:`~fedsync.errors.RoundFailed`) with the model and the state unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .._util.checks import is_number
from ..errors import RoundFailed
from .base import CHUNK, Arrays, FedAvg, WeightedSum, accumulator_dtype

__all__ = ["FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"]

Layout = Mapping[str, "tuple[tuple[int, ...], np.dtype]"]


def _rate(
    name: str, value: float, *, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a float inside the given interval, or a ValueError naming it."""
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


class _ServerStep(WeightedSum):
    """FedAvg's running mean; :meth:`result` then takes the strategy's server step from ``current``."""

    def __init__(self, current: Arrays, strategy: _ServerOptimizer) -> None:
        super().__init__(current)
        self._current = current
        self._strategy = strategy

    def result(self, total: int) -> dict[str, np.ndarray]:
        merged = super().result(total)
        return self._strategy._step(self._current, self, merged)


class _ServerOptimizer(FedAvg):
    """A server optimizer on the pseudo-gradient; subclasses give ``_slots`` and ``_update``."""

    _slots: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._state: dict[str, np.ndarray] = {}

    def accumulator(self, current: Arrays) -> _ServerStep:
        return _ServerStep(current, self)

    # -- the step ------------------------------------------------------------------------

    def _initial(self, slot: str) -> float:
        """Every element's value in ``slot`` before the first round."""
        return 0.0

    def _update(
        self, x: np.ndarray, mean: np.ndarray, slots: list[np.ndarray], fresh: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """New values of the state ``slots`` and of the model, for one chunk (new arrays, inputs unchanged)."""
        raise NotImplementedError

    def _identity(self) -> bool:
        """The step returns the mean itself (then computed exactly as FedAvg's)."""
        return False

    def _step(self, current: Arrays, acc: WeightedSum, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        floats = [name for name, (_, dtype) in acc.layout.items() if dtype.kind == "f"]
        if not floats or self._identity():
            return merged
        fresh = not self._state
        state: dict[str, np.ndarray] = {}
        for name in floats:
            shape, dtype = acc.layout[name]
            for slot in self._slots:
                key = f"{slot}/{name}"
                if fresh:
                    state[key] = np.full(shape, self._initial(slot), accumulator_dtype(dtype))
                else:
                    state[key] = self._state[key]
        with np.errstate(over="ignore", invalid="ignore"):  # found and reported by the check below
            self._apply(current, acc, state, floats, fresh)
        for name in floats:
            shape, dtype = acc.layout[name]
            merged[name] = acc.sums[name].astype(dtype, copy=False).reshape(shape)
        self._state = state
        return merged

    def _apply(
        self, current: Arrays, acc: WeightedSum, state: dict[str, np.ndarray], floats: list[str], fresh: bool
    ) -> None:
        """Check the step is finite everywhere, then write the new model into ``acc.sums`` and the new ``state``."""
        for write in (False, True):  # check everything first: a failed step changes nothing
            for name in floats:
                x = np.asarray(current[name]).reshape(-1)
                mean = acc.sums[name]
                slots = [state[f"{slot}/{name}"].reshape(-1) for slot in self._slots]
                for first in range(0, x.size, CHUNK):
                    end = min(first + CHUNK, x.size)
                    # In float64, cast back once: float32's delta * delta overflows at |delta| = 1.8e19, and
                    # mean - x past 3.4e38, where the new model and state are finite float32 values.
                    new_slots, new_x = self._update(
                        x[first:end].astype(np.float64),
                        mean[first:end].astype(np.float64),
                        [s[first:end].astype(np.float64) for s in slots],
                        fresh,
                    )
                    new_x = new_x.astype(mean.dtype)
                    new_slots = [a.astype(t.dtype) for a, t in zip(new_slots, slots, strict=True)]
                    if not write:
                        if not all(np.isfinite(a).all() for a in (new_x, *new_slots)):
                            raise RoundFailed(
                                f"{type(self).__name__}'s server step on array {name!r} overflows (NaN or infinity); "
                                "the model and the optimizer state were left unchanged. Lower eta or the devices' "
                                "learning rate"
                            )
                        continue
                    for target, value in zip(slots, new_slots, strict=False):
                        target[first:end] = value
                    mean[first:end] = new_x

    # -- state for checkpoints -------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """``"<slot>/<array name>"`` -> that array's state (shape of the array, float32 or float64).

        Empty before the first round.
        """
        return dict(self._state)

    def check_state(self, state: Mapping[str, np.ndarray], layout: Layout) -> None:
        if not state:
            return
        expected = {
            f"{slot}/{name}": (tuple(shape), accumulator_dtype(np.dtype(dtype)))
            for name, (shape, dtype) in layout.items()
            if np.dtype(dtype).kind == "f"
            for slot in self._slots
        }
        if state.keys() != expected.keys():
            missing, unknown = sorted(expected.keys() - state.keys())[:5], sorted(state.keys() - expected.keys())[:5]
            raise ValueError(
                f"{type(self).__name__} state does not fit the model: missing {missing}, unexpected {unknown}"
            )
        for key, array in state.items():
            shape, dtype = expected[key]
            if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype:
                found = f"{getattr(array, 'shape', None)} {getattr(array, 'dtype', type(array).__name__)}"
                raise ValueError(f"{type(self).__name__} state {key!r}: expected {shape} {dtype.name}, got {found}")
            if not np.isfinite(array).all():
                raise ValueError(f"{type(self).__name__} state {key!r} holds NaN or infinity")
            if key.startswith("v/") and (array < 0).any():
                raise ValueError(
                    f"{type(self).__name__} state {key!r} holds negative values; a second moment is never negative"
                )

    def load_state(self, state: Mapping[str, np.ndarray], layout: Layout) -> None:
        self.check_state(state, layout)
        self._state = {key: np.array(array, copy=True) for key, array in state.items()}


class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum (Hsu, Qi and Brown 2019, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification", arXiv:1909.06335).

    Each round, with ``x`` the current model and ``mean`` the sample-weighted mean of the
    replies: the pseudo-gradient ``g = x - mean``; the momentum ``m = server_momentum * m + g``
    (``m = g`` in the first round); the new model ``x - server_learning_rate * m``.
    With ``server_momentum = 0`` the step is ``x - server_learning_rate * g``, and with
    both defaults it is FedAvg exactly.

    Args:
        server_learning_rate: the server's step size, > 0 (Flower's name and default: 1.0).
        server_momentum: β in [0, 1) (Flower's name and default: 0.0; the paper's
            experiments use values up to 0.997, 0.9 is a common start).

    Sample weights: used, through FedAvg's weighted mean. Memory: streaming; the
    model, the mean and, when ``server_momentum > 0``, one momentum array per
    floating array (float32, float64 for float64 arrays). The momentum is part of
    the coordinator's checkpoint. Defends against: nothing hostile; damps the
    oscillation of non-IID rounds.
    """

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        super().__init__()
        self.server_learning_rate = _rate("server_learning_rate", server_learning_rate, low=0.0, low_open=True)
        self.server_momentum = _rate("server_momentum", server_momentum, low=0.0, high=1.0, high_open=True)
        self._slots = ("momentum",) if self.server_momentum > 0 else ()

    def _identity(self) -> bool:
        return self.server_momentum == 0.0 and self.server_learning_rate == 1.0

    def _update(
        self, x: np.ndarray, mean: np.ndarray, slots: list[np.ndarray], fresh: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        g = x - mean
        if self._slots:
            g = g if fresh else self.server_momentum * slots[0] + g
            return [g], x - self.server_learning_rate * g
        return [], x - self.server_learning_rate * g


class _FedOpt(_ServerOptimizer):
    """Algorithm 2 of Reddi et al. 2021: ``m`` and ``v`` on the pseudo-gradient, then the step."""

    _slots = ("m", "v")

    def __init__(self, eta: float, eta_l: float, beta_1: float, beta_2: float, tau: float) -> None:
        super().__init__()
        self.eta = _rate("eta", eta, low=0.0, low_open=True)
        self.eta_l = _rate("eta_l", eta_l, low=0.0, low_open=True)
        self.beta_1 = _rate("beta_1", beta_1, low=0.0, high=1.0, high_open=True)
        self.beta_2 = _rate("beta_2", beta_2, low=0.0, high=1.0, high_open=True)
        self.tau = _rate("tau", tau, low=0.0, low_open=True)

    def _initial(self, slot: str) -> float:
        # The paper's Algorithm 2 starts from m = 0 and v_{-1} >= tau**2: its smallest value.
        return self.tau**2 if slot == "v" else 0.0

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _update(
        self, x: np.ndarray, mean: np.ndarray, slots: list[np.ndarray], fresh: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        m, v = slots
        delta = mean - x
        m = self.beta_1 * m + (1.0 - self.beta_1) * delta
        v = self._second_moment(v, delta)
        return [m, v], x + self.eta * m / (np.sqrt(v) + self.tau)


_FEDOPT_DOC = """

    Each round, with ``x`` the current model and ``Δ = mean - x`` the pseudo-gradient
    (``mean``: the sample-weighted mean of the replies, as FedAvg's)::

        m = beta_1 * m + (1 - beta_1) * Δ          (m starts at 0)
        {v}
        x = x + eta * m / (sqrt(v) + tau)

    No bias correction, as in the paper (Flower's FedAdam adds one; docs/strategies.md).

    Args:
        eta: the server learning rate η > 0.
        eta_l: the devices' learning rate η_l > 0. The server step does not use it:
            the paper tunes it with η, and it is kept here so a configuration reads
            as the paper's (pass it to the devices' ``train``).
        beta_1: momentum β1 in [0, 1).
        beta_2: second-moment decay β2 in [0, 1){beta_2_use}.
        tau: the adaptivity τ > 0; smaller is more adaptive.

    Defaults are Flower's{defaults}.

    Sample weights: used, through FedAvg's weighted mean (the paper's Algorithm 2
    writes an unweighted mean over the sampled clients; with equal sample counts
    they agree). Memory: streaming; the model, the mean and two state arrays ``m``,
    ``v`` per floating array (float32, float64 for float64 arrays), which are part of
    the coordinator's checkpoint. Defends against: nothing hostile; adapts the step
    per coordinate under heterogeneous data.
    """


class FedAdam(_FedOpt):
    def __init__(
        self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-9
    ) -> None:
        super().__init__(eta, eta_l, beta_1, beta_2, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * (delta * delta)


class FedYogi(_FedOpt):
    def __init__(
        self, *, eta: float = 1e-2, eta_l: float = 0.0316, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(eta, eta_l, beta_1, beta_2, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        square = delta * delta
        return v - (1.0 - self.beta_2) * square * np.sign(v - square)


class FedAdagrad(_FedOpt):
    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.0, tau: float = 1e-9) -> None:
        super().__init__(eta, eta_l, beta_1, 0.0, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta * delta


_CITE = 'Reddi et al. 2021, "Adaptive Federated Optimization", ICLR, arXiv:2003.00295, Algorithm 2'
FedAdam.__doc__ = f"FedAdam: Adam as the server optimizer ({_CITE})." + _FEDOPT_DOC.format(
    v="v = beta_2 * v + (1 - beta_2) * Δ²        (v starts at tau²)",
    beta_2_use="",
    defaults=": eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9",
)
FedYogi.__doc__ = f"FedYogi: Yogi as the server optimizer ({_CITE})." + _FEDOPT_DOC.format(
    v="v = v - (1 - beta_2) * Δ² * sign(v - Δ²)  (v starts at tau²)",
    beta_2_use="",
    defaults=": eta=0.01, eta_l=0.0316, beta_1=0.9, beta_2=0.99, tau=1e-3",
)
FedAdagrad.__doc__ = f"FedAdagrad: Adagrad as the server optimizer ({_CITE})." + _FEDOPT_DOC.format(
    v="v = v + Δ²                                 (v starts at tau²)",
    beta_2_use="; FedAdagrad has none (takes no beta_2)",
    defaults=": eta=0.1, eta_l=0.1, tau=1e-9; beta_1=0.0 is the value Flower fixes (it takes no beta_1)",
)
