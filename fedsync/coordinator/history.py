"""What a federated run did, round by round, and its JSON form."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._util.checks import is_number
from .._util.files import read_regular, write_atomically
from .._util.json import check_density, loads_strict, shown
from ..privacy import checked_privacy
from ..protocol import MAX_REPETITION
from ..wire.config import Config, checked_config, encode_config
from ..wire.metrics import MAX_SAMPLES, checked_metrics
from ..wire.shapes import DeviceReport

__all__ = [
    "RoundResult",
    "RunRecord",
    "EvaluationResult",
    "ServerEvaluation",
    "History",
    "MAX_ERROR",
    "MAX_HISTORY_BYTES",
    "MAX_SEED",
    "scrub_result",
    "scrub_names",
]

MAX_ERROR = 2000
"""The longest error text a server evaluation records, in characters."""

MAX_HISTORY_BYTES = 256 << 20
"""The largest ``history.json`` that :meth:`History.load` and a checkpoint resume read, in bytes (256 MiB).

Reading one takes at most about 20 times its size in memory (``docs/security.md``); fedsync writes
about 300 bytes per round plus 100 per device in it, so this is some 100,000 rounds of 10 devices."""

MAX_SEED = 200
"""The longest seed a history records, in characters (a longer one is recorded as its first 200 and a hash)."""

MIN_ROUND_BYTES = 128
"""A history holds at most one round per this many bytes: fedsync writes over 250 per round (all its
fields, indented), and each round costs about 1 KB once read, so denser files are refused unread."""


@dataclass
class EvaluationResult:
    """Federated evaluation (:meth:`fedsync.Federated.evaluate`): sample-weighted metrics, and each device's own."""

    repetition: int
    """The repetition whose global model was evaluated (the last merged one)."""
    samples: int = 0
    """Examples evaluated, summed over the devices that answered."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Each metric's mean over the answering devices, weighted by their sample counts (unitless, as returned)."""
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    """Each answering device's own ``{"samples": int, "metrics": {...}}``, by URL."""
    failures: dict[str, str] = field(default_factory=dict)
    """Why each device that did not answer failed (one line of text), by URL; tokens scrubbed."""
    seconds: float = 0.0
    """Wall time of the whole evaluation, in seconds."""


@dataclass
class ServerEvaluation:
    """Server-side evaluation: the merged model measured on the coordinator's own data."""

    repetition: int
    """The repetition whose merged model was evaluated."""
    metrics: dict[str, float] = field(default_factory=dict)
    """What ``Federated(evaluate_fn=...)`` returned, checked finite (unitless, as returned)."""
    error: str | None = None
    """``"ExceptionType: message"`` if ``evaluate_fn`` raised or returned something unusable
    (the round stays merged and recorded), else ``None``."""
    seconds: float = 0.0
    """Wall time of ``evaluate_fn``, in seconds."""

    @classmethod
    def from_dict(cls, row: Any, what: str) -> ServerEvaluation:
        """The inverse of ``dataclasses.asdict``, checking every field; ``ValueError`` names the bad one."""
        values = _known_keys(cls, row, f"{what}: server_evaluation", "must be a JSON object or null")
        _integer(values["repetition"], f"{what}: server_evaluation repetition", MAX_REPETITION)
        values["metrics"] = checked_metrics(values.get("metrics", {}), f"{what}: server_evaluation metrics")
        error = values.get("error")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR):
            raise ValueError(
                f"{what}: server_evaluation error must be null or a string of at most {MAX_ERROR} characters"
            )
        _seconds(values.get("seconds", 0.0), f"{what}: server_evaluation")
        return cls(**values)


