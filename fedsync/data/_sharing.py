"""Which of a model's arrays travel (``FedArrays(shared=...)``), which stay frozen, which stay local.

- ``None`` (the default): every array travels.
- ``"trainable"``: the arrays a framework trains (torch ``requires_grad`` parameters, Keras
  ``trainable_weights``) travel; parameters it does not train (a frozen base model under LoRA
  adapters) stay on the device and are **frozen**: their content is fingerprinted into the specs,
  so every device must hold the same; buffers that change without being trained (BatchNorm's
  running statistics, counters; Keras' non-trainable weights of trainable layers) stay **local**.
- ``{"include": [...], "exclude": [...]}``: array names matched by ``fnmatch`` patterns travel
  (``include`` defaults to every name); the rest stay **local** (FedPer's head, FedBN's BatchNorm).

Local arrays are the device's own: never sent, never overwritten by the coordinator, kept between
rounds with the device's state (``device_state()``, as ``local/<name>``). Frozen ones are neither
sent nor kept: the declaration makes them, and the specs check they match everywhere.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Shared", "Selection", "check_shared", "select", "content_digest", "frozen_digest", "LOCAL"]

Shared = None | str | Mapping[str, Sequence[str]]
"""What ``FedArrays(shared=...)`` takes."""

LOCAL = "local/"
"""Prefix of a local array's name in the device's state."""

_EXAMPLE = "e.g. shared='trainable' or shared={'exclude': ['head.*']}"


@dataclass(frozen=True)
class Selection:
    """A model's array names by fate, each in the model's order."""

    shared: tuple[str, ...]
    frozen: tuple[str, ...] = ()
    local: tuple[str, ...] = ()

    def part_of(self, arrays: Mapping[str, Any]) -> bool:
        """``arrays`` holds exactly the arrays that travel, or exactly the local ones (when some stay)."""
        if self.everything:
            return False
        names = set(arrays)
        return names == set(self.shared) or (bool(self.local) and names == set(self.local))

    @property
    def everything(self) -> bool:
        """Every array travels (``shared=None``)."""
        return not self.frozen and not self.local


def check_shared(shared: Any) -> Shared:
    """``shared`` as given, checked: ``None``, ``"all"`` (read as ``None``), ``"trainable"``, or patterns.

    Raises:
        TypeError, ValueError: anything else, naming what is accepted.
    """
    if shared is None or shared == "all":
        return None
    if shared == "trainable":
        return "trainable"
    if isinstance(shared, str):
        raise ValueError(f"shared must be None, 'trainable' or a dict of patterns, got {shared!r}; {_EXAMPLE}")
    if not isinstance(shared, Mapping) or not shared or set(shared) - {"include", "exclude"}:
        raise TypeError(f"shared must be None, 'trainable' or {{'include': [...], 'exclude': [...]}}; {_EXAMPLE}")
    checked: dict[str, tuple[str, ...]] = {}
    for key, patterns in shared.items():
        if isinstance(patterns, str) or not isinstance(patterns, Sequence):
            raise TypeError(f"shared[{key!r}] must be a list of name patterns (fnmatch), got {patterns!r}")
        if not all(isinstance(p, str) and p for p in patterns):
            raise TypeError(f"shared[{key!r}] must hold non-empty strings, got {list(patterns)!r}")
        checked[key] = tuple(patterns)
    return checked


def select(names: Sequence[str], shared: Shared, kinds: Mapping[str, str] | None) -> Selection:
    """Split ``names`` (the model's, in order) by ``shared``; ``kinds``: each name's kind for ``"trainable"``.

    ``kinds`` maps a name to ``"trainable"``, ``"frozen"`` (a parameter not trained) or ``"buffer"``.

    Raises:
        ValueError: nothing would travel, or a pattern matches no array (a typo would otherwise keep
            layers local silently).
    """
    if shared is None:
        return Selection(tuple(names))
    if shared == "trainable":
        assert kinds is not None
        picked = Selection(
            tuple(n for n in names if kinds.get(n) == "trainable"),
            tuple(n for n in names if kinds.get(n) == "frozen"),
            tuple(n for n in names if kinds.get(n, "buffer") == "buffer"),
        )
        if not picked.shared:
            raise ValueError("shared='trainable', but the model has no trainable parameter: nothing would travel")
        return picked
    assert isinstance(shared, Mapping)
    include, exclude = shared.get("include", ("*",)), shared.get("exclude", ())
    for pattern in (*include, *exclude):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"shared's pattern {pattern!r} matches no array of the model (names: {list(names)[:8]})")
    travel = tuple(
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in include) and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    )
    if not travel:
        raise ValueError(f"shared={dict(shared)!r} selects no array: nothing would travel")
    return Selection(travel, (), tuple(n for n in names if n not in travel))


def check_ties(chosen: Selection, arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse arrays that share memory (tied weights) but do not share a fate (one travels, one stays).

    Raises:
        ValueError: naming the tied arrays and where each went.
    """
    fate = {**dict.fromkeys(chosen.shared, "travels"), **dict.fromkeys(chosen.frozen, "frozen")}
    fate.update(dict.fromkeys(chosen.local, "local"))
    names = [n for n in fate if isinstance(arrays.get(n), np.ndarray) and arrays[n].size]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if fate[a] != fate[b] and np.shares_memory(arrays[a], arrays[b]):
                raise ValueError(
                    f"{a!r} ({fate[a]}) and {b!r} ({fate[b]}) are the same tensor (tied weights): a coordinator's "
                    "update of one would change the other; give both the same fate in shared="
                )


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """``sha256:<64 hex>`` over each array in order: its name, NUL, numpy dtype string, NUL, shape, NUL, bytes (C).

    The frozen part's fingerprint and a download's view id (docs/protocol.md, "The download as a delta").
    """
    digest = hashlib.sha256()
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        digest.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        digest.update(a.reshape(-1).view(np.uint8).data)
    return "sha256:" + digest.hexdigest()


def frozen_digest(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
    """``sha256:<32 hex>``: :func:`content_digest` of the frozen arrays, in ``names``' order, shortened."""
    return content_digest({name: arrays[name] for name in names})[: len("sha256:") + 32]
