"""How the devices' arrays are combined into the coordinator's.

A strategy gets the coordinator's current arrays (for shapes and dtypes, or
for server-side optimizers) and an iterable of ``(arrays, samples)`` pairs in
arrival order. It must not modify ``current``: it returns new arrays, which the
caller assigns only once the whole round has arrived. A streaming strategy
drops each pair before asking for the next, so the coordinator need hold only
one reply at a time.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

__all__ = ["Strategy", "Accumulator", "WeightedSum", "FedAvg"]

Arrays = Mapping[str, np.ndarray]


class Accumulator:
    """A running fold of replies that takes them piece by piece, as they stream in.

    ``add(name, first, values, samples)`` folds the flat ``values`` of array
    ``name``, elements ``[first, first + len(values))``, from a reply that
    trained on ``samples``; ``result(total)`` returns the merged arrays once
    every reply was added (``total``: the sum of their samples).
    """

    def add(self, name: str, first: int, values: np.ndarray, samples: int) -> None:
        raise NotImplementedError

    def result(self, total: int) -> dict[str, np.ndarray]:
        raise NotImplementedError


class Strategy:
    """Base class: ``aggregate(current, results) -> dict of new arrays``.

    A strategy that can fold replies piece by piece also returns an
    :class:`Accumulator` from :meth:`accumulator`; FedArrays then merges
    replies while they download and never holds a whole one.
    """

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """Combine ``results`` (``(arrays, samples)`` in arrival order) into new arrays."""
        raise NotImplementedError

    def accumulator(self, current: Arrays) -> Accumulator | None:
        """A fresh :class:`Accumulator` over ``current``'s layout, or ``None`` to get whole replies."""
        return None


def _accumulator_dtype(dtype: np.dtype) -> np.dtype:
    # float16/float32 sum in float32 (one model copy, as the design's memory goal asks);
    # integers and booleans are averaged in float64 and rounded back.
    if dtype.kind == "f":
        return np.result_type(dtype, np.float32)
    return np.dtype(np.float64)


_CHUNK = 1 << 18


class WeightedSum(Accumulator):
    """Sums ``values * samples`` per array; ``result(total)`` divides by ``total``.

    Integer arrays round to the nearest integer, boolean arrays take the
    weighted majority. Memory: one accumulator per array plus a small scratch
    buffer, whatever the number of replies.
    """

    def __init__(self, current: Arrays) -> None:
        self.layout = {name: (a.shape, a.dtype) for name, a in current.items()}
        self.sums = {name: np.zeros(a.size, _accumulator_dtype(a.dtype)) for name, a in current.items()}
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def add(self, name: str, first: int, values: np.ndarray, samples: int) -> None:
        """``sums[name][first:first + n] += values * samples``, through a reused scratch buffer."""
        acc = self.sums[name]
        buffer = self._scratch.get(acc.dtype)
        if buffer is None:
            buffer = self._scratch[acc.dtype] = np.empty(_CHUNK, acc.dtype)
        flat = values.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            part = buffer[: min(_CHUNK, flat.size - start)]
            np.multiply(flat[start : start + _CHUNK], samples, out=part, casting="unsafe")
            acc[first + start : first + start + part.size] += part

    def result(self, total: int) -> dict[str, np.ndarray]:
        if total <= 0:
            raise ValueError(
                "no device reported any training samples, so there is nothing to weigh; "
                "train(model) must return the number of samples it trained on, e.g. `return x.shape[0]`"
            )
        merged = {}
        for name, acc in self.sums.items():
            acc /= total
            shape, dtype = self.layout[name]
            if dtype.kind == "b":
                merged[name] = (acc >= 0.5).reshape(shape)
            elif dtype.kind in "iu":
                merged[name] = np.rint(acc).astype(dtype).reshape(shape)
            else:
                merged[name] = acc.astype(dtype, copy=False).reshape(shape)
        return merged


class FedAvg(Strategy):
    """Sample-weighted average (McMahan et al., 2017), folded in as results arrive.

    Each device's arrays weigh by the number of samples it trained on, so the
    coordinator holds one accumulator per array whatever the number of devices.
    Integer arrays (e.g. torch's ``num_batches_tracked``) are averaged the same
    way and rounded to the nearest integer; boolean arrays take the weighted
    majority. Devices reporting 0 samples do not count.
    """

    def accumulator(self, current: Arrays) -> WeightedSum:
        return WeightedSum(current)

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        accumulator = self.accumulator(current)
        total = 0
        replies = iter(results)
        while (result := next(replies, None)) is not None:
            arrays, samples = result
            del result  # hold no reply while asking for the next: it may not download before
            if samples > 0:
                total += samples
                for name in accumulator.sums:
                    accumulator.add(name, 0, np.asarray(arrays[name]), samples)
            del arrays
        return accumulator.result(total)
