"""Who takes part: a round's devices (``fraction=``, ``devices_per_round=``, ``sampler=``) and an evaluation's.

Training and evaluation draw from two generators, both seeded from ``Federated(seed=...)``:
evaluating (how often, on how many) never changes which devices train later.

Internal: part of :class:`fedsync.Federated`; its names may change without notice.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from .._util.checks import is_int
from .._util.json import shown
from ..strategies import DPFixedClipping
from ._round import sample_size

__all__ = [
    "Sampler",
    "EMPTY_ROUNDS",
    "checked_share",
    "checked_sampler",
    "chosen",
    "evaluation_rng",
    "round_rng",
    "draw",
]

Sampler = Callable[[int, list[str], random.Random], Sequence[Any]]
"""``sampler(server_round, available, rng) -> devices``: ``available`` the URLs, ``rng`` the coordinator's."""

EMPTY_ROUNDS = ("fail", "keep")
"""What ``Federated(empty_rounds=...)`` takes."""

_EXAMPLE = "e.g. sampler=lambda server_round, available, rng: rng.sample(available, 10)"


def checked_share(fraction: Any, devices_per_round: Any, devices: int) -> Fraction:
    """The exact share of ``devices`` a round samples, from ``fraction`` (default 1) or ``devices_per_round``.

    Raises:
        ValueError: both given, or either out of range.
    """
    if devices_per_round is not None:
        if fraction is not None:
            raise ValueError(
                f"fraction={fraction!r} and devices_per_round={devices_per_round!r} both say how many devices a "
                "round samples; pass one of them"
            )
        if not is_int(devices_per_round) or not 1 <= devices_per_round <= devices:
            raise ValueError(
                f"devices_per_round must be an integer between 1 and the number of remotes ({devices}), got "
                f"{shown(devices_per_round)}"
            )
        return Fraction(int(devices_per_round), devices)
    fraction = 1.0 if fraction is None else fraction
    try:
        share = (
            Fraction(str(fraction)) if isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) else None
        )
    except (ValueError, ZeroDivisionError):
        share = None
    if share is None or not 0 < share <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return share


def checked_sampler(sampler: Any) -> Sampler | None:
    """``sampler`` if it is ``None`` or callable.

    Raises:
        TypeError: naming the expected signature, with an example.
    """
    if sampler is not None and not callable(sampler):
        raise TypeError(
            f"sampler must be a function sampler(server_round, available, rng) -> list of devices, got "
            f"{type(sampler).__name__}; {_EXAMPLE}"
        )
    return sampler


def chosen(sampler: Sampler, number: int, remotes: Sequence[Any], rng: random.Random, data: Any, needed: int) -> list:
    """The remotes ``sampler`` chose for round ``number``, in its order; checked before anything is sent.

    ``sampler`` gets the URLs of ``remotes`` and may answer URLs or remote objects.

    Raises:
        ValueError: an unknown device, one listed twice, fewer than ``needed`` (``min_results``, at least 1),
            or central DP (its ε assumes uniform sampling), naming the sampler's answer.
        TypeError: the answer is not a list of devices.
    """
    if isinstance(getattr(data, "strategy", None), DPFixedClipping):
        raise ValueError(
            "sampler= cannot be combined with central DP (DPFixedClipping): the privacy accountant's ε assumes "
            "each round samples devices uniformly at random; use fraction= or devices_per_round= instead"
        )
    by_url = {r.url: r for r in remotes}
    answer = sampler(number, list(by_url), rng)
    what = f"sampler({number}, available, rng)"
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Sequence):
        raise TypeError(f"{what} must return a list of devices (URLs from available), got {shown(answer)}; {_EXAMPLE}")
    urls: list[Any] = [getattr(item, "url", item) for item in answer]
    unknown = [u for u in urls if not isinstance(u, str) or u not in by_url]
    if unknown:
        raise ValueError(
            f"{what} returned {len(unknown)} device(s) that are not among the coordinator's remotes, e.g. "
            f"{shown(unknown[0])}; return URLs from available. Nothing was sent"
        )
    twice = sorted({str(u) for u in urls if urls.count(u) > 1})
    if twice:
        raise ValueError(f"{what} returned {shown(twice[0])} more than once; list each device once. Nothing was sent")
    if len(urls) < needed:
        raise ValueError(
            f"{what} returned {len(urls)} device(s), fewer than the {needed} the round needs (min_results, at "
            "least 1); return more, or lower min_results. Nothing was sent"
        )
    return [by_url[u] for u in urls]


def round_rng(seed: Any, number: int, attempt: int = 0) -> random.Random:
    """The generator that samples round ``number`` (as people count rounds), its ``attempt``-th try.

    Derived from ``seed`` and the round's number alone, not from the rounds drawn before: a run resumed
    from its checkpoint samples round ``number`` as the uninterrupted run did. ``None``: the OS's entropy.
    """
    return random.Random() if seed is None else random.Random(f"fedsync round {number} try {attempt} of {seed}")


def evaluation_rng(seed: Any, number: int = 0) -> random.Random:
    """The generator of the evaluation after round ``number``: its own, apart from training's (``None``: entropy)."""
    return random.Random() if seed is None else random.Random(f"{evaluation_seed(seed)} after round {number}")


def evaluation_seed(seed: Any) -> str | None:
    """The seed of :func:`evaluation_rng` (``None`` when ``seed`` is), as a run's folder records it."""
    return None if seed is None else f"fedsync evaluation {seed}"


def draw(remotes: Sequence[Any], share: Fraction, min_results: int | None, rng: random.Random) -> list:
    """``sample_size(share, ...)`` of ``remotes`` drawn with ``rng``, in their listed order (all: no draw)."""
    count = sample_size(share, len(remotes), min_results)
    if count == len(remotes):
        return list(remotes)
    picked = set(rng.sample(range(len(remotes)), count))
    return [r for i, r in enumerate(remotes) if i in picked]