@dataclass
class RoundResult:
    """One round: who took part, who failed and why, samples, metrics, bytes and time."""

    repetition: int
    """The round's repetition number (1 for a run's first round; a resumed run continues the count)."""
    answered: list[str] = field(default_factory=list)
    """URLs of the devices whose replies were merged, in merge order."""
    failures: dict[str, str] = field(default_factory=dict)
    """Why each sampled device's reply was not merged (one line of text), by URL; tokens scrubbed."""
    samples: int | None = None
    """Training examples behind the merged replies, summed; ``None`` for a FedData that reports none."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Training metrics, each the sample-weighted mean over the merged devices (unitless, as ``train`` returned)."""
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    """Each merged device's own ``{"samples": int, "metrics": {...}}``, by URL."""
    evaluation: EvaluationResult | None = None
    """Federated evaluation after this round (``fit(evaluate_every=...)``), else ``None``."""
    bytes_sent: int = 0
    """Payload bytes the coordinator sent to devices (HTTP bodies, not headers)."""
    bytes_received: int = 0
    """Reply bytes the coordinator received from devices (HTTP bodies, not headers)."""
    seconds: float = 0.0
    """Wall time of the round, from sampling to the merged model, in seconds."""
    server_evaluation: ServerEvaluation | None = None
    """``Federated(evaluate_fn=...)``'s result after this round, distinct from federated ``evaluation``."""
    privacy: dict[str, Any] | None = None
    """Under central DP (:mod:`fedsync.strategies.dp`), the privacy spent by every DP round so far:
    ``{"epsilon", "delta", "noise_multiplier", "sampling_rate", "rounds"}`` (:func:`fedsync.privacy.round_privacy`)."""
    empty: bool = False
    """Every device that answered reported 0 samples, or fewer than ``min_results`` answered, and
    ``Federated(empty_rounds="keep")`` kept the model unchanged (``samples`` is then 0, ``devices`` the
    answers of 0 samples, ``failures`` who failed); ``False`` for a merged round."""
    sampled: list[str] | None = None
    """URLs of the devices the round sampled, in the sampler's order (before the handshake); ``None`` in a
    history written before fedsync recorded it. What a replay compares (:mod:`fedsync.coordinator.replay`)."""
    configs: dict[str, Config] | None = None
    """The configuration sent to each device whose handshake held, by URL (``{}`` each when there is none)."""
    payload_sha256: str | None = None
    """SHA-256 (64 lowercase hex digits) of the payload the coordinator sent (its ``serialize`` output, in its
    ``wire_dtype``; a device that cannot decode that format got the arrays as they are instead)."""
    model_sha256: str | None = None
    """SHA-256 of the coordinator's state after the round (its ``serialize`` output: what a checkpoint's
    ``state_sha256`` is for that round)."""

    @classmethod
    def from_dict(cls, row: Any) -> RoundResult:
        """The inverse of ``dataclasses.asdict``, checking every field.

        Raises:
            ValueError: a key that is not a field, or a value of the wrong type or
                range (counts are non-negative integers, metrics and seconds finite).
        """
        values = _fields(cls, row, "round")
        what = f"round {values['repetition']}"
        _strings(values.get("answered", []), f"{what}: answered")
        if values.get("samples") is not None:
            _integer(values["samples"], f"{what}: samples", 2**63 - 1)
        for key in ("bytes_sent", "bytes_received"):
            _integer(values.get(key, 0), f"{what}: {key}", 2**63 - 1)
        if values.get("evaluation") is not None:
            values["evaluation"] = EvaluationResult(**_evaluation(values["evaluation"], what))
        if values.get("server_evaluation") is not None:
            values["server_evaluation"] = ServerEvaluation.from_dict(values["server_evaluation"], what)
        if values.get("privacy") is not None:
            values["privacy"] = checked_privacy(values["privacy"], what)
        if not isinstance(values.get("empty", False), bool):
            raise ValueError(f"{what}: empty must be true or false, got {str(values['empty'])[:40]}")
        if values.get("sampled") is not None:
            _strings(values["sampled"], f"{what}: sampled")
        if values.get("configs") is not None:
            values["configs"] = _configs(values["configs"], what)
        for key in ("payload_sha256", "model_sha256"):
            if values.get(key) is not None and not _is_sha256(values[key]):
                raise ValueError(f"{what}: {key} must be null or 64 lowercase hex digits, got {shown(values[key])}")
        return cls(**values)


