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

import base64
import hashlib
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
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._util.checks import is_int
from .._util.files import read_inside, write_atomically
from .._util.json import check_density, loads_strict, shown
from ..gateway.server import KeepAliveServer
from .views import (
    RunView,
    _busy,
    _count,
    _num,
    _round,
    _scalars,
    _text,
    configuration,
    devices_view,
    history_view,
    public_url,
    run_view,
)

__all__ = ["Dashboard", "LiveRun", "FolderRun", "serve_dashboard", "RUN_FILE"]

logger = logging.getLogger("fedsync.dashboard")

RUN_FILE = "run.json"
"""Written by ``fit`` into a checkpoint folder: planned rounds, start time and configuration."""

MAX_FILE = 256 << 20
"""Largest ``history.json`` the dashboard reads, in bytes (as ``fedsync.coordinator.history.MAX_HISTORY_BYTES``).

Reading a run's files takes at most about 20 times their size in memory (``docs/dashboard.md``)."""

MAX_POINTER = 1 << 16
"""Largest ``checkpoint.json`` the dashboard reads, in bytes (it holds a few short fields)."""

MAX_RUN_FILE = 4 << 20
"""Largest :data:`RUN_FILE` the dashboard reads, in bytes (the device URLs and the configuration)."""

MIN_ROUND_BYTES = 64
"""``history.json`` holds at most one round per this many bytes (fedsync writes over 250): each round
costs about 1 KB once read, so a denser file is refused before its rounds are built."""


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


def _read_json(folder: Path, relative: str, limit: int) -> tuple[int, Any]:
    """The size in bytes and the parsed strict JSON of ``folder / relative`` (a key twice or NaN is refused).

    The file must be a regular file inside ``folder`` (no symbolic link anywhere on the way, no
    FIFO or device: it is opened without blocking) of at most ``limit`` bytes, and dense enough
    in JSON values to parse in a bounded multiple of its size (:func:`check_density`).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: naming the file and the cause (``FileRefused`` for the file itself).
        OSError: it cannot be read.
    """
    raw = read_inside(folder, relative, limit)
    name = Path(relative).name
    check_density(raw, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    size = len(raw)
    del raw  # the parse holds the text, not the bytes as well
    try:
        return size, loads_strict(
            text,
            duplicate=lambda key: ValueError(f"{name} has the key {shown(key)} twice; keys must be unique"),
            constant=lambda constant: ValueError(f"{name} holds {constant}, not a finite number"),
        )
    except RecursionError:
        raise ValueError(f"{name} is nested too deeply") from None


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
                    rounds, repetition = self._read_rounds()
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
                    time.sleep(0.05)
            started = _num(run.get("started"))
            if started is not None and not 0 <= started <= stat.st_mtime:  # not a start time of this file's run
                started = None
            devices = run.get("devices")
            self._last = RunView(
                source=self.source, folder=str(self.folder), rounds=rounds, repetition=repetition,
                planned=_count(run.get("rounds")), config=_scalars(run.get("config")),
                devices=[public_url(u) for u in devices[:10_000]] if isinstance(devices, list) else [],
                elapsed=max(0.0, stat.st_mtime - started) if started is not None else _busy(rounds),
            )  # fmt: skip
            self._key = key
        self._last.updated_ago = max(0.0, time.time() - stat.st_mtime)

    def _read_rounds(self) -> tuple[list[dict[str, Any]], int | None]:
        _, pointer = _read_json(self.folder, "checkpoint.json", MAX_POINTER)
        if not isinstance(pointer, Mapping):
            raise ValueError("checkpoint.json is not an object")
        name = pointer.get("folder")
        if not isinstance(name, str) or not re.fullmatch(r"[\w][\w.-]*", name) or ".." in name:
            raise ValueError(f"checkpoint.json names no round folder: {_text(name)[:100]!r}")
        size, history = _read_json(self.folder, f"{name}/history.json", MAX_FILE)
        rows = history.pop("rounds", None) if isinstance(history, dict) else None
        if not isinstance(rows, list):
            raise ValueError("history.json holds no rounds")
        del history
        if len(rows) > size // MIN_ROUND_BYTES + 64:
            raise ValueError(
                f"history.json holds {len(rows)} rounds in {size} bytes, more than one per {MIN_ROUND_BYTES}: "
                "not a history fedsync writes, and showing it would take over 20 times its size in memory"
            )
        rounds = []
        for index, row in enumerate(rows):  # each parsed row freed once converted: never both held whole
            rows[index] = None
            shown_round = _round(row)
            if shown_round is not None:
                rounds.append(shown_round)
        return rounds, _count(pointer.get("repetition"))

    def _run_info(self) -> dict[str, Any]:
        try:
            _, run = _read_json(self.folder, RUN_FILE, MAX_RUN_FILE)
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


def content_policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline scripts and styles by sha256, nothing else.

    A script that reaches the page any other way (markup in a device's text that escaped
    ``textContent``) has no matching hash and does not run. uPlot styles its elements through
    the DOM (``element.style``), which a policy does not restrict.
    """

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(c.encode()).digest()).decode()}'" for c in found)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


_LOCAL_NAMES = {"127.0.0.1", "localhost", "::1"}
_SECURITY = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]  # fmt: skip


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number (a sum or product of large saved ones) shown as unknown (``None``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class DashboardApp:
    """The WSGI app: the page and its three JSON endpoints."""

    def __init__(self, run: LiveRun | FolderRun, local_only: bool = True) -> None:
        self.run = run
        self.local_only = local_only
        page = render_page()
        self._page = page.encode("utf-8")
        self._policy = content_policy(page)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        status, ctype, body = self._answer(environ)
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *_SECURITY]
        start_response(status, [*headers, ("Content-Security-Policy", self._policy)])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def _answer(self, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if self.local_only and urlsplit("//" + environ.get("HTTP_HOST", "")).hostname not in _LOCAL_NAMES:
            # A page on another site that rebinds its name to 127.0.0.1 must not read the run.
            return "421 Misdirected Request", "text/plain", b"this dashboard answers only to 127.0.0.1 or localhost\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/":
            return "200 OK", "text/html; charset=utf-8", self._page
        views = {"/api/run": run_view, "/api/history": history_view, "/api/devices": devices_view}
        if path in views:
            data = _finite(views[path](self.run.snapshot()))
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
