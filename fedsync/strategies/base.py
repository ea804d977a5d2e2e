"""The strategy protocol, and FedAvg: the sample-weighted mean folded in as replies stream.

A strategy gets the coordinator's current arrays (for shapes and dtypes, or
for server-side optimizers) and an iterable of ``(arrays, samples)`` pairs in
arrival order. It must not modify ``current``: it returns new arrays, which the
caller assigns only once the whole round has arrived. A streaming strategy
drops each pair before asking for the next, so the coordinator need hold only
one reply at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import RoundFailed
from ..wire.metrics import checked_samples
from .exact import ExactSum, exact_dtype

__all__ = [
    "Strategy",
    "Accumulator",
    "WeightedSum",
    "FedAvg",
    "fold_whole",
    "Arrays",
    "Layout",
    "CHUNK",
    "accumulator_dtype",
    "rounded_mean",
]

Arrays = Mapping[str, np.ndarray]
Layout = Mapping[str, "tuple[tuple[int, ...], np.dtype]"]


class Accumulator:
    """A running fold of replies that takes them piece by piece, as they stream in.

    For each reply: ``start(samples)``, then ``add(name, first, values, samples)``
    for each piece: the flat ``values`` of array ``name``, elements
    ``[first, first + len(values))``, each element once, pieces in any order.
    ``result(total)`` returns the merged arrays once every reply was added
    (``total``: the sum of their samples).
    """

    def start(self, samples: int) -> None:
        """A new reply, which trained on ``samples`` samples, begins; its pieces follow."""

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

    tree_refusal: str | None = (
        "only strategies built on the sample-weighted mean merge replies that aggregators already merged "
        "(FedAvg, and FedAvgM, FedAdam, FedYogi, FedAdagrad on top of it)"
    )
    """Why this strategy cannot merge the replies of aggregators (a tree, docs/aggregators.md); ``None`` if it can.

    A coordinator refuses a device whose ``/info`` says it is an aggregator, with this reason, when its
    strategy has one. ``None`` only where the merge of aggregators' merges, each weighted by its samples,
    equals the merge of every device's reply: the sample-weighted mean (FedAvg) and server optimizers on it.
    """

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """Combine ``results`` (``(arrays, samples)`` in arrival order) into new arrays."""
        raise NotImplementedError

    def companions(self, layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Arrays this strategy sends beside a model of ``layout``, both ways; none by default.

        SCAFFOLD's control variates and FedNova's local steps travel this way
        (:class:`~fedsync.strategies.Scaffold`, :class:`~fedsync.strategies.FedNova`). A FedArrays
        holds them as ``fed.extra_arrays``, sends them in every payload (their names start with the
        strategy's prefix, which no model array may use) and gives them to :meth:`aggregate` beside
        the model's; a device's ``train`` writes them with the strategy's helper.
        """
        return {}

    def device_arrays(self, layout: Layout) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Arrays this strategy keeps on each device between rounds (SCAFFOLD's ``c_i``); none by default.

        A FedArrays adds them, zero at first, to its ``state`` (saved with the device's state:
        ``serve(state_dir=...)``, simulations).
        """
        return {}

    device_hint: str = ""
    """With :meth:`companions`: what a device's ``train`` must call to write them, for the error if it did not."""

    def accumulator(self, current: Arrays) -> Accumulator | None:
        """A fresh :class:`Accumulator` over ``current``'s layout, or ``None`` to get whole replies."""
        return None

    def identity(self) -> str:
        """What a checkpoint records of this strategy: its class name, with every strategy it holds.

        ``"FedAdam"``; a wrapper names what it wraps, ``"DPFixedClipping(FedAdam)"``, found in its
        attributes, so a resume under another wrapped strategy is refused as an unwrapped one is.
        """
        inner = [v.identity() for v in vars(self).values() if isinstance(v, Strategy)]
        return f"{type(self).__name__}({', '.join(inner)})" if inner else type(self).__name__

    def state(self) -> dict[str, np.ndarray]:
        """The strategy's own state between rounds (a server optimizer's moments), by name; empty if none.

        A coordinator's checkpoint saves it next to the model (:mod:`fedsync.coordinator.checkpoint`).
        The arrays are the strategy's own: read them, do not change them.
        """
        return {}

    def check_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        """Check ``state`` (e.g. read from a checkpoint) fits this strategy and a model of ``layout``.

        Raises:
            ValueError: naming the first entry that does not fit; nothing changes.
        """
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state between rounds, but got {sorted(state)[:5]}")

    def load_state(
        self, state: Mapping[str, np.ndarray], layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ) -> None:
        """Replace the strategy's state with ``state``, checked first with :meth:`check_state`."""
        self.check_state(state, layout)


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a running merge of arrays of ``dtype`` is kept in.

    float16/float32 means are float32, float64 ones float64 (their sums are exact,
    :class:`~fedsync.strategies.exact.ExactSum`); integers and booleans sum exactly, in int64
    (``WeightedSum`` moves to Python ints once that could overflow).
    """
    if dtype.kind == "f":
        return np.result_type(dtype, np.float32)
    return np.dtype(np.int64)


CHUNK = 1 << 18
"""Elements a merge handles at a time: its scratch buffers hold this many, whatever the model's size."""
_INT64_LIMIT = 2**63  # an integer sum that may reach this moves to Python ints


class WeightedSum(Accumulator):
    """The sample-weighted mean of every array, folded reply by reply.

    Floating arrays keep the exact, order-independent sum of ``values * samples``
    (:class:`~fedsync.strategies.exact.ExactSum`, reproducible summation after
    Demmel and Nguyen 2015), rounded once in :meth:`result`: the same replies in any
    order give bit-identical results, and equal replies give exactly their value.
    Integer and boolean arrays keep the exact sum of ``values * samples`` (int64, or
    Python integers once that could overflow), so :meth:`result` is exact: integers
    are the mean rounded half to even, booleans the weighted majority (a tie gives
    ``True``). Memory, whatever the number of replies: 26 bytes per float16/float32
    element (6.5 float32 model copies), 34 per float64 element (4.25 float64 copies),
    one copy of each integer array, and small scratch buffers. ``exact=False``
    (``FedAvg(exact=False)``) keeps floating arrays as a running mean about the replies
    so far instead, ``mean += w * (x - mean)`` with ``w = samples / samples so far``
    (``mean * (1 - w) + x * w`` where the difference would overflow), in float32
    (float64 for float64 arrays): one copy, equal replies still exact, but the order
    replies arrive in may change the last bits.
    """

    def __init__(self, current: Arrays, exact: bool = True) -> None:
        self.layout = {name: (a.shape, a.dtype) for name, a in current.items()}
        self.exact = {name: ExactSum(a.size, a.dtype) for name, a in current.items() if exact and exact_dtype(a.dtype)}
        """The order-independent sums of floating arrays, until :meth:`result` turns them into ``sums``."""
        self.sums = {
            name: np.zeros(a.size, accumulator_dtype(a.dtype)) for name, a in current.items() if name not in self.exact
        }
        """Running means (float64) and exact sums (integers); after :meth:`result`, every array's merged mean."""
        self.total = 0
        """Samples of the replies started so far."""
        self._samples = 0
        self._weight = 0.0
        # For integer arrays: a bound of |sum| from finished replies, and this reply's largest |value|.
        self._settled = {name: 0 for name, (_, dtype) in self.layout.items() if dtype.kind != "f"}
        self._peaks = dict.fromkeys(self._settled, 0)
        self._scratch: dict[np.dtype, np.ndarray] = {}

    @property
    def samples(self) -> int:
        """Samples of the reply being added (the last :meth:`start`, checked); 0 before the first."""
        return self._samples

    def start(self, samples: int) -> None:
        """Begin a reply of ``samples`` samples (checked: an integer in ``[0, MAX_SAMPLES]``)."""
        samples = checked_samples(samples, "a reply's sample count")
        for name, peak in self._peaks.items():
            self._settled[name] += self._samples * peak
            self._peaks[name] = 0
        self._samples = samples
        self.total += samples
        self._weight = samples / self.total if self.total else 0.0

    def add(self, name: str, first: int, values: np.ndarray, samples: int) -> None:
        """Fold elements ``[first, first + len(values))`` of the reply begun with :meth:`start`."""
        if samples != self._samples:
            raise ValueError(
                f"add() got {samples} samples for a reply started with {self._samples}; call start(samples) first"
            )
        flat = values.reshape(-1)
        if samples == 0 or flat.size == 0:
            return
        exact = self.exact.get(name)
        if exact is not None:
            exact.add(first, flat, samples)
        elif self.layout[name][1].kind == "f":
            self._add_floats(self.sums[name], first, flat)
        else:
            self._add_integers(name, first, flat)

    def _buffer(self, dtype: np.dtype) -> np.ndarray:
        buffer = self._scratch.get(dtype)
        if buffer is None:
            buffer = self._scratch[dtype] = np.empty(CHUNK, dtype)
        return buffer

    def _add_floats(self, acc: np.ndarray, first: int, flat: np.ndarray) -> None:
        """``mean += w * (values - mean)`` (float64), a chunk at a time through the scratch buffer.

        Equal values leave the mean exactly as it is; where ``values - mean`` would
        overflow, ``mean * (1 - w) + values * w`` (every intermediate within the values' range).
        """
        target = acc[first : first + flat.size]
        if self._weight == 1.0:  # the first reply that counts: the mean is its values
            np.copyto(target, flat, casting="same_kind")
            return
        buffer = self._buffer(acc.dtype)
        for start in range(0, flat.size, CHUNK):
            part = buffer[: min(CHUNK, flat.size - start)]
            values = flat[start : start + CHUNK]
            mean = target[start : start + part.size]
            with np.errstate(over="ignore", invalid="ignore"):
                np.subtract(values, mean, out=part, casting="same_kind")
            wide = ~np.isfinite(part)
            part *= self._weight
            if wide.any():
                part[wide] = values[wide] * self._weight - mean[wide] * self._weight
            mean += part

    def _add_integers(self, name: str, first: int, flat: np.ndarray) -> None:
        """``sum += values * samples`` exactly."""
        if flat.dtype.kind == "b":
            flat = flat.view(np.uint8)
        peak = max(int(flat.max()), -int(flat.min()))
        self._peaks[name] = max(self._peaks[name], peak)
        acc = self.sums[name]
        if acc.dtype != object and self._settled[name] + self._samples * self._peaks[name] >= _INT64_LIMIT:
            acc = self.sums[name] = acc.astype(object)  # exact past int64; integer arrays in models are small
        target = acc[first : first + flat.size]
        if acc.dtype == object:
            target += flat.astype(object) * self._samples
            return
        buffer = self._buffer(acc.dtype)
        for start in range(0, flat.size, CHUNK):
            part = buffer[: min(CHUNK, flat.size - start)]
            # |value| * samples < 2**63 (the bound above), and uint64 values below 2**63 cast exactly.
            np.multiply(flat[start : start + CHUNK], self._samples, out=part, dtype=np.int64, casting="unsafe")
            target[start : start + part.size] += part

    def result(self, total: int) -> dict[str, np.ndarray]:
        """The merged arrays, in the current arrays' dtypes and shapes.

        Raises:
            RoundFailed: no reply had any samples, so there is nothing to weigh.
        """
        if self.total <= 0 or total <= 0:
            raise RoundFailed(
                "no device reported any training samples, so there is nothing to weigh; "
                "train(model) must return the number of samples it trained on, e.g. `return x.shape[0]`"
            )
        if total != self.total:
            raise ValueError(f"result({total}) does not match the {self.total} samples of the replies started")
        for name in list(self.exact):  # rounded once, then kept where server optimizers read the mean
            shape, dtype = self.layout[name]
            self.sums[name] = self.exact.pop(name).mean(total, accumulator_dtype(dtype))
        merged = {}
        for name in self.layout:
            acc = self.sums[name]
            shape, dtype = self.layout[name]
            if dtype.kind == "f":
                merged[name] = acc.astype(dtype, copy=False).reshape(shape)
            elif dtype.kind == "b":
                merged[name] = (acc >= total - acc).reshape(shape)  # 2 * sum >= total, without overflow
            else:
                merged[name] = rounded_mean(acc, total).astype(dtype).reshape(shape)
        return merged


def rounded_mean(sums: np.ndarray, total: int) -> np.ndarray:
    """``sums / total`` rounded half to even, exactly (``total`` > 0; ``sums`` int64, or Python ints as ``object``)."""
    if sums.dtype != object and total >= _INT64_LIMIT:
        sums = sums.astype(object)
    divisor = total if sums.dtype == object else np.int64(total)
    quotient, remainder = sums // divisor, sums % divisor  # floor division: 0 <= remainder < total
    rest = divisor - remainder
    up = (remainder > rest) | ((remainder == rest) & (quotient % 2 == 1))
    return quotient + up.astype(np.int64 if sums.dtype != object else object)


class FedAvg(Strategy):
    """Sample-weighted average (McMahan et al., 2017), folded in as results arrive.

    Each device's arrays weigh by the number of samples it trained on, so the
    coordinator holds one accumulator per array whatever the number of devices.
    Floating arrays (float16, float32, float64) sum exactly and independently of the
    replies' order (:class:`WeightedSum`, :mod:`fedsync.strategies.exact`), rounded
    once: equal replies give exactly their value. No overflow whatever the values and
    sample counts. Integer arrays (e.g. torch's
    ``num_batches_tracked``) take the exact weighted mean **rounded half to
    even** (2.5 -> 2, 3.5 -> 4), exact for every integer dtype and sample count;
    boolean arrays take the weighted majority, and a tie gives ``True``.
    Devices reporting 0 samples do not count, whatever their values.

    Args:
        exact: ``True`` (the default): floating arrays merge by the exact,
            order-independent sum, 6.5 float32 (4.25 float64) model copies of memory and
            about 3x the merge's CPU. ``False``: a running mean in the arrays' accumulator
            dtype, one model copy and the merge's old speed; equal replies still merge to
            exactly their value, but the order replies arrive in can change the last bits,
            so reruns are not bit-identical (docs/strategies.md).

    Raises:
        RoundFailed: from :meth:`aggregate` and ``result`` when no device
            reported any samples.
    """

    tree_refusal = None  # a mean of sample-weighted means, each weighted by its samples, is the mean of all

    def __init__(self, exact: bool = True) -> None:
        if not isinstance(exact, bool):
            raise TypeError(f"FedAvg(exact=...) takes True or False, got {exact!r}")
        self.exact = exact

    def accumulator(self, current: Arrays) -> WeightedSum:
        return WeightedSum(current, exact=self.exact)

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        return fold_whole(self.accumulator(current), results)


def fold_whole(accumulator: WeightedSum, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
    """Fold whole replies into ``accumulator`` one at a time and return its result."""
    replies = iter(results)
    while (result := next(replies, None)) is not None:
        arrays, samples = result
        del result  # hold no reply while asking for the next: it may not download before
        accumulator.start(samples)
        if accumulator.samples > 0:
            for name in accumulator.layout:
                accumulator.add(name, 0, np.asarray(arrays[name]), samples)
        del arrays
    return accumulator.result(accumulator.total)
