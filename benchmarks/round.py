"""Round-trip benchmark: fedsync against the wire, a pickle baseline and Flower 1.42.

    python benchmarks/round.py [--params 1M,10M,50M] [--devices 2,8] [--many 100] [--quick]

For every model size P (float32 parameters over six layer-like arrays) and device count N,
one run starts N device processes with no-op training and one coordinator process per
peer, and measures:

- raw:     the same bytes (P*4 x N x 2 directions) echoed over loopback TCP sockets
           between processes, concurrently, into preallocated buffers: the physical limit;
- fedsync: ``Federated(FedArrays(...), remotes).round()`` against ``fedsync.serve`` devices;
- pickle:  pickle + base64 + JSON over http.server/requests, as the original prototype did;
- flower:  Flower 1.42 legacy ``start_server``/``start_client`` (gRPC, FedAvg, NumPyClient
           returning its parameters), from benchmarks/.venv-flower (setup_flower.sh);
           skipped with a note when that venv is absent.

Round time is the median of up to ``--rounds`` rounds after one warm-up round. Memory is the
coordinator's (Flower's server's) peak RSS (VmHWM) and that peak minus its RSS after imports
and before building its model, also counted in model copies (P*4 bytes; the coordinator's
own model is one of them). A guard skips a peer whose estimated need does not fit in
MemAvailable, and kills it if the machine's available memory falls under ``--guard-gib``.

A many-devices run then times rounds of a tiny model over ``--many`` device processes.

Results are printed and written as Markdown to benchmarks/RESULTS.md (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_PY = HERE / "peers.py"
FLOWER_PYTHON = HERE / ".venv-flower" / "bin" / "python"
GIB = 1024**3
MB = 1e6
ALL_PEERS = ("raw", "fedsync", "pickle", "flower")

CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    "GRPC_VERBOSITY": "ERROR",
}

# What a peer needs, estimated as (bytes per device process, bytes for the coordinator)
# from the model size M and the device count N; measured on this machine and rounded up.
PROCESS_BASE = {"raw": 30e6, "fedsync": 60e6, "pickle": 60e6, "flower": 200e6}


def estimate(peer: str, model_bytes: float, devices: int) -> float:
    m, n = model_bytes, devices
    device_copies, coordinator_copies = {
        "raw": (1, n + 1),
        "fedsync": (4, n + 4),  # worst case: every reply buffered before it is merged
        "pickle": (7, 2 * n + 5),  # base64 text, its JSON string, the pickle, the arrays...
        "flower": (6, 7 * n + 3),  # about 7 copies per client on the server
    }[peer]
    base = PROCESS_BASE[peer]
    return n * (base + device_copies * m) + base + coordinator_copies * m


# ----------------------------------------------------------------- machine


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    import numpy

    try:
        from importlib.metadata import version

        fedsync_version = version("fedsync")
    except Exception:
        fedsync_version = "?"
    flwr = "not installed (run benchmarks/setup_flower.sh)"
    if FLOWER_PYTHON.exists():
        out = subprocess.run(
            [str(FLOWER_PYTHON), "-c", "import importlib.metadata as m; print(m.version('flwr'), m.version('numpy'))"],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode == 0:
            flwr_v, np_v = out.stdout.split()
            flwr = f"{flwr_v} (its venv: numpy {np_v})"
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{total / GIB:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "fedsync": f"{fedsync_version} (commit {commit or '?'})",
        "flwr": flwr,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def checkout(ref: str, where: Path) -> str:
    """Extract fedsync/ as committed at ``ref`` into ``where`` and import it from there; its commit."""
    where.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", ref], capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", commit, "fedsync"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    Proc.env["PYTHONPATH"] = str(where)
    return commit


def dirty() -> bool:
    out = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "fedsync"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ----------------------------------------------------------------- processes


class Proc:
    """A child process whose ``@@ {json}`` stdout lines arrive on a queue."""

    env: dict[str, str] = {}  # set by main: what every child adds to our environment

    def __init__(self, name: str, argv: list[str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self.messages: queue.Queue = queue.Queue()
        self.tail: deque[str] = deque(maxlen=30)
        env = {**os.environ, **CHILD_ENV, **self.env}
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=HERE.parent)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("@@ "):
                self.messages.put(json.loads(line[3:]))
            else:
                self.tail.append(line)
        self.messages.put(None)  # end of output

    def next(self, deadline: float) -> dict | None:
        """The next message, or None when the process ended; TimeoutError at the deadline."""
        try:
            return self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer in time") from None

    def why(self) -> str:
        try:
            err = self.log.read_text(errors="replace").strip().splitlines()[-6:]
        except OSError:
            err = []
        return " | ".join(list(self.tail)[-3:] + err)[-600:]

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
            self.popen.kill()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class OutOfMemoryGuard(Exception):
    pass


class Group:
    """The processes of one measurement: all killed on exit; killed early if memory runs low."""

    def __init__(self, guard_bytes: int, logdir: Path) -> None:
        self.guard_bytes = guard_bytes
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.tripped = threading.Event()
        self.stop = threading.Event()
        self.lowest = mem_available()
        self.watch = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Group":
        self.watch.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.watch.join(timeout=2)
        self.kill_all()

    def start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.logdir)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()

    def _watch(self) -> None:
        while not self.stop.wait(0.05):
            available = mem_available()
            self.lowest = min(self.lowest, available)
            if available < self.guard_bytes:
                self.tripped.set()
                self.kill_all()
                return

    def cpu_seconds(self, exclude: Proc) -> float:
        """CPU time (user + system) used so far by the group's processes but ``exclude``."""
        import peers  # benchmarks/peers.py, beside this file (imported here: it loads numpy)

        return peers.process_cpu(proc.popen.pid for proc in self.procs if proc is not exclude)

    def expect(self, proc: Proc, deadline: float, *keys: str) -> dict:
        """Wait for ``proc``'s next message carrying one of ``keys``; keep all in ``proc.seen``."""
        while True:
            if self.tripped.is_set():
                raise OutOfMemoryGuard()
            try:
                message = proc.next(min(deadline, time.monotonic() + 0.5))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if message is None:
                if self.tripped.is_set():
                    raise OutOfMemoryGuard()
                raise RuntimeError(f"{proc.name} exited (code {proc.popen.wait()}): {proc.why()}")
            proc.__dict__.setdefault("seen", []).append(message)
            if any(key in message for key in keys):
                return message


