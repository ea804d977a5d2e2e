"""The coordinator's switch for secure aggregation: :class:`SecAgg` and its bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._util.checks import is_int, is_number
from ..wire.metrics import MAX_SAMPLES

__all__ = [
    "SecAgg",
    "MAX_DEVICES",
    "MIN_THRESHOLD",
    "MAX_CLIP",
    "MAX_SCALE",
    "PHASE_SHARE",
    "RING",
    "checked_bound",
    "checked_clip",
    "threshold_range",
]

MAX_DEVICES = 128
"""The most devices in one secure-aggregation round. Shamir sharing in GF(2^128) costs each
device about 0.3 s at n = 128 (two splits with t = 65) and the coordinator about 0.19 s per
rebuilt secret, one per device: about 25 s of CPU a round at 128 devices, growing as n**2
(and the coordinator relays n**2 encrypted shares). Past this, sample fewer devices a round."""
MIN_THRESHOLD = 3
"""The smallest ``t``: every unmasked sum covers at least 3 devices (a sum of two is either one to the other)."""
RING = 2**64
INT64_MAX = 2**63 - 1
MAX_CLIP = 2**62
"""The largest ``clip``: past it, even ``scale = 1`` and one sample overflow the ring's 63 bits."""
MAX_SCALE = 2**52
"""The largest fixed-point ``scale``."""
PHASE_SHARE = {"keys": 0.25, "shares": 0.25, "inbox": 0.25, "consistency": 0.5, "unmask": 0.5}
"""The part of the round's time left one phase waits for a device (as the handshake's ``HANDSHAKE_SHARE``), so
a silent device is dropped and the round goes on: after three setup phases that each lost a device, training
still has (3/4)**3 of the time; unmask and consistency leave half of theirs to rebuild the masks."""


@dataclass(frozen=True)
class SecAgg:
    """Secure aggregation (Bonawitz et al. 2017): the coordinator learns only the sum of the updates.

    Pass it as ``Federated(data, remotes, secure_aggregation=SecAgg(...))``; see
    docs/privacy.md for what it hides and costs, docs/protocol.md for the phases.

    Args:
        threshold: ``t``, the shares needed to rebuild a device's secret, and so the
            fewest devices that must stay to the end (and the most a coalition of
            curious devices with the coordinator may number, minus one, without learning
            an update). Default: a majority of the round's devices (those sampled
            that passed the handshake), at least 3. Devices refuse a ``t`` that is not
            a majority of the round or below 3 (:func:`threshold_range`): with
            ``t <= n / 2`` a coordinator could ask two disjoint groups of ``t`` for
            both secrets of one device and unmask it.
        clip: each update element (trained minus global weight) is clipped to
            ``[-clip, clip]`` before quantization.
        scale: fixed-point scale: an update element is sent as ``rint(x * scale)``, so the
            merged weights are within ``0.5 / scale`` of FedAvg's (clipping aside).
        max_samples: the largest sample count a device may report; with ``clip`` and
            ``scale`` it bounds the sum, which must fit in 63 bits (checked each round).

    Raises:
        ValueError: a value out of range.
    """

    threshold: int | None = None
    clip: float = 1.0
    scale: int = 2**20
    max_samples: int = 2**20

    def __post_init__(self) -> None:
        if self.threshold is not None and (
            not is_int(self.threshold) or not MIN_THRESHOLD <= self.threshold <= MAX_DEVICES
        ):
            raise ValueError(
                f"threshold must be an integer from {MIN_THRESHOLD} to "
                f"{MAX_DEVICES} (or None: a majority), got {self.threshold!r}"
            )
        checked_clip(self.clip)
        if not is_int(self.scale) or not 1 <= self.scale <= MAX_SCALE:
            raise ValueError(f"scale must be an integer from 1 to 2**52, e.g. 2**20, got {self.scale!r}")
        if not is_int(self.max_samples) or not 1 <= self.max_samples <= MAX_SAMPLES:
            raise ValueError(f"max_samples must be an integer from 1 to {MAX_SAMPLES}, got {self.max_samples!r}")
        self.bound(2)

    def threshold_for(self, devices: int) -> int:
        """``t`` for a round whose keys phase ``devices`` devices answered."""
        return self.threshold if self.threshold is not None else threshold_range(devices)[0]

    def bound(self, devices: int) -> int:
        """The largest ``|sum of n_k * q_k|`` for ``devices`` devices; ValueError if it passes 2**63 - 1."""
        return checked_bound(self.clip, self.scale, self.max_samples, devices)


def threshold_range(devices: int) -> tuple[int, int]:
    """The ``t`` a device accepts in a round of ``devices`` devices.

    At least a majority and :data:`MIN_THRESHOLD`, at most ``devices``.

    A majority, because two disjoint groups of ``t`` devices would otherwise exist: a
    coordinator could tell one group that device ``u`` survived (shares of ``b_u``) and the
    other that it dropped (shares of ``s_u``), each device revealing one secret only, and
    unmask ``u`` (Bonawitz et al. 2017, section 4: honest devices must outnumber ``n - t``).
    """
    return max(MIN_THRESHOLD, devices // 2 + 1), devices


def checked_clip(clip: object) -> float:
    """``clip`` as a float, if it is a number in ``(0, MAX_CLIP]``.

    Checked before any arithmetic: a clip of 1e300 or a 400-digit integer would otherwise
    overflow (``OverflowError``) in the bound's computation instead of being refused.

    Raises:
        ValueError: not a number (bools refused), not positive, or past :data:`MAX_CLIP`.
    """
    if not is_number(clip) or not 0 < clip <= MAX_CLIP:
        shown = (
            repr(clip) if not isinstance(clip, int) or abs(clip) < 10**30 else f"an integer of {len(str(clip))} digits"
        )
        raise ValueError(
            f"clip must be a number above 0 and at most 2**62 (the largest |update element|, e.g. 1.0), got {shown}"
        )
    return float(clip)


def checked_bound(clip: float, scale: int, max_samples: int, devices: int) -> int:
    """``(ceil(clip * scale) + 1) * max_samples * devices``, which must stay below 2**63 (so the sum never wraps).

    Raises:
        ValueError: a parameter out of its range (:func:`checked_clip`, ``scale`` 1 to 2**52, ``max_samples`` and
            ``devices`` from 1), or the bound past 2**63 - 1.
    """
    clip = checked_clip(clip)
    for name, value, high in (
        ("scale", scale, MAX_SCALE),
        ("max_samples", max_samples, 2**53),
        ("devices", devices, MAX_DEVICES),
    ):
        if not is_int(value) or not 1 <= value <= high:
            raise ValueError(f"{name} must be an integer from 1 to {high}, got {value!r}")
    bound = (math.ceil(clip * scale) + 1) * max_samples * devices
    if bound > INT64_MAX:
        raise ValueError(
            f"secure aggregation could overflow: clip * scale * max_samples * devices = {bound} is past 2**63 - 1; "
            "lower clip, scale or max_samples (e.g. SecAgg(scale=2**16))"
        )
    return bound