@dataclass
class RunRecord:
    """What a run was started with, for a replay (:mod:`fedsync.coordinator.replay`): seeds and fedsync's version."""

    seed: int | str | None = None
    """``Federated(seed=...)``: an integer or a string as given (another type as its ``repr``); ``None``: unseeded,
    sampling then drew from the OS's entropy and no rerun can repeat it."""
    evaluation_seed: str | None = None
    """The seed of federated evaluation's own generator (derived from ``seed``; ``None`` when unseeded)."""
    fedsync: str = ""
    """The fedsync version that ran it (``fedsync.__version__``)."""

    @classmethod
    def from_dict(cls, row: Any) -> RunRecord:
        """The inverse of ``dataclasses.asdict``, checking every field.

        Raises:
            ValueError: a key that is not a field, or a value of the wrong type or length.
        """
        if not isinstance(row, dict) or not row.keys() <= {f.name for f in fields(cls)}:
            keys = sorted(str(k)[:40] for k in row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"history's run must be a JSON object of keys among seed, evaluation_seed, fedsync, got {keys}"
            )
        seed = row.get("seed")
        if seed is not None and not (
            (type(seed) is int and abs(seed) < 2**1024) or (isinstance(seed, str) and len(seed) <= MAX_SEED)
        ):
            raise ValueError(
                f"history's run seed must be null, an integer or a string of at most {MAX_SEED} characters"
            )
        evaluation_seed, version = row.get("evaluation_seed"), row.get("fedsync", "")
        if not (evaluation_seed is None or (isinstance(evaluation_seed, str) and len(evaluation_seed) <= 2 * MAX_SEED)):
            raise ValueError(
                f"history's run evaluation_seed must be null or a string of at most {2 * MAX_SEED} characters"
            )
        if not isinstance(version, str) or len(version) > 100:
            raise ValueError(f"history's run fedsync must be a version string, got {shown(version)}")
        return cls(**row)