# ----------------------------------------------------------------- one measurement


@dataclass
class Outcome:
    peer: str
    params: int
    devices: int
    status: str = "ok"  # ok | skipped | killed | failed
    note: str = ""
    times: list[float] = field(default_factory=list)
    median: float | None = None
    warmup_only: bool = False
    baseline: int | None = None
    peak: int | None = None
    cpu_coordinator: float | None = None  # CPU seconds per measured round
    cpu_devices: float | None = None
    lowest_available: int | None = None

    @property
    def model_bytes(self) -> int:
        return self.params * 4

    @property
    def delta(self) -> int | None:
        return None if self.peak is None or self.baseline is None else self.peak - self.baseline


def run_peer(peer: str, params: int, devices: int, opts, logdir: Path, bases: int = 1) -> Outcome:
    outcome = Outcome(peer, params, devices)
    need = estimate(peer, params * 4, devices)
    available = mem_available()
    if need + opts.guard_gib * GIB > available:
        outcome.status = "skipped"
        outcome.note = f"would exceed memory: needs ~{need / GIB:.1f} GiB, {available / GIB:.1f} GiB available"
        return outcome
    python = str(FLOWER_PYTHON) if peer == "flower" else sys.executable
    common = ["--params", str(params), "--rounds", str(opts.rounds), "--budget", str(opts.budget), "--timeout", str(opts.peer_timeout)]
    deadline = time.monotonic() + opts.peer_timeout
    tag = f"{peer}-{params}-{devices}"
    coordinator = None
    with Group(int(opts.guard_gib * GIB), logdir) as group:
        try:
            if peer == "flower":
                address = f"127.0.0.1:{free_port()}"
                coordinator = group.start(f"{tag}-server", [python, str(PEERS_PY), "flower-server", *common, "--address", address, "--clients", str(devices)])
                start = group.expect(coordinator, deadline, "baseline")
                group.expect(coordinator, deadline, "ready")
                for i in range(devices):
                    group.start(f"{tag}-client{i}", [python, str(PEERS_PY), "flower-client", *common, "--address", address])
            else:
                urls = start_devices(group, peer, python, common, devices, bases, deadline, tag)
                role = f"{peer}-coordinator"
                extra = ["--profile", opts.profile] if (peer == "fedsync" and opts.profile and (params, devices) == opts.profile_at) else []
                coordinator = group.start(f"{tag}-coordinator", [python, str(PEERS_PY), role, *common, *extra, "--urls", *urls])
                start = group.expect(coordinator, deadline, "baseline")
            outcome.baseline = start["baseline"]
            devices_cpu = started_cpu = group.cpu_seconds(exclude=coordinator)
            while "done" not in (message := group.expect(coordinator, deadline, "round", "done")):
                if message["round"] == 1:  # the warm-up is over
                    devices_cpu = group.cpu_seconds(exclude=coordinator)
            done = message
            measured = max(1, len(done["times"]) - 1)
            if len(done["times"]) == 1:
                devices_cpu = started_cpu
            outcome.cpu_devices = (group.cpu_seconds(exclude=coordinator) - devices_cpu) / measured
            outcome.cpu_coordinator = done["cpu"]
            outcome.times, outcome.median = done["times"], done["median"]
            outcome.warmup_only, outcome.peak = done["warmup_only"], done["peak"]
        except OutOfMemoryGuard:
            outcome.status = "killed"
            outcome.note = f"out of memory guard: available memory fell under {opts.guard_gib:g} GiB"
            rounds = [m for m in getattr(coordinator, "seen", []) if "round" in m]
            outcome.times = [m["seconds"] for m in rounds]
        except TimeoutError as exc:
            outcome.status = "failed"
            outcome.note = f"timed out after {opts.peer_timeout:g}s ({exc})"
        except RuntimeError as exc:
            outcome.status = "killed" if group.tripped.is_set() else "failed"
            outcome.note = str(exc)[:400]
        finally:
            outcome.lowest_available = group.lowest
    return outcome


