"""SCAFFOLD: control variates that correct the drift of devices on different data.

Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020, Algorithm 1 with option II. In a round
over the sampled devices ``S`` of the ``N`` in the federation:

1. the coordinator sends the model ``x`` and its control variate ``c`` (one array
   ``scaffold.c/<name>`` beside each floating array of the model);
2. device ``i`` starts from ``y_i = x`` and takes ``K`` local steps
   ``y_i <- y_i - lr * (g_i(y_i) - c_i + c)``: :func:`correction` gives ``c - c_i``, to add
   to every gradient;
3. :func:`finish` (the end of ``train``): ``c_i+ = c_i - c + (x - y_i) / (K * lr)``
   (option II); the device sends ``y_i`` and ``dc_i = c_i+ - c_i`` and keeps ``c_i <- c_i+``
   in its state (``scaffold.c_i/<name>``, saved with the device's state);
4. the coordinator: ``x <- x + server_lr * (mean(y_i) - x)`` and ``c <- c + |S|/N * mean(dc_i)``,
   the means over the replies, uniform as in the paper. With ``total_samples=n`` (the samples of
   all N devices) both means weigh by samples and ``c <- c + sum_S n_i/n * dc_i``: ``c`` stays the
   sample-weighted mean of every device's ``c_i``, as the uniform update keeps it their plain mean.

Floating arrays are folded exactly and in any order (:class:`~fedsync.strategies.WeightedSum`),
so reruns are bit-identical. Integer and boolean arrays take FedAvg's exact weighted mean.
Memory: the coordinator holds ``c`` (one copy of the floating arrays) beside FedAvg's sums;
each device keeps ``c_i`` (one copy), which a simulation keeps for every device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._util.checks import is_int, is_number
from ..errors import RoundFailed
from ..wire.metrics import checked_samples
from .base import Arrays, Layout, Strategy, WeightedSum, fold_whole

__all__ = ["Scaffold", "correction", "finish", "CONTROL", "DEVICE_CONTROL"]

CONTROL = "scaffold.c/"
"""Prefix of the control variates that travel: ``c`` to the devices, each device's ``dc_i`` back."""
DEVICE_CONTROL = "scaffold.c_i/"
"""Prefix of each device's own control variate ``c_i`` in its state."""