class History:
    """The rounds of a run, in order; saves to and loads from JSON."""

    def __init__(self, rounds: list[RoundResult] | None = None, run: RunRecord | None = None) -> None:
        self.rounds: list[RoundResult] = list(rounds or [])
        self.run: RunRecord | None = run
        """What the run was started with (seeds, fedsync's version); ``None`` in a history written before."""

    def append(self, result: RoundResult) -> None:
        self.rounds.append(result)

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundResult]:
        return iter(self.rounds)

    def __getitem__(self, index: int) -> RoundResult:
        return self.rounds[index]

    def metric(self, name: str, evaluation: bool = False, *, server: bool = False) -> list[float | None]:
        """One metric per round, ``None`` where absent: training metrics, federated
        ``evaluation`` metrics, or ``server`` evaluation metrics (``evaluate_fn``)."""
        values = []
        for r in self.rounds:
            if server:
                source = r.server_evaluation.metrics if r.server_evaluation else {}
            else:
                source = (r.evaluation.metrics if r.evaluation else {}) if evaluation else r.metrics
            values.append(source.get(name))
        return values

    def to_json(self) -> str:
        """The rounds as JSON text, ``{"rounds": [row, ...], "run": {...}}``, one row per :class:`RoundResult`
        (its fields); ``run`` (a :class:`RunRecord`) only when known."""
        document: dict[str, Any] = {"rounds": [asdict(r) for r in self.rounds]}
        if self.run is not None:
            document["run"] = asdict(self.run)
        return json.dumps(document, indent=1)

    @classmethod
    def from_json(cls, text: str) -> History:
        """The History that :meth:`to_json` wrote.

        Raises:
            ValueError: ``text`` is not that JSON (strict: a key given twice or ``NaN`` is refused),
                a round is malformed (:meth:`RoundResult.from_dict`), or repetitions do not increase.
        """
        check_density(text, "history JSON")
        try:
            document = loads_strict(
                text,
                duplicate=lambda key: ValueError(f"history has the key {shown(key)} twice; keys must be unique"),
                constant=lambda name: ValueError(f"history holds {name}, not a finite number"),
            )
        except RecursionError:
            raise ValueError("history JSON is nested too deeply") from None
        if (
            not isinstance(document, dict)
            or not {"rounds"} <= document.keys() <= {"rounds", "run"}
            or not isinstance(document["rounds"], list)
        ):
            raise ValueError('history must be a JSON object {"rounds": [...]} (and an optional "run": {...})')
        rows = document["rounds"]
        run = None if document.get("run") is None else RunRecord.from_dict(document["run"])
        if len(rows) > len(text) // MIN_ROUND_BYTES + 64:
            raise ValueError(
                f"history JSON holds {len(rows)} rounds in {len(text)} characters, more than one per "
                f"{MIN_ROUND_BYTES}: not a history fedsync writes, and holding its rounds would take over 20 times "
                "its size in memory; refusing it"
            )
        del document
        for index, row in enumerate(rows):  # each parsed row replaced by its round: they are never all held twice
            rows[index] = RoundResult.from_dict(row)
        rounds: list[RoundResult] = rows
        for before, after in zip(rounds, rounds[1:], strict=False):  # each round and the next
            if after.repetition <= before.repetition:
                raise ValueError(
                    f"history's repetitions must increase, got {before.repetition} then {after.repetition}"
                )
        return cls(rounds, run)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a crash leaves the old file or the new one)."""
        write_atomically(Path(path), self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """The History saved at ``path`` by :meth:`save`.

        Raises:
            FileNotFoundError: there is none.
            ValueError: naming ``path``: over :data:`MAX_HISTORY_BYTES`, not a regular file
                (a link, FIFO or device), not UTF-8, or malformed (:meth:`from_json`).
        """
        raw = read_regular(path, MAX_HISTORY_BYTES)
        try:
            return cls.from_json(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError too
            raise ValueError(f"{path} is not a history: {exc}") from None

    def __repr__(self) -> str:
        return f"History({len(self.rounds)} rounds)"


def scrub_result(result: RoundResult | EvaluationResult, scrub: Callable[[str], str]) -> None:
    """Remove credentials from every string a device sent into ``result``, in place, before it is saved or shown.

    ``scrub`` removes every credential the coordinator knows (each remote's ``scrub``, see
    ``fedsync.coordinator._round.scrub_failures``). A device can name a metric after the token it
    was sent, or echo it in any string of its report: the metric names (merged and its own), the
    string entries of its record, failure reasons and a federated evaluation's. Device URLs are
    the coordinator's own and stay as they are. Each distinct string is scrubbed once.
    """
    seen: dict[str, str] = {}

    def clean(text: str) -> str:
        if text not in seen:
            seen[text] = scrub(text)
        return seen[text]

    def names(metrics: dict[str, Any]) -> dict[str, Any]:
        return {clean(name): value for name, value in metrics.items()}

    result.metrics = names(result.metrics)
    # Keys too: below an aggregator, a failure's path is text a device sent (docs/aggregators.md).
    result.failures = {clean(key): clean(reason) for key, reason in result.failures.items()}
    for url, record in result.devices.items():
        clean_record: dict[str, Any] = {
            key: clean(value) if isinstance(value, str) else value for key, value in record.items()
        }
        if isinstance(clean_record.get("metrics"), dict):
            clean_record["metrics"] = names(clean_record["metrics"])
        result.devices[url] = clean_record  # type: ignore[assignment]  # the same DeviceReport, strings scrubbed
    if isinstance(result, RoundResult) and result.evaluation is not None:
        scrub_result(result.evaluation, scrub)


def scrub_names(metrics: Any, scrub: Callable[[str], str]) -> Any:
    """``metrics`` (a dict of metric names) with credentials removed from its names; anything else as it is."""
    if not isinstance(metrics, dict):
        return metrics
    return {scrub(name) if isinstance(name, str) else name: value for name, value in metrics.items()}


def _fields(cls: type, row: Any, what: str) -> dict[str, Any]:
    """``row``'s entries, which must be fields of ``cls``; repetition, failures, metrics, devices, seconds checked."""
    values = _known_keys(cls, row, what, "must be a JSON object", prefix="each ")
    label = f"{what} {_integer(values['repetition'], f'{what} repetition', MAX_REPETITION)}"
    failures = values.get("failures", {})
    if not isinstance(failures, dict) or not all(isinstance(v, str) for v in failures.values()):
        raise ValueError(f"{label}: failures must map device URLs to reasons (strings)")
    values["metrics"] = checked_metrics(values.get("metrics", {}), f"{label}: metrics")
    values["devices"] = _devices(values.get("devices", {}), label)
    _seconds(values.get("seconds", 0.0), label)
    return values