def start_devices(group: Group, peer: str, python: str, common: list[str], devices: int, bases: int, deadline: float, tag: str) -> list[str]:
    """Start the device processes a few at a time (imports are CPU-bound); their URLs."""
    urls: list[str] = []
    processes = -(-devices // bases)
    batch = 8
    for first in range(0, processes, batch):
        started = []
        for i in range(first, min(processes, first + batch)):
            count = min(bases, devices - i * bases)
            extra = ["--bases", str(count)] if bases > 1 else []
            started.append(group.start(f"{tag}-device{i}", [python, str(PEERS_PY), f"{peer}-device", *common, *extra]))
        for proc in started:
            urls += group.expect(proc, deadline, "ready")["ready"]
    return urls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- report


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def human_count(n: int) -> str:
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= scale and n % (scale // 1000 or 1) == 0:
            value = n / scale
            return f"{value:g}{suffix}"
    return str(n)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def cell_time(o: Outcome | None) -> str:
    if o is None:
        return "not run"
    if o.status != "ok":
        return f"{o.status}: {o.note}"
    mark = " †" if o.warmup_only else ""
    return fmt_seconds(o.median) + mark


def ratio(a: Outcome | None, b: Outcome | None) -> str:
    if a is None or b is None or a.status != "ok" or b.status != "ok" or not b.median:
        return "—"
    return f"{a.median / b.median:.1f}×"


def cell_memory(o: Outcome | None) -> str:
    if o is None:
        return "not run"
    if o.status != "ok" or o.delta is None:
        return o.status
    return f"{o.peak / MB:,.0f} MB; +{o.delta / MB:,.0f} MB = {o.delta / o.model_bytes:.1f} copies"


def cell_cpu(o: Outcome | None) -> str:
    if o is None or o.status != "ok" or o.cpu_coordinator is None:
        return "—" if o is None else o.status
    return f"{o.cpu_coordinator:.2f} + {o.cpu_devices:.2f} = {o.cpu_coordinator + o.cpu_devices:.2f}"


def tables(results: dict, sizes, counts, peers) -> str:
    def get(peer, p, n):
        return results.get((peer, p, n))

    lines = [
        "### Round time (median after a warm-up round)",
        "",
        "| P | N | bytes moved | raw socket | fedsync | fedsync ÷ raw | pickle+base64+JSON | pickle ÷ fedsync | Flower 1.42 | Flower ÷ fedsync |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sizes:
        for n in counts:
            raw, fed, pk, fl = (get(x, p, n) for x in ALL_PEERS)
            moved = p * 4 * n * 2
            rate = f" ({moved / raw.median / 1e9:.2f} GB/s)" if raw and raw.status == "ok" else ""
            lines.append(
                f"| {human_count(p)} | {n} | {moved / MB:,.0f} MB | {cell_time(raw)}{rate} | {cell_time(fed)} | {ratio(fed, raw)} "
                f"| {cell_time(pk) if 'pickle' in peers else 'not run'} | {ratio(pk, fed)} "
                f"| {cell_time(fl) if 'flower' in peers else 'not run'} | {ratio(fl, fed)} |"
            )
    lines += [
        "",
        "### Coordinator memory: peak RSS; peak minus RSS after imports, in model copies (P×4 bytes)",
        "",
        "| P | N | model | fedsync coordinator | pickle coordinator | Flower server |",
        "|---|---|---|---|---|---|",
    ]
    for p in sizes:
        for n in counts:
            lines.append(
                f"| {human_count(p)} | {n} | {p * 4 / MB:,.0f} MB | {cell_memory(get('fedsync', p, n))} "
                f"| {cell_memory(get('pickle', p, n))} | {cell_memory(get('flower', p, n))} |"
            )
    lines += [
        "",
        "### CPU seconds per round: coordinator (Flower: server) + all devices",
        "",
        "On a shared machine this is steadier than wall time: it is the work each system does for one round.",
        "",
        "| P | N | raw socket | fedsync | pickle+base64+JSON | Flower 1.42 |",
        "|---|---|---|---|---|---|",
    ]
    for p in sizes:
        for n in counts:
            lines.append(f"| {human_count(p)} | {n} | " + " | ".join(cell_cpu(get(peer, p, n)) for peer in ALL_PEERS) + " |")
    baselines = {peer: o.baseline for (peer, _, _), o in results.items() if o.baseline and peer != "raw"}
    if baselines:
        lines += ["", "RSS after imports, before the model: " + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in sorted(baselines.items())) + "."]
    rounds = sorted({len(o.times) - 1 for o in results.values() if o.status == "ok" and not o.warmup_only})
    lines += ["", f"Measured rounds per cell (after the warm-up): {', '.join(map(str, rounds)) or '—'}. † only the warm-up round fitted in the time budget; its time is shown."]
    return "\n".join(lines)


def many_table(many: list[Outcome]) -> str:
    if not many:
        return ""
    lines = [
        "### Many devices: fedsync, tiny model",
        "",
        "| devices | processes | params | round (median) | per device | CPU s/round: coordinator + devices | coordinator peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    one = next((o for o in many if o.devices == 1 and o.status == "ok"), None)
    for o in many:
        per = "—"
        if o.status == "ok" and o.devices > 1:
            per = fmt_seconds(o.median / o.devices)
            if one:
                per += f" ({fmt_seconds((o.median - one.median) / (o.devices - 1))} above 1 device)"
        processes = o.note if o.note.startswith("in ") else str(o.devices)
        lines.append(f"| {o.devices} | {processes} | {o.params:,} | {cell_time(o)} | {per} | {cell_cpu(o)} | {o.peak / MB:,.0f} MB |" if o.status == "ok"
                     else f"| {o.devices} | {processes} | {o.params:,} | {cell_time(o)} | — | — | — |")
    return "\n".join(lines)


def targets(results: dict, many: list[Outcome]) -> str:
    def ok(o):
        return o is not None and o.status == "ok"

    lines = ["### Issue 5 targets", ""]
    raw, fed, fl = (results.get((peer, 10**7, 8)) for peer in ("raw", "fedsync", "flower"))
    if ok(raw) and ok(fed):
        r = fed.median / raw.median
        lines.append(f"- P=10M, N=8 within 2× of raw socket: {r:.1f}× — {'met' if r <= 2 else 'NOT met'}")
    if ok(fl) and ok(fed):
        r = fl.median / fed.median
        lines.append(f"- P=10M, N=8 at least 10× faster than Flower: {r:.1f}× — {'met' if r >= 10 else 'NOT met'}")
    elif fl is not None and ok(fed):
        lines.append(f"- P=10M, N=8 vs Flower: Flower {fl.status} ({fl.note})")
    # Below ~10M parameters the interpreter's own growth (threads, allocator arenas, lazily
    # imported modules: 20-50 MB) outweighs the model, so copies are judged on large models.
    fed_runs = [o for (peer, p, _), o in results.items() if peer == "fedsync" and ok(o) and p >= 10**7]
    if fed_runs:
        worst = max(fed_runs, key=lambda o: o.delta / o.model_bytes)
        c = worst.delta / worst.model_bytes
        lines.append(
            f"- coordinator peak RSS ≤ 3 model copies + baseline (P ≥ 10M): worst {c:.1f} copies "
            f"(P={human_count(worst.params)}, N={worst.devices}) — {'met' if c <= 3 else 'NOT met'}"
        )
    big = results.get(("fedsync", 5 * 10**7, 8))
    if big is not None:
        lines.append(f"- P=50M, N=8 completes: {'met' if ok(big) else 'NOT met'} ({cell_time(big)})")
    hundred = next((o for o in many if o.devices >= 100), None)
    if hundred is not None:
        met = ok(hundred) and hundred.median < 1
        lines.append(f"- {hundred.devices} tiny devices per round in under 1 s: {cell_time(hundred)} — {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def markdown(info, command, started_load, ended_load, body) -> str:
    head = [
        "# Round benchmark results",
        "",
        "Written by `benchmarks/round.py`; see benchmarks/README.md for what is measured and how.",
        "",
        f"Command: `{command}`",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        f"| load average | {started_load} at start, {ended_load} at end |",
        "",
        "The machine is shared with other engineers' jobs (builds, tests) running concurrently on its "
        "2 cores, so absolute times carry their noise; ratios within one row were measured minutes apart.",
        "",
    ]
    return "\n".join(head) + "\n" + body + "\n"


# ----------------------------------------------------------------- main


def write_keeping_later_sections(path: Path, text: str) -> None:
    """Replace this benchmark's part of ``path`` (up to the next top-level ``# `` heading), keeping
    the sections other benchmarks (e.g. strategies.py) wrote after it."""
    rest = ""
    if path.exists():
        old = path.read_text()
        later = old.find("\n# ", 1)
        rest = old[later:] if later >= 0 else ""
    path.write_text(text.rstrip("\n") + "\n" + rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--params", default="1M,10M,50M", help="model sizes, e.g. 1M,10M,50M")
    parser.add_argument("--devices", default="2,8", help="device counts, e.g. 2,8")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"subset of {','.join(ALL_PEERS)}")
    parser.add_argument("--many", default="1,100", help="device counts of the many-devices run ('' to skip)")
    parser.add_argument("--many-params", type=int, default=1000, help="tiny model size of the many-devices run")
    parser.add_argument("--many-bases", type=int, default=1, help="devices per process in the many-devices run (1: real processes)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="a peer starts no new round after this many seconds")
    parser.add_argument("--peer-timeout", type=float, default=900.0, help="a peer is killed after this many seconds")
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill a peer when MemAvailable falls under this")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1M params, 2 devices, 8 many-devices, no Flower")
    parser.add_argument("--output", default=None, help="Markdown file (default: benchmarks/RESULTS.md for the full matrix; none for a subset or --quick)")
    parser.add_argument("--logs", default="", help="keep every process's stderr in this folder (default: a temporary one)")
    parser.add_argument("--ref", default="", help="benchmark fedsync as committed at this git ref (e.g. HEAD) instead of the working tree")
    parser.add_argument("--profile", default="", help="cProfile file for the fedsync coordinator's first measured round at --profile-at")
    parser.add_argument("--profile-at", default="10M,8", help="P,N of the profiled fedsync round")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.params, opts.devices, opts.many = "1M", "2", "1,8"
        opts.peers = ",".join(p for p in opts.peers.split(",") if p != "flower")
        opts.budget = min(opts.budget, 20.0)
    sizes = [parse_count(x) for x in opts.params.split(",") if x]
    counts = [int(x) for x in opts.devices.split(",") if x]
    peers = [p for p in opts.peers.split(",") if p]
    unknown = set(peers) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    p, n = opts.profile_at.split(",")
    opts.profile_at = (parse_count(p), int(n))
    if opts.profile:
        opts.profile = str(Path(opts.profile).resolve())
    many_counts = [int(x) for x in opts.many.split(",") if x]
    # Only the full matrix replaces RESULTS.md: one cell, or a subset of peers, would clobber it.
    full_matrix = not opts.quick and all(getattr(opts, name) == parser.get_default(name) for name in ("params", "devices", "many", "many_bases", "peers"))
    output = opts.output if opts.output is not None else (str(HERE / "RESULTS.md") if full_matrix else "")
    command = "python benchmarks/round.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    if "flower" in peers and not FLOWER_PYTHON.exists():
        print(f"note: Flower skipped: {FLOWER_PYTHON} is absent; run benchmarks/setup_flower.sh", flush=True)
        peers.remove("flower")
    info = machine()
    started_load = loadavg()
    tmp = tempfile.TemporaryDirectory(prefix="fedsync-bench-")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results: dict[tuple[str, int, int], Outcome] = {}
    many: list[Outcome] = []
    with tmp:
        logdir = Path(opts.logs or tmp.name)
        logdir.mkdir(parents=True, exist_ok=True)
        if opts.ref:
            info["fedsync"] += f"; benchmarked: `git archive {opts.ref}` = {checkout(opts.ref, Path(tmp.name) / 'src')}"
        else:
            info["fedsync"] += "; benchmarked: the working tree" + (" (with uncommitted changes)" if dirty() else "")
        for params in sizes:
            for devices in counts:
                for peer in [x for x in ALL_PEERS if x in peers]:
                    started = time.monotonic()
                    o = run_peer(peer, params, devices, opts, logdir)
                    results[(peer, params, devices)] = o
                    print(progress(o, time.monotonic() - started), flush=True)
        for devices in many_counts:
            o = run_peer("fedsync", opts.many_params, devices, opts, logdir, bases=opts.many_bases)
            if opts.many_bases > 1:
                o.note = o.note or f"in {-(-devices // opts.many_bases)} processes"
            many.append(o)
            print(progress(o, 0.0), flush=True)
    body = tables(results, sizes, counts, peers) + "\n\n" + many_table(many) + "\n\n" + targets(results, many)
    print("\n" + body, flush=True)
    if output:
        write_keeping_later_sections(Path(output), markdown(info, command, started_load, loadavg(), body))
        print(f"\nwritten to {output}")
    return 0 if all(o.status in ("ok", "skipped") for o in [*results.values(), *many]) else 1


def progress(o: Outcome, seconds: float) -> str:
    head = f"{o.peer:8} P={human_count(o.params):>4} N={o.devices:<3}"
    if o.status != "ok":
        return f"{head} {o.status}: {o.note}"
    rounds = " ".join(f"{t:.3f}" for t in o.times)
    cpu = f"cpu/round {o.cpu_coordinator:.2f}+{o.cpu_devices:.2f}s  " if o.cpu_coordinator is not None else ""
    mem = cpu + f"peak {o.peak / MB:,.0f} MB (+{o.delta / MB:,.0f} MB = {o.delta / o.model_bytes:.2f} copies)" if o.delta is not None else ""
    return f"{head} median {fmt_seconds(o.median)}  rounds [{rounds}]  {mem}  lowest MemAvailable {o.lowest_available / GIB:.1f} GiB  ({seconds:.0f}s)"


if __name__ == "__main__":
    sys.exit(main())
