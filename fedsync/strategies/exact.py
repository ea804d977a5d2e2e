"""An order-independent sum of ``value * samples`` products: the exact core of FedAvg's float32 merge.

Reproducible summation after Demmel and Nguyen ("Parallel Reproducible Summation",
IEEE Transactions on Computers 64(7), 2015; ReproBLAS's *binned* accumulators), in
integers. A float16/float32 value ``x`` times a sample count ``n < 2**29`` is exact in
float64 (24 + 29 <= 53 significant bits); a larger ``n`` is split into 29-bit parts, each
product exact and scaled by a power of two. Each product is cut into signed ``W = 32``-bit
digits at **absolute** bit positions (multiples of ``W``), from the highest position down:
each digit is what is left rounded to a multiple of its position's unit (Demmel and Nguyen's
extraction, ``(a + 1.5 * 2**52 * u) - 1.5 * 2**52 * u``). Each element keeps the sums of its
``K = 3`` highest digit positions in three float64 *bins* holding integer multiples of their
unit (exact below 2**53 units: up to :data:`MAX_DEPOSITS` digits each), with no carry
between them while replies arrive. The highest position (``top``, per element) is the
highest any product so far can reach, from its float32 exponent alone, with a bit to spare:
``|p| < 2**(W (top + 1) - 1)``, half the unit of any higher position, so a digit there
rounds to 0. When a product reaches higher, the element's bins move down and the lowest
ones drop.

Why the result does not depend on the order of the replies: a product's digit at a
position depends only on the product, never on the bins, and a bin holds the plain integer
sum of the digits at its position (a top that rises finds the same digits below it: the
new, higher digits of every earlier product are 0); so the bins at the end hold, at the positions
``top - 2 .. top`` with ``top`` set by the largest product of all, the sum of those
digits, however the products came. Integers below 2**53 add exactly in any order.

What it guarantees: every product whose lowest bit is at or above the lowest kept position
``W (top - 2)`` adds exactly: at least every product within ``2**11`` of the one that set
``top`` (so equal replies ``x`` give ``x * N`` exactly, and their mean exactly ``x``); any
other is rounded to that position, a unit below ``2**-35`` of the largest product, the same
way in any order. The mean is formed once at the end (:meth:`ExactSum.mean`): the bins are
normalized exactly, turned into a float64 sum (exact when the sum fits in 53 bits), divided
by ``N`` in float64 and rounded to the array's dtype: within one unit in the last place of
float32, plus the rounding of far smaller products.

Memory: ``3 * 8 + 2 = 26`` bytes per element (three float64 bins and an int16 ``top``):
6.5 float32 model copies, 13 float16 ones.

float64 values (``ExactSum(size, np.float64)``) take the same path with three changes. A
float64 value has 53 significant bits, so it is cut exactly into three pieces of 24 bits or
fewer (its significand's bits, by masking: ``x = x1 + x2 + x3``), each deposited as a float32
value is: three deposits per 29-bit part of the sample count. The element keeps
:data:`WIDE_BINS` ``= 4`` positions (128 bits, so a whole ``x * n`` of 53 + 29 bits fits
below the top), and the power of two that scales a product into units is applied in two
halves (float64's exponents reach further than one float64 factor can scale). The mean is
a long division of the normalized digits by ``N`` in integers (8 bits at a time, so the
remainder times 256 stays below 2**61 for any ``N`` up to 2**53), the quotient summed into
float64 from its lowest byte up: exact whenever the mean fits in 53 bits, so equal replies
give exactly their value while the round's samples stay below 2**29. Memory:
``4 * 8 + 2 = 34`` bytes per element, 4.25 float64 model copies; CPU about three times a
float32 sum's per element.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ExactSum", "WIDTH", "BINS", "WIDE_BINS", "PART_BITS", "MAX_DEPOSITS", "exact_dtype"]

WIDTH = 32
"""Bits of a digit (``W``)."""
BINS = 3
"""Digit positions kept per element (``K``): ``W K >= 53 + W - 1``, so a largest product fits whole."""
WIDE_BINS = 4
"""``K`` for float64 values: ``W (K - 1) >= 53 + 29``, so a whole ``x * n`` (one 29-bit part) fits below the top."""
PART_BITS = 29
"""A sample count is multiplied in parts of this many bits: 24 + 29 = 53, exact in float64."""
MAX_DEPOSITS = 2**20
"""The most deposits into one sum: digits below 2**32 each, so a float64 bin stays an exact integer below 2**53."""
_EMPTY = np.iinfo(np.int16).min
_STEP = 1 << 16  # elements per step: its scratch arrays stay in cache


def exact_dtype(dtype: np.dtype) -> bool:
    """Arrays of ``dtype`` merge through :class:`ExactSum`: float16, float32 and float64."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" and dtype.itemsize <= 8


