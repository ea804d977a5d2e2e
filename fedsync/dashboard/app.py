"""The coordinator's dashboard: one self-contained page of a run, and the JSON it polls.

Two sources feed it: a :class:`~fedsync.Federated` in this process
(``Federated(..., dashboard=PORT)``), or a checkpoint folder on disk
(``fedsync dashboard DIR``), re-read as the run writes it. The page
(``static/``, with uPlot vendored) loads nothing from the internet and
builds its DOM with ``textContent`` only: device URLs and failure reasons come
from the network. Routes::

    GET /              the page
    GET /api/run       repetition, rounds done and to go, elapsed seconds, ETA, configuration
    GET /api/history   one row per round: seconds, samples, training and evaluation metrics
    GET /api/devices   one row per device: state, samples, times sampled, answered, last failure

Everything read from disk is untrusted: a malformed file shows as what is known,
never as an error page. Tokens are never shown; credentials in URLs are removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._util.checks import is_int, is_number
from .._util.files import write_atomically
from .._util.json import loads_strict, shown
from ..gateway.server import KeepAliveServer

__all__ = ["Dashboard", "LiveRun", "FolderRun", "serve_dashboard", "RUN_FILE"]

logger = logging.getLogger("fedsync.dashboard")

RUN_FILE = "run.json"
"""Written by ``fit`` into a checkpoint folder: planned rounds, start time and configuration."""

MAX_FILE = 256 * 1024 * 1024
"""Largest checkpoint file the dashboard reads, in bytes."""

_MAX_TEXT = 2000  # characters of one shown string (a failure reason, a URL)
_MAX_NAMES = 200  # metrics per round, configuration entries
_RECENT = 10  # rounds whose mean duration gives the ETA


# -- what the page shows: plain dicts built from untrusted input ------------------------


def _num(value: Any) -> float | None:
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
    for name, number in list(value.items())[:_MAX_NAMES]:
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
            "seconds": _num(evaluation.get("seconds")),
            "failures": _failures(evaluation.get("failures")),
        }
    else:
        evaluation = None
    server = row.get("server_evaluation")  # Federated(evaluate_fn=...)'s metrics
    return {
        "repetition": _count(row.get("repetition")),
        "seconds": _num(row.get("seconds")),
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
    for key, item in list(value.items())[:_MAX_NAMES]:
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
            d["last_failure"] = {"round": number, "during": "training", "reason": reason}
        for url, reason in ((r["evaluation"] or {}).get("failures") or {}).items():
            row(url)["last_failure"] = {"round": number, "during": "evaluation", "reason": reason}
    for d in rows.values():
        seconds = d.pop("_seconds")
        d["seconds_per_round"] = sum(seconds) / len(seconds) if seconds else None
    return {"devices": list(rows.values())}


# -- the sources ------------------------------------------------------------------------


class LiveRun:
    """A :class:`~fedsync.Federated` in this process, read as it runs."""

    source = "live"

    def __init__(self, federated: Any) -> None:
        self.federated = federated
        self.created = time.monotonic()
        self.started: float | None = None
        self.planned: int | None = None
        self._converted: list[dict[str, Any]] = []
        self._history: Any = None

    def fit_started(self, rounds: int) -> None:
        """``fit(rounds)`` began: the plan, and the clock of the ETA."""
        self.planned = int(rounds)
        if self.started is None:
            self.started = time.monotonic()

    def snapshot(self) -> RunView:
        history = self.federated.history
        results = list(history.rounds)  # appended by the coordinator's thread; a copy is consistent
        if history is not self._history or len(results) < len(self._converted):
            self._history, self._converted = history, []
        for result in results[len(self._converted) :]:
            self._converted.append(_round(asdict(result)) or {})
        federated = self.federated
        return RunView(
            source=self.source, rounds=list(self._converted), repetition=federated.repetition, planned=self.planned,
            elapsed=time.monotonic() - (self.started if self.started is not None else self.created), updated_ago=0.0,
            devices=[r.url for r in federated.remotes], config=configuration(federated),
        )  # fmt: skip


def _read_json(path: Path) -> Any:
    """Parsed strict JSON of a small file (a key given twice or NaN is refused); raises ValueError or OSError."""
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise ValueError(f"{path} is over {MAX_FILE} bytes")
    return loads_strict(
        raw,
        duplicate=lambda key: ValueError(f"{path.name} has the key {shown(key)} twice; keys must be unique"),
        constant=lambda name: ValueError(f"{path.name} holds {name}, not a finite number"),
    )


class FolderRun:
    """A checkpoint folder, re-read whenever its ``checkpoint.json`` changes."""

    source = "folder"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._key: Any = None
        self._last = RunView(source=self.source, folder=str(self.folder), note="no checkpoint written yet")

    def snapshot(self) -> RunView:
        with self._lock:
            try:
                self._reload()
            except Exception as exc:  # a damaged folder shows what was last known, and why
                logger.debug("cannot read %s", self.folder, exc_info=True)
                self._last.note = f"cannot read the checkpoint: {_text(exc)[:300]}"
            return self._last

    def _reload(self) -> None:
        pointer_path = self.folder / "checkpoint.json"
        try:
            stat = pointer_path.stat()
        except FileNotFoundError:
            self._last.note = f"no checkpoint in {self.folder} yet" if self._key is None else self._last.note
            return
        run = self._run_info()
        key = (stat.st_mtime_ns, stat.st_size, run.get("started"), run.get("rounds"))
        if key != self._key:
            for attempt in range(3):  # the run may replace the round's folder between two reads
                try:
                    rounds, repetition = self._read_rounds(pointer_path)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
                    time.sleep(0.05)
            started = _num(run.get("started"))
            devices = run.get("devices")
            self._last = RunView(
                source=self.source, folder=str(self.folder), rounds=rounds, repetition=repetition,
                planned=_count(run.get("rounds")), config=_scalars(run.get("config")),
                devices=[public_url(u) for u in devices[:10_000]] if isinstance(devices, list) else [],
                elapsed=max(0.0, stat.st_mtime - started) if started is not None else _busy(rounds),
            )  # fmt: skip
            self._key = key
        self._last.updated_ago = max(0.0, time.time() - stat.st_mtime)

    def _read_rounds(self, pointer_path: Path) -> tuple[list[dict[str, Any]], int | None]:
        pointer = _read_json(pointer_path)
        if not isinstance(pointer, Mapping):
            raise ValueError("checkpoint.json is not an object")
        name = pointer.get("folder")
        if not isinstance(name, str) or not re.fullmatch(r"[\w][\w.-]*", name) or ".." in name:
            raise ValueError(f"checkpoint.json names no round folder: {_text(name)[:100]!r}")
        history = _read_json(self.folder / name / "history.json")
        rows = history.get("rounds") if isinstance(history, Mapping) else None
        if not isinstance(rows, list):
            raise ValueError("history.json holds no rounds")
        rounds = [r for r in map(_round, rows) if r is not None]
        return rounds, _count(pointer.get("repetition"))

    def _run_info(self) -> dict[str, Any]:
        try:
            run = _read_json(self.folder / RUN_FILE)
        except (OSError, ValueError):
            return {}
        return dict(run) if isinstance(run, Mapping) else {}


def write_run_info(federated: Any, rounds: int) -> None:
    """Write :data:`RUN_FILE` into ``federated``'s checkpoint folder, for ``fedsync dashboard DIR``."""
    info = {
        "format": 1, "rounds": int(rounds), "started": time.time(),
        "devices": [public_url(r.url) for r in federated.remotes], "config": configuration(federated),
    }  # fmt: skip
    try:
        write_atomically(Path(federated.checkpoint) / RUN_FILE, json.dumps(info).encode("utf-8"))
    except OSError as exc:  # the run matters more than what a watcher sees of it
        logger.warning("could not write %s: %s", Path(federated.checkpoint) / RUN_FILE, exc)


