"""What the dashboard shows: plain dicts and JSON views built from untrusted rounds (live or read from disk).

Every string is clipped and has its credentials removed; every number is checked (a non-finite
one, or seconds beyond :data:`MAX_SECONDS`, is shown as unknown) so that no view can fail on what a
run saved.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._util.checks import is_int, is_number

__all__ = ["RunView", "configuration", "devices_view", "history_view", "public_url", "run_view"]

MAX_SECONDS = 1e9
"""Longest round or evaluation time shown, in seconds (32 years); a longer one is shown as unknown,
so that sums and the ETA stay finite."""

_MAX_TEXT = 2000  # characters of one shown string (a failure reason, a URL)
_MAX_NAMES = 200  # metrics per round, configuration entries
_RECENT = 10  # rounds whose mean duration gives the ETA

# -- what the page shows: plain dicts built from untrusted input ------------------------


def _num(value: Any) -> float | None:
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seconds(value: Any) -> float | None:
    value = _num(value)
    return value if value is not None and 0 <= value <= MAX_SECONDS else None


def _count(value: Any) -> int | None:
    if not is_int(value) or not 0 <= value <= 2**53:
        return None
    return value


def _text(value: Any) -> str:
    text = str(value)[:_MAX_TEXT]
    # Credentials never reach the page, whatever a reason or URL carried.
    text = re.sub(r"(\w+://)[^/\s@]+@", r"\1", text)
    return re.sub(r"(?i)(bearer|token)(\s*[=:]?\s*)\S+", r"\1\2***", text)


def public_url(url: Any) -> str:
    """``url`` without user, password, query or fragment."""
    try:
        parts = urlsplit(str(url)[:_MAX_TEXT])
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return _text(url)


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, float] = {}
    for name, number in itertools.islice(value.items(), _MAX_NAMES):
        number = _num(number)
        if number is not None:
            out[_text(name)[:200]] = number
    return out


def _failures(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {public_url(url): _text(reason) for url, reason in value.items()}


def _round(row: Any) -> dict[str, Any] | None:
    """One round of a History (``asdict`` form), checked; ``None`` if it is not one."""
    if not isinstance(row, Mapping):
        return None
    answered = row.get("answered")
    answered = [public_url(u) for u in answered] if isinstance(answered, list) else []
    devices = row.get("devices")
    if not isinstance(devices, Mapping):
        devices = {}
    evaluation = row.get("evaluation")
    if isinstance(evaluation, Mapping):
        evaluation = {
            "metrics": _metrics(evaluation.get("metrics")),
            "seconds": _seconds(evaluation.get("seconds")),
            "failures": _failures(evaluation.get("failures")),
        }
    else:
        evaluation = None
    server = row.get("server_evaluation")  # Federated(evaluate_fn=...)'s metrics
    return {
        "repetition": _count(row.get("repetition")),
        "seconds": _seconds(row.get("seconds")),
        "samples": _count(row.get("samples")),
        "answered": answered,
        "failures": _failures(row.get("failures")),
        "metrics": _metrics(row.get("metrics")),
        "evaluation": evaluation,
        "server": _metrics(server.get("metrics")) if isinstance(server, Mapping) else None,
        "device_samples": {
            public_url(url): _count(d.get("samples")) for url, d in devices.items() if isinstance(d, Mapping)
        },
    }


def _scalars(value: Any) -> dict[str, Any]:
    """A configuration mapping reduced to shown scalars."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, item in itertools.islice(value.items(), _MAX_NAMES):
        if item is None or isinstance(item, bool) or _num(item) is not None:
            out[_text(key)[:200]] = item
        elif isinstance(item, str):
            out[_text(key)[:200]] = _text(item)[:200]
        elif isinstance(item, Mapping):
            out[_text(key)[:200]] = _scalars(item)
    return out


def configuration(federated: Any) -> dict[str, Any]:
    """What a run is configured with: quorum, timeout, FedData type and strategy."""
    config: dict[str, Any] = {"data": type(federated.data).__name__, "devices": len(federated.remotes)}
    for name in ("fraction", "min_results", "timeout", "poll", "downloads", "workers"):
        config[name] = getattr(federated, name, None)
    if getattr(federated, "checkpoint", None) is not None:
        config["checkpoint"] = str(federated.checkpoint)
    strategy = getattr(federated, "strategy", None) or getattr(federated.data, "strategy", None)
    if strategy is not None:
        params = (
            {k: v for k, v in vars(strategy).items() if not k.startswith("_")} if hasattr(strategy, "__dict__") else {}
        )
        config["strategy"] = {"name": type(strategy).__name__, **_scalars(params)}
    return _scalars(config)