class ExactSum:
    """``sum(x_k * n_k)`` over replies, per element, independent of their order; ``size`` elements.

    Add pieces with :meth:`add` (any order, any piece boundaries), then take :meth:`mean`.
    The bins are float64 holding integers below 2**53 (each digit is below 2**32, and at
    most :data:`MAX_DEPOSITS` are added), so every addition to them is exact.

    Args:
        size: elements.
        dtype: of the values added: float16 or float32 (the default; 26 bytes per element),
            or float64 (34 bytes per element, see the module's docstring).

    Raises:
        ValueError: ``dtype`` is not float16, float32 or float64.
    """

    def __init__(self, size: int, dtype: np.dtype | type = np.float32) -> None:
        dtype = np.dtype(dtype)
        if not exact_dtype(dtype):
            raise ValueError(f"ExactSum sums float16, float32 or float64 values, not {dtype.name}")
        self.wide = dtype.itemsize == 8
        """float64 values: three 24-bit pieces each, :data:`WIDE_BINS` positions."""
        self.k = WIDE_BINS if self.wide else BINS
        self.bins = np.zeros((self.k, size))
        self.top = np.full(size, _EMPTY, np.int16)
        self._deposits = 0

    def add(self, first: int, values: np.ndarray, samples: int) -> None:
        """Add ``values * samples`` to elements ``[first, first + len(values))``; ``values`` float16/float32.

        Raises:
            ValueError: more than :data:`MAX_DEPOSITS` deposits (replies, and one more per 29 bits of a
                sample count past 2**29).
        """
        parts = []
        rest, shift = samples, 0
        while rest:
            part = rest & ((1 << PART_BITS) - 1)
            if part:
                parts.append((part, shift))
            rest >>= PART_BITS
            shift += PART_BITS
        if first == 0:
            self._deposits += len(parts) * (3 if self.wide else 1)
        if self._deposits > MAX_DEPOSITS:
            raise ValueError(f"more than {MAX_DEPOSITS} deposits in one merge; the exact sum cannot take them")
        if self.wide:
            values = values.astype(np.float64, copy=False)
            for start in range(0, values.size, _STEP):
                piece = values[start : start + _STEP]
                thirds = _thirds(piece)
                for part, shift in parts:
                    self._deposit_wide(first + start, piece, thirds, part, shift)
            return
        values = values.astype(np.float32, copy=False)  # float16 widens exactly
        for start in range(0, values.size, _STEP):
            piece = values[start : start + _STEP]
            for part, shift in parts:
                self._deposit(first + start, piece, part, shift)

    def _deposit(self, first: int, piece: np.ndarray, part: int, shift: int) -> None:
        """Add the digits of ``piece * part * 2**shift`` (exact products) to the bins of its elements."""
        end = first + piece.size
        # The highest position a product can reach, from its float32 exponent field alone (a function
        # of the product, so the final top is the same in any order): its bits lie in [lsb, lsb + 53).
        # reach = (lsb + 53) // W with lsb = max(exponent field, 1) - 150 + shift, from the bits (int16 all
        # along): |product| < 2**(lsb + 53) <= 2**(W (reach + 1) - 1), half the unit of any higher
        # position, so a digit there rounds to 0 and a top that rises later finds the same digits below.
        top = self.top[first:end]
        reach = (piece.view(np.uint32) >> np.uint32(23)).astype(np.int16)
        reach &= np.int16(0xFF)
        np.maximum(reach, np.int16(1), out=reach)  # exponent field 0: subnormals, lsb 2**-149
        reach += np.int16(-150 + 53 + shift)
        reach >>= 5  # floor division by W = 32
        if (reach > top).any():
            self._grow(top, first, end, reach)
        # In units of the lowest kept position, 2**(W (top - 2)): times a power of two (built from its
        # bits, 2**(1023 + 64 - 32 top) biased), exact.
        scale = top.astype(np.int64)
        scale *= -WIDTH
        scale += 1023 + WIDTH * (BINS - 1)
        scale <<= 52
        a = np.multiply(piece, float(part) * 2.0**shift, dtype=np.float64)
        a *= scale.view(np.float64)
        self._digits(first, end, a)

    def _digits(self, first: int, end: int, a: np.ndarray) -> None:
        """Add the digits of ``a`` (products in units of each element's lowest kept position) to the bins."""
        bins = self.bins
        high = np.empty_like(a)
        rounders = _ROUNDERS[-self.k :]
        for j, rounder in enumerate(rounders):
            # The digit, a rounded to a multiple of this position's unit ((a + r) - r, Demmel and Nguyen's
            # extraction), kept times its unit; what is below the lowest unit is dropped.
            np.add(a, rounder, out=high)
            high -= rounder
            bins[j, first:end] += high
            if j < self.k - 1:
                a -= high

    def _deposit_wide(
        self, first: int, piece: np.ndarray, thirds: tuple[np.ndarray, ...], part: int, shift: int
    ) -> None:
        """Add ``piece * part * 2**shift`` (float64 values) as its three exact products ``third * part``."""
        end = first + piece.size
        # |x| < 2**(e - 1022) for the exponent field e (subnormals: e = 1), and every third is at most |x|:
        # each product is below 2**(e - 1022 + 29 + shift), so reach is computed as for float32 above.
        top = self.top[first:end]
        reach = (piece.view(np.uint64) >> np.uint64(52)).astype(np.int16)
        reach &= np.int16(0x7FF)
        np.maximum(reach, np.int16(1), out=reach)
        reach += np.int16(-1022 + PART_BITS + shift)
        reach >>= 5
        if (reach > top).any():
            self._grow(top, first, end, reach)
        # Units of the lowest kept position, 2**(W (top - K + 1)): scaled by 2**t in two halves, since t
        # (from -1100 to 1100) is past what one float64 power of two holds. Each step is exact: the values
        # stay between the third and the final product (below 2**127 units), or far below one unit.
        t = top.astype(np.int32)
        t *= -WIDTH
        t += WIDTH * (self.k - 1) + shift
        half = t >> 1
        t -= half
        for third in thirds:
            a = np.ldexp(third, half)
            a *= float(part)
            a = np.ldexp(a, t, out=a)
            self._digits(first, end, a)

    def _grow(self, top: np.ndarray, first: int, end: int, reach: np.ndarray) -> None:
        """Raise ``top`` (a view of elements ``[first, end)``) to ``reach`` where higher: bins move down.

        Works on the grown elements only (after the first reply, few of them).
        """
        if top[0] == _EMPTY and (top == _EMPTY).all():  # the first reply: bins are zeros, only the top moves
            np.maximum(top, reach, out=top)
            return
        where = np.flatnonzero(reach > top)
        old = top[where].astype(np.int32)
        new = reach[where]
        k = self.k
        moved = np.where(old == _EMPTY, k, np.minimum(new - old, k))  # no deposit yet: zeros anyway
        index = first + where
        before = self.bins[:, index]  # a copy: bins hold digits times their unit, so a move rescales
        for j in range(k):
            source = j - moved
            scaled = before[np.clip(source, 0, k - 1), np.arange(index.size)] * np.ldexp(1.0, -WIDTH * moved)
            self.bins[j, index] = np.where(source >= 0, scaled, 0.0)
        top[where] = new

    def mean(self, total: int, dtype: np.dtype) -> np.ndarray:
        """``sum / total`` rounded to ``dtype`` (float32, or float16's accumulator float32; float64), flat.

        The bins are first normalized exactly (carries in int64, then sign and magnitude),
        so the float64 sum of their values is exact whenever the sum fits in 53 bits.
        float64 sums are divided in integers first (:meth:`_wide_mean_of`).
        """
        size = self.top.size
        out = np.empty(size, dtype)
        for first in range(0, size, _STEP):
            end = min(size, first + _STEP)
            if self.wide:
                out[first:end] = self._wide_mean_of(first, end, total)
            else:
                out[first:end] = self._mean_of(first, end, float(total))
        return out

    def _wide_mean_of(self, first: int, end: int, total: int) -> np.ndarray:
        """The mean of float64 sums: ``digits / total`` by long division, 8 bits at a time, then to float64.

        The quotient keeps 7 bytes below the lowest kept unit (``total`` <= 2**53 moves a bit of the mean
        at most 53 places down), so a mean of 53 bits or fewer, such as equal replies', comes out exactly.
        """
        digits = [(self.bins[j, first:end] * (1.0 / _UNIT[j - self.k])).astype(np.int64) for j in range(self.k)]
        _carry(digits)
        sign = np.where(digits[0] < 0, -1, 1)
        for d in digits:
            d *= sign
        _carry(digits)  # magnitude: the top digit below 2**53, the others in [0, 2**W)
        n = np.int64(total)
        quotient = [digits[0] // n]
        rest = digits[0] % n
        byte = np.int64(0xFF)
        for d in digits[1:]:
            for b in range(WIDTH // 8 - 1, -1, -1):
                rest = (rest << 8) | ((d >> (8 * b)) & byte)  # below 256 * total <= 2**61
                quotient.append(rest // n)
                rest %= n
        for _ in range(_EXTRA_BYTES):
            rest <<= 8
            quotient.append(rest // n)
            rest %= n
        # Lowest byte first: each partial sum is a suffix of the quotient's bits, exact while it fits 53 bits.
        value = np.zeros(end - first)
        for i, q in enumerate(reversed(quotient[1:])):
            value += np.ldexp(q.astype(np.float64), 8 * i)
        value += np.ldexp(quotient[0].astype(np.float64), 8 * (len(quotient) - 1))
        # value is in units of 2**(W (top - K + 1) - 8 * _EXTRA_BYTES).
        scale = self.top[first:end].astype(np.int32) - (self.k - 1)
        scale *= WIDTH
        scale -= 8 * _EXTRA_BYTES
        value = np.ldexp(value, scale)
        value *= sign
        return value

    def _mean_of(self, first: int, end: int, total: float) -> np.ndarray:
        # Digits as integers (float64 bins hold integer multiples of their position's unit), top first.
        digits = [(self.bins[j, first:end] * (1.0 / _UNIT[j - BINS])).astype(np.int64) for j in range(BINS)]
        _carry(digits)  # lower digits in [0, 2**W); the top one holds the sign of the sum
        sign = np.where(digits[0] < 0, -1, 1)
        for d in digits:
            d *= sign
        _carry(digits)  # the magnitude's digits: all >= 0
        # Lowest first: the lower digits are a suffix of the sum's bits (exact when the sum has 53 or fewer).
        value = digits[2] * 2.0 ** (-2 * WIDTH)
        value += digits[1] * 2.0**-WIDTH
        value += digits[0]  # in units of the top position
        top = self.top[first:end]
        value *= _TOPS.take(np.clip(top, _TOP_LOW, _TOP_HIGH).astype(np.intp) - _TOP_LOW)
        value *= sign
        value /= total
        return value


def _thirds(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``x`` as ``x1 + x2 + x3``, exactly, each of 24 significant bits or fewer (no overflow anywhere).

    ``x1``: ``x`` with the 29 lowest bits of its significand cleared; ``x2``: the same of ``x - x1``
    (exact: the cleared bits); ``x3 = x - x1 - x2``, at most 5 bits.
    """
    tiny = np.abs(x) < _TINY
    if tiny.any():  # a subnormal's bits start below its field's highest: split it scaled up, exactly
        x = x.copy()
        x[tiny] = np.ldexp(x[tiny], _LIFT)
    clear = np.uint64(~((1 << 29) - 1) & ((1 << 64) - 1))
    x1 = (x.view(np.uint64) & clear).view(np.float64)
    rest = x - x1
    x2 = (rest.view(np.uint64) & clear).view(np.float64)
    thirds = (x1, x2, rest - x2)
    if tiny.any():  # back down: each third's bits are some of x's, on its grid, so exact
        for t in thirds:
            t[tiny] = np.ldexp(t[tiny], -_LIFT)
    return thirds


_TINY = 2.0**-900
"""Below this, a float64 value (or the 29 bits after its highest 24) may be subnormal: it is split times 2**_LIFT."""
_LIFT = 256


def _carry(digits: list[np.ndarray]) -> None:
    """Floor carries from the lowest digit up, in place: every digit but the top one ends in ``[0, 2**W)``."""
    low = np.int64((1 << WIDTH) - 1)
    for j in range(len(digits) - 1, 0, -1):
        digits[j - 1] += digits[j] >> WIDTH
        digits[j] &= low


_TOP_LOW, _TOP_HIGH = -8, 16
"""The range of ``top`` for float32 products: lsb from 2**-149, highest bit below 2**(128 + 29 * 2 + 29)."""
_TOPS = np.array([2.0 ** (WIDTH * t) for t in range(_TOP_LOW, _TOP_HIGH + 1)])
"""``2**(W top)`` by ``top - _TOP_LOW``: the top position's unit."""
_UNIT = tuple(float(2 ** (WIDTH * (WIDE_BINS - 1 - j))) for j in range(WIDE_BINS))
"""Each position's unit, in units of the lowest kept one, highest first; a float32 sum takes the last ``BINS``."""
_EXTRA_BYTES = 7
"""Bytes of a float64 mean's quotient below the lowest kept unit: ``ceil(53 / 8)``."""
_ROUNDERS = tuple(1.5 * 2.0**52 * unit for unit in _UNIT)
"""``(a + r) - r`` rounds ``a`` (``|a| <= 2**51`` units) to a multiple of the unit, half to even."""