def fit_started(federated: Any, rounds: int) -> None:
    """Called by ``Federated.fit``: tell the dashboard and the checkpoint folder the plan."""
    dashboard = getattr(federated, "dashboard", None)
    if isinstance(dashboard, Dashboard) and isinstance(dashboard.run, LiveRun):
        dashboard.run.fit_started(rounds)
    if getattr(federated, "checkpoint", None) is not None:
        write_run_info(federated, rounds)


# -- the web app and its server ---------------------------------------------------------


def _asset(name: str) -> str:
    return (resources.files("fedsync.dashboard") / "static" / name).read_text(encoding="utf-8")


def render_page() -> str:
    """The page: static HTML with uPlot, the style and the script inlined (no data in it)."""
    page = _asset("dashboard.html")
    for slot, name in (
        ("UPLOT_CSS", "uPlot.min.css"),
        ("PAGE_CSS", "dashboard.css"),
        ("UPLOT_JS", "uPlot.iife.min.js"),
        ("PAGE_JS", "dashboard.js"),
    ):
        page = page.replace(f"/*{slot}*/", _asset(name).replace("</", "<\\/") if name.endswith(".js") else _asset(name))
    return page


_LOCAL_NAMES = {"127.0.0.1", "localhost", "::1"}
_SECURITY = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
     "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]  # fmt: skip


