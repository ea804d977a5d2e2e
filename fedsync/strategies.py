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

__all__ = ["Strategy", "FedAvg"]

Arrays = Mapping[str, np.ndarray]


class Strategy:
    """Base class: ``aggregate(current, results) -> dict of new arrays``."""

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """Combine ``results`` (``(arrays, samples)`` in arrival order) into new arrays."""
        raise NotImplementedError


def _accumulator_dtype(dtype: np.dtype) -> np.dtype:
    # float16/float32 sum in float32 (one model copy, as the design's memory goal asks);
    # integers and booleans are averaged in float64 and rounded back.
    if dtype.kind == "f":
        return np.result_type(dtype, np.float32)
    return np.dtype(np.float64)


_CHUNK = 1 << 18


def _add_scaled(acc: np.ndarray, array: np.ndarray, weight: int, scratch: dict[np.dtype, np.ndarray]) -> None:
    """``acc += array * weight``, through a small reused buffer rather than a model-sized temporary."""
    flat_acc, flat = acc.reshape(-1), np.asarray(array).reshape(-1)
    buffer = scratch.get(acc.dtype)
    if buffer is None:
        buffer = scratch[acc.dtype] = np.empty(_CHUNK, acc.dtype)
    for start in range(0, flat.size, _CHUNK):
        part = buffer[: min(_CHUNK, flat.size - start)]
        np.multiply(flat[start : start + _CHUNK], weight, out=part, casting="unsafe")
        flat_acc[start : start + _CHUNK] += part


class FedAvg(Strategy):
    """Sample-weighted average (McMahan et al., 2017), folded in as results arrive.

    Each device's arrays weigh by the number of samples it trained on, so the
    coordinator holds one accumulator per array whatever the number of devices.
    Integer arrays (e.g. torch's ``num_batches_tracked``) are averaged the same
    way and rounded to the nearest integer; boolean arrays take the weighted
    majority. Devices reporting 0 samples do not count.
    """

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        sums = {name: np.zeros(a.shape, _accumulator_dtype(a.dtype)) for name, a in current.items()}
        scratch: dict[np.dtype, np.ndarray] = {}
        total = 0
        replies = iter(results)
        while (result := next(replies, None)) is not None:
            arrays, samples = result
            del result  # hold no reply while asking for the next: it may not download before
            if samples > 0:
                total += samples
                for name, acc in sums.items():
                    _add_scaled(acc, arrays[name], samples, scratch)
            del arrays
        if total == 0:
            raise ValueError(
                "no device reported any training samples, so there is nothing to weigh; "
                "train(model) must return the number of samples it trained on, e.g. `return x.shape[0]`"
            )
        merged = {}
        for name, acc in sums.items():
            acc /= total
            dtype = current[name].dtype
            if dtype.kind == "b":
                merged[name] = acc >= 0.5
            elif dtype.kind in "iu":
                merged[name] = np.rint(acc).astype(dtype)
            else:
                merged[name] = acc.astype(dtype, copy=False)
        return merged