def _known_keys(cls: type, row: Any, what: str, kind: str, prefix: str = "") -> dict[str, Any]:
    """A copy of ``row``, a JSON object whose keys are fields of ``cls``, ``repetition`` among them."""
    if not isinstance(row, dict):
        raise ValueError(f"{prefix}{what} {kind}, got {type(row).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k)[:40] for k in row.keys() - names)
    if unknown or "repetition" not in row:
        raise ValueError(
            f"{what} has unknown keys {unknown} or lacks 'repetition'; expected keys among {sorted(names)}"
        )
    return dict(row)


def _seconds(seconds: Any, what: str) -> None:
    if not is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: seconds must be a finite non-negative number, got {str(seconds)[:40]}")


def _evaluation(row: Any, what: str) -> dict[str, Any]:
    values = _fields(EvaluationResult, row, f"{what}: evaluation")
    _integer(values.get("samples", 0), f"{what}: evaluation samples", 2**63 - 1)
    return values


def _devices(devices: Any, what: str) -> dict[str, dict[str, Any]]:
    """Per-device records ``{"samples": n, "metrics": {...}}``; other entries must be plain JSON scalars."""
    if not isinstance(devices, dict):
        raise ValueError(f"{what}: devices must map device URLs to records")
    clean = {}
    for url, record in devices.items():
        if not isinstance(record, dict):
            raise ValueError(f"{what}: device {url[:80]!r}'s record must be a JSON object")
        record = dict(record)
        if "samples" in record:
            _integer(record["samples"], f"{what}: device {url[:80]!r} samples", MAX_SAMPLES)
        if "metrics" in record:
            record["metrics"] = checked_metrics(record["metrics"], f"{what}: device {url[:80]!r} metrics")
        for key, value in record.items():
            if key not in ("samples", "metrics") and not (
                value is None
                or isinstance(value, (str, bool, int))
                or (isinstance(value, float) and math.isfinite(value))
            ):
                raise ValueError(f"{what}: device {url[:80]!r} entry {key[:40]!r} must be a string or a number")
        clean[url] = record
    return clean


def _integer(value: Any, what: str, largest: int) -> int:
    if type(value) is not int or not 0 <= value <= largest:
        raise ValueError(f"{what} must be an integer in [0, {largest}], got {str(value)[:40]}")
    return value


def _configs(configs: Any, what: str) -> dict[str, Config]:
    """Each device's configuration, by URL, checked as a device checks one (:mod:`fedsync.wire.config`)."""
    if not isinstance(configs, dict):
        raise ValueError(f"{what}: configs must map device URLs to configurations (JSON objects)")
    clean = {}
    for url, config in configs.items():
        try:
            clean[url] = checked_config(config, f"{what}: configs[{shown(url)}]")
            encode_config(clean[url])  # within the size a round sends
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    return clean


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _strings(value: Any, what: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of device URLs (strings)")