@dataclass
class RunView:
    """What is known of a run at one moment."""

    source: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    repetition: int | None = None
    planned: int | None = None
    elapsed: float | None = None
    updated_ago: float | None = None
    devices: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None
    note: str | None = None


def _busy(rounds: list[dict[str, Any]]) -> float:
    """Seconds spent in rounds and evaluations: the elapsed time when no start time is known."""
    return sum((r["seconds"] or 0.0) + ((r["evaluation"] or {}).get("seconds") or 0.0) for r in rounds)


def run_view(s: RunView) -> dict[str, Any]:
    """``/api/run``."""
    done = len(s.rounds)
    recent = [(r["seconds"] or 0.0) + ((r["evaluation"] or {}).get("seconds") or 0.0) for r in s.rounds[-_RECENT:]]
    per_round = sum(recent) / len(recent) if recent else None
    to_go = max(0, s.planned - done) if s.planned is not None else None
    eta = to_go * per_round if to_go is not None and per_round is not None else None
    return {
        "source": s.source, "folder": s.folder, "repetition": s.repetition,
        "rounds_done": done, "rounds_planned": s.planned, "rounds_to_go": to_go,
        "finished": to_go == 0, "elapsed_seconds": s.elapsed, "seconds_per_round": per_round,
        "eta_seconds": eta, "updated_seconds_ago": s.updated_ago, "note": s.note, "config": s.config,
    }  # fmt: skip


def history_view(s: RunView) -> dict[str, Any]:
    """``/api/history``: per round, for the charts."""
    training: dict[str, None] = {}
    evaluation: dict[str, None] = {}
    server: dict[str, None] = {}
    rows = []
    for number, r in enumerate(s.rounds, 1):
        training.update(dict.fromkeys(r["metrics"]))
        if r["evaluation"] is not None:
            evaluation.update(dict.fromkeys(r["evaluation"]["metrics"]))
        server.update(dict.fromkeys(r["server"] or {}))
        rows.append({
            "round": number, "repetition": r["repetition"], "seconds": r["seconds"], "samples": r["samples"],
            "answered": len(r["answered"]), "failed": len(r["failures"]), "metrics": r["metrics"],
            "evaluation": r["evaluation"]["metrics"] if r["evaluation"] is not None else None,
            "server": r["server"],
        })  # fmt: skip
    names = {"training": list(training), "evaluation": list(evaluation)}
    if server:  # only runs with evaluate_fn: readers of the two series above see no change
        names["server"] = list(server)
    return {"rounds": rows, "metrics": names}


_POOL = re.compile(r"\s*\(?\bHTTPS?ConnectionPool\(.*", re.S)
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"')\]\n]+)")
_SUMMARY = 160  # characters of the one line shown for a failure


def summary(reason: str) -> str:
    """One line of a failure's reason for the page: the first line, without urllib3's connection-pool
    chain (its innermost cause, e.g. ``Connection refused``, kept), at most 160 characters."""
    text = reason.strip().split("\n", 1)[0]
    if _POOL.search(text):
        causes = _ERRNO.findall(text)
        text = _POOL.sub("", text).rstrip(" :(") + (f" ({causes[-1].strip()})" if causes else "")
    return text if len(text) <= _SUMMARY else text[: _SUMMARY - 1] + "\u2026"


def devices_view(s: RunView) -> dict[str, Any]:
    """``/api/devices``: one row per device, derived from the rounds."""
    rows: dict[str, dict[str, Any]] = {}

    def row(url: str) -> dict[str, Any]:
        if url not in rows:
            rows[url] = {"url": url, "state": "not sampled yet", "samples": None, "seconds_per_round": None,
                         "sampled": 0, "answered": 0, "failed": 0, "last_failure": None, "_seconds": []}  # fmt: skip
        return rows[url]

    for url in s.devices:
        row(public_url(url))
    for number, r in enumerate(s.rounds, 1):
        for url in r["answered"]:
            d = row(url)
            d["sampled"] += 1
            d["answered"] += 1
            d["state"] = "answered"
            if r["seconds"] is not None:
                d["_seconds"].append(r["seconds"])
            if r["device_samples"].get(url) is not None:
                d["samples"] = r["device_samples"][url]
        for url, reason in r["failures"].items():
            d = row(url)
            d["sampled"] += 1
            d["failed"] += 1
            d["state"] = "failed"
            d["last_failure"] = {"round": number, "during": "training", "reason": reason, "summary": summary(reason)}
        for url, reason in ((r["evaluation"] or {}).get("failures") or {}).items():
            row(url)["last_failure"] = {
                "round": number, "during": "evaluation", "reason": reason, "summary": summary(reason),
            }  # fmt: skip
    for d in rows.values():
        seconds = d.pop("_seconds")
        d["seconds_per_round"] = sum(seconds) / len(seconds) if seconds else None
    return {"devices": list(rows.values())}
