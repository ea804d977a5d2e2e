"""Reproducible runs: what a run records so that a rerun can be checked, and the check.

Every round :class:`~fedsync.Federated` records in its :class:`~fedsync.coordinator.history.RoundResult`
what a replay compares:

- ``sampled``: the devices the round sampled, in the sampler's order;
- ``configs``: the configuration sent to each device, by URL;
- ``payload_sha256``: the SHA-256 of the payload the coordinator sent;
- ``model_sha256``: the SHA-256 of the coordinator's state after the round (its ``serialize`` output,
  what the checkpoint's ``state_sha256`` is for that round);

and once per run, in ``History.run`` (a :class:`~fedsync.coordinator.history.RunRecord`), the seed, the
evaluation generator's seed and fedsync's version. They are saved in the history, so in a checkpoint folder
(``Federated(checkpoint=DIR)``, ``run_simulation(checkpoint=DIR)``) and in ``History.save``'s file.

The recipe (docs/simulation.md, "Reproducible runs"): run the same script twice, with checkpoint folders
``A`` and ``B``, then ``fedsync replay A B`` (or :func:`compare_runs`): it prints ``identical`` or the first
round and field that differ, and exits 0 or 1.

Files are read as a saved run is read anywhere in fedsync: bounded, strict JSON, every field checked
(:meth:`History.load`, :func:`fedsync.coordinator.checkpoint.read_history`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._util.json import shown
from .._version import __version__
from ..protocol import FedData
from . import checkpoint as checkpoint_io
from ._sampling import evaluation_seed
from .history import MAX_SEED, History, RoundResult, RunRecord

__all__ = [
    "Difference",
    "FIELDS",
    "compare_runs",
    "read_run",
    "run_notes",
    "digest",
    "run_record",
    "record_sent",
    "record_model",
]

FIELDS = ("sampled", "configs", "payload_sha256", "answered", "model_sha256")
"""What :func:`compare_runs` compares in each round, in this order: the first that differs is reported.
``answered`` (the devices whose replies were merged, as a set) explains a model digest that differs
because a device failed in one run."""

_RECORDED = ("sampled", "configs", "payload_sha256", "model_sha256")  # what fedsync writes for a replay


@dataclass(frozen=True)
class Difference:
    """The first place where two runs differ."""

    round: int
    """The round, as people count them (1 for a run's first; repetition numbers may differ between runs)."""
    field: str
    """Which of :data:`FIELDS` differs, or ``"rounds"`` when one run has fewer rounds."""
    a: str
    """What run A holds there (shortened for display)."""
    b: str
    """What run B holds there."""

    def __str__(self) -> str:
        return f"round {self.round}, {self.field}: A {self.a}, B {self.b}"


def digest(payload: Any) -> str:
    """The SHA-256 (64 lowercase hex digits) of a FedData's ``serialize`` output, hashed without copying it.

    ``payload``: ``bytes``-like, a :class:`fedsync.wire.codec.Payload` (its frames in order), or ``str`` (UTF-8).
    """
    hasher = hashlib.sha256()
    if isinstance(payload, str):
        hasher.update(payload.encode("utf-8"))
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        hasher.update(payload)
    else:
        for frame in payload:  # a codec.Payload: the bytes it sends, frame by frame
            hasher.update(frame)
    return hasher.hexdigest()


def run_record(seed: Any) -> RunRecord:
    """The :class:`RunRecord` of a run started with ``Federated(seed=seed)``."""
    kept: int | str | None
    if seed is None or (type(seed) is int and abs(seed) < 2**1024):
        kept = seed
    else:
        text = seed if isinstance(seed, str) else repr(seed)
        kept = text if len(text) <= MAX_SEED else f"{text[: MAX_SEED - 75]}... sha256:{digest(text)}"
    return RunRecord(seed=kept, evaluation_seed=_clipped(evaluation_seed(seed)), fedsync=__version__)


def _clipped(text: str | None) -> str | None:
    if text is None or len(text) <= 2 * MAX_SEED:
        return text
    return f"{text[:MAX_SEED]}... sha256:{digest(text)}"


def record_sent(result: RoundResult, sampled: Sequence[Any], configs: Mapping[str, Any], payload: Any) -> None:
    """Record on ``result`` the round's sampled devices (remotes), each one's config and the payload's digest."""
    result.sampled = [remote.url for remote in sampled]
    result.configs = {url: dict(config) for url, config in configs.items()}
    result.payload_sha256 = digest(payload)


def record_model(result: RoundResult, data: FedData) -> None:
    """Record on ``result`` the digest of ``data``'s state after the round (its ``serialize`` output)."""
    result.model_sha256 = digest(data.serialize(result.repetition))


def read_run(path: str | os.PathLike[str]) -> History:
    """The history of a run: a checkpoint folder (``Federated(checkpoint=...)``) or a ``History.save`` file.

    Raises:
        FileNotFoundError: there is nothing at ``path``.
        ValueError: naming ``path`` and the cause (a :class:`~fedsync.errors.CheckpointError` for a folder):
            a damaged, edited, oversized or malformed record.
    """
    where = Path(path)
    if where.is_dir():
        return checkpoint_io.read_history(where)
    if not where.exists() and not where.is_symlink():
        raise FileNotFoundError(
            f"{where} does not exist; name a checkpoint folder (Federated(checkpoint=...)) or a history file "
            "(History.save)"
        )
    return History.load(where)


def compare_runs(a: History | str | os.PathLike[str], b: History | str | os.PathLike[str]) -> Difference | None:
    """The first round and field where runs ``a`` and ``b`` differ, or ``None`` when every round matches.

    ``a`` and ``b``: histories, checkpoint folders or ``History.save`` files (:func:`read_run`). Rounds are
    compared in order by :data:`FIELDS`; a field one run records and the other does not (a history written by an
    older fedsync) differs. A run that has more rounds differs at the first round the other lacks
    (``field="rounds"``). What the runs were started with (seeds, fedsync's version) is not compared here:
    :func:`run_notes` says how it differs.

    Raises:
        ValueError: a file or folder that is not a run's record (:func:`read_run`), or neither run records
            anything a replay compares (both written before fedsync recorded it).
        FileNotFoundError: nothing at a path.
    """
    first = a if isinstance(a, History) else read_run(a)
    second = b if isinstance(b, History) else read_run(b)
    if not _records(first) and not _records(second):
        raise ValueError(
            "neither run records the sampled devices, configs or digests a replay compares (histories written by "
            f"an older fedsync); rerun both with fedsync {__version__}"
        )
    for number, (left, right) in enumerate(zip(first.rounds, second.rounds, strict=False), start=1):
        for name in FIELDS:
            found = _differs(number, name, left, right)
            if found is not None:
                return found
    if len(first) != len(second):
        number = min(len(first), len(second)) + 1
        return Difference(number, "rounds", f"has {len(first)} rounds", f"has {len(second)} rounds")
    return None


def run_notes(a: History, b: History) -> list[str]:
    """How the runs' :class:`RunRecord` differ (seed, evaluation seed, fedsync version), one line each."""
    notes = []
    left, right = a.run, b.run
    if left is None or right is None:
        missing = " and ".join(name for name, run in (("A", left), ("B", right)) if run is None)
        return [f"{missing} records no seed or fedsync version (written by an older fedsync)"]
    for name in ("seed", "evaluation_seed", "fedsync"):
        if getattr(left, name) != getattr(right, name):
            notes.append(f"{name} differs: A {shown(getattr(left, name))}, B {shown(getattr(right, name))}")
    if left.seed is None and right.seed is None:
        notes.append(
            "neither run was seeded (Federated(seed=...)): sampling cannot repeat unless every round takes all"
        )
    return notes


def _records(history: History) -> bool:
    return any(getattr(r, name) is not None for r in history.rounds for name in _RECORDED)


def _differs(number: int, name: str, left: RoundResult, right: RoundResult) -> Difference | None:
    """How field ``name`` of round ``number`` differs between runs A (``left``) and B (``right``), if it does."""
    if name == "answered":
        mine, theirs = sorted(left.answered), sorted(right.answered)  # merge order is arrival order
        if mine == theirs:
            return None
        only_a, only_b = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
        return Difference(number, name, f"alone merged {shown(only_a, 200)}", f"alone merged {shown(only_b, 200)}")
    mine, theirs = getattr(left, name), getattr(right, name)
    if mine == theirs:
        return None
    if mine is None or theirs is None:
        return Difference(number, name, _shown(mine), _shown(theirs))
    if name == "configs":
        for url in sorted(mine.keys() | theirs.keys()):
            if mine.get(url) != theirs.get(url):
                a, b = (shown(c, 200) if c is not None else "sent it none" for c in (mine.get(url), theirs.get(url)))
                return Difference(number, f"configs of {shown(url, quote=False)}", a, b)
    return Difference(number, name, _shown(mine), _shown(theirs))


def _shown(value: Any) -> str:
    return "records none" if value is None else shown(value, 200)
