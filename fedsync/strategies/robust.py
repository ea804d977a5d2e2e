"""Byzantine-robust strategies: FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan.

They need every reply, not a running sum: the replies go to a
:class:`~fedsync.strategies.store.ReplyStore` (RAM up to ``spill_bytes``, then a
spill file), and the result is computed a chunk of coordinates at a time, so the
coordinator holds the new model plus a ``(replies, chunk)`` working matrix beyond
the replies kept in RAM.

Like their papers (and Flower), they ignore sample counts: a hostile device could
claim any count. Replies reporting 0 samples never reach a strategy.

Arrival order never matters: once every reply is stored they are read back in the
order of their sha256 digests (:meth:`~fedsync.strategies.store.ReplyStore.canonicalize`),
so "the earlier reply" on a tie, and the order a mean adds its kept rows in, are set
by the replies' content: the same replies give bit-identical results on every rerun.

Integer and boolean arrays (counters such as torch's ``num_batches_tracked``,
masks) are not parameters these rules reason about: in every robust strategy they
take the coordinate-wise **median, exact, rounded half to even** (booleans: the
majority, a tie gives ``True``), so one hostile device cannot move a counter
either; Krum's and Bulyan's distances use the floating arrays only.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from .._util.checks import is_int, is_number
from ..errors import RoundFailed
from .base import Arrays, Strategy
from .store import ReplyStore, checked_spill_bytes, default_spill_bytes

__all__ = ["FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "EveryReply", "float_median"]


def _count(name: str, value: object, low: int) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def integer_median(rows: np.ndarray) -> np.ndarray:
    """The median of each column of an integer or boolean ``rows``, exact, in its dtype.

    With an even number of rows, the mean of the two middle values rounded half to
    even (no overflow for any integer dtype); booleans: the majority, ``True`` on a tie.
    """
    n = rows.shape[0]
    if rows.dtype.kind == "b":
        trues = np.count_nonzero(rows, axis=0)
        return trues >= n - trues
    ordered = np.sort(rows, axis=0)
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    wide = np.dtype(np.uint64 if rows.dtype.kind == "u" else np.int64)
    low_w = low.astype(wide)
    gap = high.astype(wide).view(np.uint64) - low_w.view(np.uint64)  # high - low, exact modulo 2**64
    middle = low_w + (gap >> np.uint64(1)).astype(wide)  # between low and high: no overflow
    odd = (gap & np.uint64(1)).astype(bool)
    middle += (odd & (middle % 2 != 0)).astype(wide)  # x.5 rounds to the even neighbour
    return middle.astype(rows.dtype)


def _mean(rows: np.ndarray) -> np.ndarray:
    """The mean of each column in float64, taken about the first row: equal rows give that row exactly.

    Finite rows give a finite mean: when a difference or a sum would overflow (float64
    values near 1.8e308), the rows are scaled by a power of two first (exact but for
    subnormals), and the mean scaled back.
    """
    rows = rows.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = rows[0] + (rows - rows[0]).mean(axis=0)
    if np.isfinite(mean).all() or not np.isfinite(rows).all():
        return mean
    shift = 2 + int(rows.shape[0]).bit_length()  # |sum of n differences| <= n * 2 * max, below max after it
    scaled = np.ldexp(rows, -shift)
    return np.ldexp(scaled[0] + (scaled - scaled[0]).mean(axis=0), shift)


def float_median(rows: np.ndarray) -> np.ndarray:
    """The median of each column of floating ``rows`` (an even count: the mean of the two middle values).

    Computed in float64 (float16/float32 values sum there exactly, so the result rounds once
    when cast back), and the two middle values' mean without overflow for float64 ones:
    ``numpy.median`` of finite float32 values near 3e38 gives infinity.
    """
    rows = rows.astype(np.float64, copy=False)
    n = rows.shape[0]
    ordered = np.partition(rows, ((n - 1) // 2, n // 2), axis=0)
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    with np.errstate(over="ignore", invalid="ignore"):
        middle = (low + high) * 0.5
    wide = ~np.isfinite(middle) & np.isfinite(low) & np.isfinite(high)
    middle[wide] = low[wide] * 0.5 + high[wide] * 0.5
    return middle


class EveryReply(Strategy):
    """A strategy over every reply at once: store them, then combine a chunk of coordinates at a time."""

    tree_refusal = "it needs every device's own reply, and an aggregator sends one merge of several"

    def __init__(self, spill_bytes: int | None) -> None:
        self.spill_bytes = checked_spill_bytes(spill_bytes)

    def aggregate(self, current: Arrays, results: Iterable[tuple[Arrays, int]]) -> dict[str, np.ndarray]:
        """Keep every reply (RAM, then the spill file), then combine them; the spill file is deleted after.

        Raises:
            RoundFailed: no reply with samples, or too few for the strategy's parameters.
        """
        layout = {name: (np.shape(a), np.asarray(a).dtype) for name, a in current.items()}
        budget = default_spill_bytes() if self.spill_bytes is None else self.spill_bytes
        with ReplyStore(layout, budget) as store:
            replies = iter(results)
            while (result := next(replies, None)) is not None:
                arrays, samples = result
                del result  # the reply's memory is the store's now, or released once spilled
                store.add(arrays, samples)
                del arrays
            if not len(store):
                raise RoundFailed(
                    "no device reported any training samples, so there is nothing to merge; "
                    "train(model) must return the number of samples it trained on, e.g. `return x.shape[0]`"
                )
            self.check_count(len(store))
            # Read back in an order set by the replies' content: partitions, ties ("the earlier reply") and
            # means of kept replies then give the same bits whatever order the replies arrived in.
            store.canonicalize()
            return self._combine(store)

    def check_count(self, n: int) -> None:
        """Check that ``n`` results are enough for this strategy's parameters.

        Called on every merge; call it before a run to fail early (the demo does).

        Raises:
            RoundFailed: ``n`` is too few (e.g. Krum with ``f`` Byzantine devices
                needs ``2f + 3``), naming the parameter.
        """

    def _too_few(self, n: int, needed: int, parameter: str) -> RoundFailed:
        return RoundFailed(
            f"{type(self).__name__} with {parameter} needs at least {needed} results, got {n}; "
            "the model was left unchanged. Lower the parameter, or sample more devices (min_results)"
        )

    def _combine(self, store: ReplyStore) -> dict[str, np.ndarray]:
        """Coordinate-wise: ``_reduce`` on the floating arrays of the replies ``_picked``,
        the exact median of every reply on the others."""
        picked = self._picked(store)
        merged = {}
        for name, (shape, dtype) in store.layout.items():
            out = np.empty(shape, dtype).reshape(-1)
            for first, end in store.chunks(name):
                if dtype.kind == "f":
                    rows = store.rows(name, first, end, picked)
                    out[first:end] = self._reduce(rows)
                else:
                    rows = store.rows(name, first, end)
                    out[first:end] = integer_median(rows)
                del rows
            merged[name] = out.reshape(shape)
        return merged

    def _picked(self, store: ReplyStore) -> list[int] | None:
        """The replies whose floating arrays ``_reduce`` combines (indices into ``store``); ``None``: all."""
        return None

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        """The result for one chunk of floating coordinates, ``rows``: ``(replies, chunk)``."""
        raise NotImplementedError


_MEMORY = """

    Memory: every reply is kept (not streaming): in RAM while the replies held stay
    within ``spill_bytes``, past that in a memory-mapped spill file in a temporary
    folder deleted when the merge ends. ``spill_bytes=None`` (default) is a quarter
    of the memory available when the merge begins (``MemAvailable`` in /proc/meminfo,
    else ``os.sysconf``; 1 GiB if neither can be read). Working memory on top: the new
    model and a (replies x chunk) float64 matrix of about 32 MiB."""


class FedMedian(EveryReply):
    """Coordinate-wise median (Yin, Chen, Ramchandran and Bartlett 2018, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates", ICML, arXiv:1803.01498).

    Each floating coordinate is the median of the replies' values (an even count takes
    the mean of the two middle values, as ``numpy.median``), computed in the array's
    dtype (float16 in float32).

    Args:
        spill_bytes: RAM budget for the replies, see below.

    Sample weights: ignored (as the paper and Flower). Defends against: fewer than
    half of the replies being arbitrary (Byzantine), coordinate by coordinate.
    """

    tree_refusal = "the median of the aggregators' medians is not the median of all devices' replies"

    __doc__ = (__doc__ or "") + _MEMORY

    def __init__(self, *, spill_bytes: int | None = None) -> None:
        super().__init__(spill_bytes)

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        return float_median(rows)


class FedTrimmedAvg(EveryReply):
    """Coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett 2018, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates", ICML, arXiv:1803.01498).

    With ``n`` replies, ``k = floor(beta * n)`` computed exactly from ``beta``'s decimal text
    (``Fraction(str(beta))``: 0.29 * 100 is 29, not 28); for each floating coordinate the
    ``k`` largest and ``k`` smallest values are dropped and the rest averaged (in float64).

    Args:
        beta: the fraction cut from each end, in [0, 0.5) (Flower's name and default: 0.2).
        spill_bytes: RAM budget for the replies, see below.

    Sample weights: ignored (as the paper and Flower). Defends against: up to
    ``k`` arbitrary values at each end of every coordinate.
    """

    tree_refusal = "trimming the aggregators' means is not trimming the devices' replies: an outlier hides in its mean"

    __doc__ = (__doc__ or "") + _MEMORY

    def __init__(self, *, beta: float = 0.2, spill_bytes: int | None = None) -> None:
        super().__init__(spill_bytes)
        if not is_number(beta) or not 0 <= beta < 0.5:
            raise ValueError(f"beta must be a number in [0, 0.5), the fraction cut from each end; got {beta!r}")
        self.beta = beta

    def cut(self, n: int) -> int:
        """How many values are dropped at each end of ``n``: ``floor(beta * n)``, exactly."""
        share = Fraction(str(self.beta)) * n
        return share.numerator // share.denominator

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        n = rows.shape[0]
        k = self.cut(n)
        if k:
            rows = np.partition(rows, (k, n - k - 1), axis=0)[k : n - k]
        return _mean(rows)


_DISTANCE_SHIFT = -600
"""Krum's distances of float64 replies too large to square are taken of the replies times 2**-600."""


def _distances(store: ReplyStore, shift: int = 0) -> np.ndarray:
    """Squared Euclidean distances between the replies' floating arrays: ``(n, n)`` float64.

    Finite replies give finite distances: float64 values whose squares overflow are
    measured again scaled by ``2**-600`` (the same order; only the scale differs).
    """
    n = len(store)
    d = np.zeros((n, n))
    with np.errstate(over="ignore", invalid="ignore"):
        for name, (_, dtype) in store.layout.items():
            if dtype.kind != "f":
                continue
            for first, end in store.chunks(name):
                rows = store.rows(name, first, end).astype(np.float64)
                if shift:
                    rows = np.ldexp(rows, shift)
                for i in range(n - 1):
                    diff = rows[i + 1 :] - rows[i]
                    d[i, i + 1 :] += np.einsum("ij,ij->i", diff, diff)
                del rows
    if not shift and not np.isfinite(d).all():
        return _distances(store, _DISTANCE_SHIFT)
    return d + d.T


def _scores(d: np.ndarray, members: list[int], f: int) -> list[float]:
    """Krum's score of each of ``members``: the sum of its ``max(1, len - f - 2)`` smallest distances to the others."""
    closest = max(1, len(members) - f - 2)
    scores = []
    for i in members:
        others = np.sort([d[i, j] for j in members if j != i])
        scores.append(float(others[:closest].sum()))
    return scores


class _KrumFamily(EveryReply):
    """Combines whole replies picked by their distances: floating arrays are the picked replies' mean."""

    tree_refusal = "it picks replies by their distances, and an aggregator's mean hides the devices it would single out"

    def __init__(self, num_malicious_clients: int, spill_bytes: int | None) -> None:
        super().__init__(spill_bytes)
        self.num_malicious_clients = _count("num_malicious_clients", num_malicious_clients, 0)

    def check_count(self, n: int) -> None:
        f = self.num_malicious_clients
        if n < 2 * f + 3:
            raise self._too_few(n, 2 * f + 3, f"num_malicious_clients={f} (n >= 2f + 3)")

    def _picked(self, store: ReplyStore) -> list[int]:
        raise NotImplementedError

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        return rows[0] if len(rows) == 1 else _mean(rows)


_KRUM = """(Blanchard, El Mhamdi, Guerraoui and Stainer 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS).

    With ``n`` replies and ``f = num_malicious_clients``, each reply's score is the sum of
    its squared Euclidean distances (over every floating array, in float64) to its
    ``n - f - 2`` closest other replies. """


class Krum(_KrumFamily):
    __doc__ = (
        "Krum "
        + _KRUM
        + """The result is the reply with the lowest score
    (on a tie, the first in the replies' canonical order, by digest), its floating arrays copied exactly.

    Args:
        num_malicious_clients: ``f``, the number of Byzantine devices to tolerate, >= 0
            (Flower's name and default: 0). A round needs ``n >= 2f + 3`` results, or it
            fails (:class:`~fedsync.errors.RoundFailed`) with the model unchanged.
        spill_bytes: RAM budget for the replies, see below.

    Sample weights: ignored (as the paper and Flower). Defends against: up to ``f``
    Byzantine replies, whatever they hold."""
        + _MEMORY
    )

    def __init__(self, *, num_malicious_clients: int = 0, spill_bytes: int | None = None) -> None:
        super().__init__(num_malicious_clients, spill_bytes)

    def _picked(self, store: ReplyStore) -> list[int]:
        scores = _scores(_distances(store), list(range(len(store))), self.num_malicious_clients)
        return [int(np.argmin(scores))]


class MultiKrum(_KrumFamily):
    __doc__ = (
        "MultiKrum "
        + _KRUM
        + """The result is the plain mean of the
    ``m = num_clients_to_keep`` replies with the lowest scores (section 5 of the paper:
    ``(1/m) * sum``; ties go to the earlier reply in the canonical order, by digest), in float64.

    Args:
        num_malicious_clients: ``f`` >= 0 (Flower's name and default: 0). A round needs
            ``n >= 2f + 3`` results, or it fails with the model unchanged.
        num_clients_to_keep: ``m`` >= 1; ``None`` (default) keeps ``n - f``. More than
            ``n`` results' worth fails the round. (Flower's name; its Krum strategy
            runs MultiKrum when this is above 0.)
        spill_bytes: RAM budget for the replies, see below.

    Sample weights: ignored, as the paper's mean (Flower's MultiKrum weighs the kept
    replies by their sample counts; docs/strategies.md). Defends against: up to ``f``
    Byzantine replies, averaging more honest ones than Krum."""
        + _MEMORY
    )

    def __init__(
        self, *, num_malicious_clients: int = 0, num_clients_to_keep: int | None = None, spill_bytes: int | None = None
    ) -> None:
        super().__init__(num_malicious_clients, spill_bytes)
        self.num_clients_to_keep = (
            None if num_clients_to_keep is None else _count("num_clients_to_keep", num_clients_to_keep, 1)
        )

    def check_count(self, n: int) -> None:
        super().check_count(n)
        if self.num_clients_to_keep is not None and self.num_clients_to_keep > n:
            raise self._too_few(n, self.num_clients_to_keep, f"num_clients_to_keep={self.num_clients_to_keep}")

    def _picked(self, store: ReplyStore) -> list[int]:
        n = len(store)
        m = n - self.num_malicious_clients if self.num_clients_to_keep is None else self.num_clients_to_keep
        scores = _scores(_distances(store), list(range(n)), self.num_malicious_clients)
        return sorted(int(i) for i in np.argsort(scores, kind="stable")[:m])


class Bulyan(_KrumFamily):
    """Bulyan (El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML, arXiv:1802.07927), with Krum as its selection rule.

    With ``n`` replies and ``f = num_malicious_clients``: select ``theta = n - 2f`` replies
    by applying Krum again and again to the replies not yet selected (each time the
    scores sum the ``max(1, remaining - f - 2)`` closest distances, as Flower); then for
    each floating coordinate take the ``beta = theta - 2f`` selected values closest to
    their median (ties: the earlier reply in the canonical order, by digest) and average them (float64).

    Args:
        num_malicious_clients: ``f`` >= 0 (Flower's name and default: 0). A round needs
            ``n >= 4f + 3`` results, or it fails (:class:`~fedsync.errors.RoundFailed`)
            with the model unchanged.
        spill_bytes: RAM budget for the replies, see below.

    Sample weights: ignored (as the paper and Flower). Defends against: up to ``f``
    Byzantine replies, including ones crafted to pass Krum with a large change on a
    few coordinates."""

    __doc__ = (__doc__ or "") + _MEMORY

    def __init__(self, *, num_malicious_clients: int = 0, spill_bytes: int | None = None) -> None:
        super().__init__(num_malicious_clients, spill_bytes)

    def check_count(self, n: int) -> None:
        f = self.num_malicious_clients
        if n < 4 * f + 3:
            raise self._too_few(n, 4 * f + 3, f"num_malicious_clients={f} (n >= 4f + 3)")

    def _picked(self, store: ReplyStore) -> list[int]:
        d = _distances(store)
        remaining = list(range(len(store)))
        selected = []
        for _ in range(len(store) - 2 * self.num_malicious_clients):
            scores = _scores(d, remaining, self.num_malicious_clients)
            selected.append(remaining.pop(int(np.argmin(scores))))
        return selected

    def _reduce(self, rows: np.ndarray) -> np.ndarray:
        # rows: the theta selected replies; beta = theta - 2f of them closest to the median
        beta = len(rows) - 2 * self.num_malicious_clients
        rows = rows.astype(np.float64)
        median = float_median(rows)
        with np.errstate(over="ignore"):  # a gap past float64's range is infinite: the farthest, as it should be
            gaps = np.abs(rows - median)
        closest = np.argsort(gaps, axis=0, kind="stable")[:beta]
        return _mean(np.take_along_axis(rows, closest, axis=0))