class DashboardApp:
    """The WSGI app: the page and its three JSON endpoints."""

    def __init__(self, run: LiveRun | FolderRun, local_only: bool = True) -> None:
        self.run = run
        self.local_only = local_only
        self._page: bytes | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        status, ctype, body = self._answer(environ)
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *_SECURITY])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def _answer(self, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if self.local_only and urlsplit("//" + environ.get("HTTP_HOST", "")).hostname not in _LOCAL_NAMES:
            # A page on another site that rebinds its name to 127.0.0.1 must not read the run.
            return "421 Misdirected Request", "text/plain", b"this dashboard answers only to 127.0.0.1 or localhost\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/":
            if self._page is None:
                self._page = render_page().encode("utf-8")
            return "200 OK", "text/html; charset=utf-8", self._page
        views = {"/api/run": run_view, "/api/history": history_view, "/api/devices": devices_view}
        if path in views:
            data = views[path](self.run.snapshot())
            return "200 OK", "application/json", json.dumps(data, allow_nan=False).encode("utf-8")
        return (
            "404 Not Found",
            "text/plain",
            b"not found: the dashboard serves /, /api/run, /api/history, /api/devices\n",
        )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"the dashboard cannot listen on {host}:{port}: {exc.strerror}; use another port, or 0 for any free one",
        ) from None
    return sock


class Dashboard:
    """The dashboard's server, in a daemon thread; ``.url``, ``.close()``, a context manager.

    Args:
        run: a :class:`LiveRun` or :class:`FolderRun`.
        host: interface to listen on; the default only accepts this machine.
        port: TCP port; ``0`` picks a free one (read it back from ``.url``).
    """

    def __init__(self, run: LiveRun | FolderRun, host: str = "127.0.0.1", port: int = 0) -> None:
        if not is_int(port) or not 0 <= port <= 65535:
            raise ValueError(f"the dashboard's port must be an integer in 0..65535 (0: any free port), got {port!r}")
        self.run = run
        local = host in _LOCAL_NAMES
        sock = _listen(host, port)
        try:
            self.server = KeepAliveServer(sock, DashboardApp(run, local_only=local))
        except BaseException:
            sock.close()
            raise
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{sock.getsockname()[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="fedsync-dashboard", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Block until the server stops (or ``timeout`` seconds pass)."""
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop serving and release the port (again: nothing)."""
        if not self._thread.is_alive():
            return
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_dashboard(source: Any, host: str = "127.0.0.1", port: int = 0) -> Dashboard:
    """Serve the dashboard of ``source``: a checkpoint folder, or a ``Federated`` in this process."""
    if isinstance(source, (str, os.PathLike)):
        return Dashboard(FolderRun(source), host, port)
    return Dashboard(LiveRun(source), host, port)


def start(federated: Any, port: int) -> Dashboard:
    """Called by ``Federated(..., dashboard=PORT)``: serve this run on 127.0.0.1."""
    dashboard = Dashboard(LiveRun(federated), "127.0.0.1", 0 if port is True else port)
    print(f"fedsync dashboard: {dashboard.url}/", file=sys.stderr, flush=True)
    return dashboard