class Scaffold(Strategy):
    """SCAFFOLD's coordinator side (Karimireddy et al. 2020, Algorithm 1, option II): module docstring.

    Devices call :func:`correction` and :func:`finish` in ``train``::

        from fedsync.strategies import Scaffold, scaffold

        fed = FedArrays(arrays, train, strategy=Scaffold(num_devices=30))

        def train(arrays, config):
            fix = scaffold.correction(fed)  # c - c_i, by array name
            for _ in range(steps):
                grads = gradient(arrays)
                for name in grads:
                    arrays[name] -= lr * (grads[name] + fix[name])
            scaffold.finish(fed, steps=steps, lr=lr)
            return samples

    Args:
        num_devices: ``N``, the devices in the federation (not the sampled ones): the control
            variate moves by ``|S|/N`` of the replies' mean.
        server_lr: ``eta_g``, the global step size (1.0: the new model is the replies' mean).
        total_samples: ``None`` (the paper): every reply weighs the same. Else the samples of all
            ``N`` devices: replies weigh by their samples, and ``c`` moves by the replies' share of
            them. (Weighing the means by samples but moving ``c`` by ``|S|/N`` breaks the invariant
            ``c = mean(c_i)`` when devices' sizes differ, and the corrections then stop cancelling:
            a benchmark run diverged that way, benchmarks/RESULTS.md.)

    Raises:
        ValueError: ``num_devices`` or ``total_samples`` not an integer >= 1, ``server_lr`` not a
            finite number > 0.
        RoundFailed: from the merge, when more devices (or samples) replied than the federation
            has, or none with samples.
    """

    tree_refusal = (
        "SCAFFOLD moves the control variate by |S|/N of the replies' mean, counting devices: an aggregator's "
        "reply stands for several devices and its devices' c_i would be summed away"
    )
    device_hint = "scaffold.finish(fed, steps=..., lr=...) at the end of train"

    def __init__(self, num_devices: int, *, server_lr: float = 1.0, total_samples: int | None = None) -> None:
        if not is_int(num_devices) or num_devices < 1:
            raise ValueError(
                f"Scaffold(num_devices=...) is N, the number of devices in the federation, an integer >= 1; "
                f"got {num_devices!r}"
            )
        if not is_number(server_lr) or not math.isfinite(server_lr) or server_lr <= 0:
            raise ValueError(f"Scaffold(server_lr=...) must be a finite number > 0, got {server_lr!r}")
        if total_samples is not None and (not is_int(total_samples) or total_samples < 1):
            raise ValueError(
                f"Scaffold(total_samples=...) is the samples of all num_devices devices, an integer >= 1; "
                f"got {total_samples!r}"
            )
        self.num_devices, self.server_lr = int(num_devices), float(server_lr)
        self.total_samples = None if total_samples is None else int(total_samples)

    def companions(self, layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {CONTROL + name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in _floats(layout).items()}

    def device_arrays(self, layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {
            DEVICE_CONTROL + name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in _floats(layout).items()
        }

    def accumulator(self, current: Arrays) -> _ScaffoldSum:
        return _ScaffoldSum(current, self)

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        return fold_whole(self.accumulator(current), results)


class _ScaffoldSum(WeightedSum):
    """The replies' exact mean (uniform or by samples), then SCAFFOLD's server step from ``current``."""

    def __init__(self, current: Arrays, strategy: Scaffold) -> None:
        super().__init__(current)
        self._current, self._strategy = current, strategy
        self.replies = 0
        self._given = 0  # the samples the reply being added was started with

    def start(self, samples: int) -> None:
        self._given = checked_samples(samples, "a reply's sample count")
        self.replies += self._given > 0
        weighted = self._strategy.total_samples is not None
        super().start(self._given if weighted or self._given == 0 else 1)

    def add(self, name: str, first: int, values: np.ndarray, samples: int) -> None:
        if samples != self._given:
            raise ValueError(f"add() got {samples} samples for a reply started with {self._given}")
        super().add(name, first, values, self.samples)

    def result(self, total: int) -> dict[str, np.ndarray]:
        n = self._strategy.num_devices
        if self.replies > n:
            raise RoundFailed(
                f"{self.replies} devices replied but Scaffold(num_devices={n}) says the federation has {n}; "
                "num_devices is the total number of devices (N in the paper), so the model was left unchanged"
            )
        whole = self._strategy.total_samples
        if whole is not None and self.total > whole:
            raise RoundFailed(
                f"the replies hold {self.total} samples but Scaffold(total_samples={whole}) says all devices hold "
                f"{whole}; the model was left unchanged"
            )
        merged = super().result(self.total)
        share = self.replies / n if whole is None else self.total / whole  # |S|/N, or sum_S n_i / n
        for name, array in merged.items():
            if array.dtype.kind != "f":
                continue
            x = np.asarray(self._current[name], dtype=np.float64)
            mean = array.astype(np.float64)
            if name.startswith(CONTROL):
                new = x + share * mean  # c + |S|/N * mean(dc_i)
            elif self._strategy.server_lr == 1.0:
                continue  # the mean itself, exactly
            else:
                new = x + self._strategy.server_lr * (mean - x)
            merged[name] = new.astype(array.dtype)
        return merged


def correction(fed: Any) -> dict[str, np.ndarray]:
    """``c - c_i`` for each floating array of the model, to add to every local gradient in ``train``.

    Call it in ``train`` (after the round's model and ``c`` arrived, before :func:`finish`).
    Returns float arrays of the model's shapes and dtypes, by array name (owned copies).

    Raises:
        RuntimeError: called outside ``train`` or after :func:`finish`.
    """
    controls, state = _parts(fed, "correction")
    return {name: (c - state[DEVICE_CONTROL + name]).astype(c.dtype) for name, c in controls.items()}


def finish(fed: Any, *, steps: int, lr: float) -> None:
    """End a device's round: ``c_i+ = c_i - c + (x - y_i) / (steps * lr)`` (option II), sent as ``c_i+ - c_i``.

    ``steps``: the local steps ``K`` taken this round (>= 1); ``lr``: the local learning rate (> 0).
    The device keeps ``c_i+`` in its state. Everything is computed before anything is written.

    Raises:
        ValueError: ``steps`` or ``lr`` out of range, or the new control variate is not finite
            (nothing changed).
        RuntimeError: called outside ``train``, or twice in a round.
    """
    if not is_int(steps) or steps < 1:
        raise ValueError(f"scaffold.finish(steps=...) is the number of local steps taken, >= 1; got {steps!r}")
    if not is_number(lr) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"scaffold.finish(lr=...) is the local learning rate, a finite number > 0; got {lr!r}")
    controls, state = _parts(fed, "finish")
    start, trained = fed.global_weights(), fed.get_arrays()
    new: dict[str, np.ndarray] = {}
    for name, c in controls.items():
        own = state[DEVICE_CONTROL + name].astype(np.float64)
        drift = (np.asarray(start[name], np.float64) - np.asarray(trained[name], np.float64)) / (steps * float(lr))
        value = own - c.astype(np.float64) + drift
        if not np.isfinite(value).all():
            raise ValueError(f"SCAFFOLD's new control variate for {name!r} is not finite; lower the learning rate")
        new[name] = value
    for name, value in new.items():
        own = state[DEVICE_CONTROL + name]
        controls[name][...] = value - own  # dc_i, sent
        own[...] = value
    fed.extras_written = True


def _parts(fed: Any, what: str) -> tuple[dict[str, np.ndarray], Any]:
    """This round's received control variates by model array name, and the device's state."""
    if getattr(fed, "global_weights", lambda: None)() is None or fed.extras_written:
        raise RuntimeError(
            f"scaffold.{what}(fed) works inside train, after the round's model arrived and before finish()"
        )
    extras = fed.extra_arrays
    controls = {name[len(CONTROL) :]: a for name, a in extras.items() if name.startswith(CONTROL)}
    if not controls:
        raise RuntimeError(f"scaffold.{what}(fed) needs a FedArrays whose strategy is Scaffold(...)")
    return controls, fed.state


def _floats(layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {
        name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in layout.items() if np.dtype(dtype).kind == "f"
    }
