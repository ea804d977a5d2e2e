"""What a federated run did, round by round, and its JSON form."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["RoundResult", "EvaluationResult", "History", "write_atomically"]


@dataclass
class EvaluationResult:
    """Federated evaluation: sample-weighted metrics, and each device's own."""

    repetition: int
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RoundResult:
    """One round: who took part, who failed and why, samples, metrics, bytes and time."""

    repetition: int
    answered: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    samples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation: EvaluationResult | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "RoundResult":
        """The inverse of ``dataclasses.asdict``."""
        row = dict(row)
        if row.get("evaluation") is not None:
            row["evaluation"] = EvaluationResult(**row["evaluation"])
        return cls(**row)


class History:
    """The rounds of a run, in order; saves to and loads from JSON."""

    def __init__(self, rounds: list[RoundResult] | None = None) -> None:
        self.rounds: list[RoundResult] = list(rounds or [])

    def append(self, result: RoundResult) -> None:
        self.rounds.append(result)

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundResult]:
        return iter(self.rounds)

    def __getitem__(self, index: int) -> RoundResult:
        return self.rounds[index]

    def metric(self, name: str, evaluation: bool = False) -> list[float | None]:
        """One metric per round (train metrics, or evaluation metrics), ``None`` where absent."""
        values = []
        for r in self.rounds:
            source = (r.evaluation.metrics if r.evaluation else {}) if evaluation else r.metrics
            values.append(source.get(name))
        return values

    def to_json(self) -> str:
        return json.dumps({"rounds": [asdict(r) for r in self.rounds]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "History":
        return cls([RoundResult.from_dict(row) for row in json.loads(text)["rounds"]])

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a crash leaves the old file or the new one)."""
        write_atomically(Path(path), self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"History({len(self.rounds)} rounds)"


def write_atomically(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
