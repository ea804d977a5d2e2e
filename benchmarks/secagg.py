"""The cost of secure aggregation: fedsync's SecAgg beside Flower 1.42's SecAgg+.

    python benchmarks/secagg.py [--params 1M,10M] [--devices 8] [--peers ...] [--quick]

For every model size P (float32 parameters over six layer-like arrays, as benchmarks/round.py)
and device count N, four systems run rounds of a no-op training (each device returns its
own fixed weights and 100 samples):

- fedsync:         ``Federated(FedArrays(...), remotes).round()`` against N ``fedsync.serve``
                   device processes over HTTP on 127.0.0.1 (benchmarks/peers.py's devices);
- fedsync-secagg:  the same devices and coordinator with ``secure_aggregation=SecAgg()``
                   (Bonawitz et al. 2017: every pair of devices masks, threshold t = a majority);
- flower:          Flower 1.42's FedAvg in ``flwr.simulation.run_simulation`` (Ray), N ClientApps;
- flower-secagg+:  the same inside ``SecAggPlusWorkflow`` (Bell et al. 2020) with
                   ``secaggplus_mod`` on the ClientApps, twice: a full graph (``num_shares=1.0``,
                   every client shares with all, as fedsync and Flower's own ``SecAggWorkflow`` do,
                   threshold N//2+1 as fedsync's default) and the sparse graph of Flower's
                   secure-aggregation example (``num_shares=3``, ``reconstruction_threshold=2``);
                   SecAggPlusWorkflow has no default for either.

Round time is the median of up to ``--rounds`` rounds after one warm-up round. Bytes per
round are what the coordinator sent plus received, counted as benchmarks/secagg_peers.py
says: fedsync from the coordinator's ``/proc/self/io`` (socket bytes, HTTP included),
Flower as the protobuf size of every message its ServerApp's Grid pushes and pulls (its
simulation hands messages over in memory). Flower and fedsync therefore run in different
harnesses (processes over HTTP against one process with Ray actors): compare each system's
SecAgg ÷ plain ratio, and read the cross-system ratio with that in mind.

Results are printed; the full set (no ``--params``, ``--devices``, ``--peers`` or
``--quick``) replaces the "Secure aggregation" section of benchmarks/RESULTS.md and keeps
the others. Needs ``fedsync[secagg]``; Flower needs benchmarks/setup_flower.sh (skipped with
a note when its venv is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import round as bench  # noqa: E402  (benchmarks/round.py: processes, guards, formatting)

SECAGG_PEERS_PY = HERE / "secagg_peers.py"
SECTION = "# Secure aggregation"
ALL_PEERS = ("fedsync", "fedsync-secagg", "flower", "flower-secagg+full", "flower-secagg+sparse")
FLOWER_SPARSE = (3, 2)  # num_shares, reconstruction_threshold of Flower's secure-aggregation example


@dataclass
class Cell:
    peer: str
    params: int
    devices: int
    status: str = "ok"  # ok | skipped | killed | failed
    note: str = ""
    times: list[float] = field(default_factory=list)
    median: float | None = None
    moved: list[int] = field(default_factory=list)
    cpu_coordinator: float | None = None  # CPU seconds per measured round
    cpu_devices: float | None = None  # fedsync: all device processes together, per measured round
    threshold: int | None = None
    shares: float | None = None
    dtypes: list[str] | None = None  # the global model's dtypes after a round (what the next round sends)

    @property
    def bytes_per_round(self) -> float | None:
        """Median bytes of the measured rounds (the warm-up's when it is the only one)."""
        if not self.moved:
            return None
        measured = self.moved[1:] or self.moved
        return sorted(measured)[len(measured) // 2]


def estimate(peer: str, model_bytes: float, devices: int) -> float:
    """Bytes of memory a cell may need (devices + coordinator), generous; from runs on this machine."""
    if peer.startswith("flower"):
        # Ray (~1 GB with its daemons), ~250 MB per ClientApp actor, about 10 model copies per client in flight.
        return 1e9 + devices * (250e6 + 10 * model_bytes)
    copies = 2 if peer == "fedsync-secagg" else 1  # masked replies are uint64: twice the bytes
    return copies * bench.estimate("fedsync", model_bytes, devices)


def flower_args(peer: str, devices: int) -> list[str]:
    if peer == "flower":
        return []
    if peer == "flower-secagg+full":
        return ["--secure", "--num-shares", "1.0", "--threshold", str(devices // 2 + 1)]
    shares, threshold = FLOWER_SPARSE
    return ["--secure", "--num-shares", str(shares), "--threshold", str(threshold)]


def run_cell(peer: str, params: int, devices: int, opts, logdir: Path) -> Cell:
    cell = Cell(peer, params, devices)
    need = estimate(peer, params * 4, devices)
    available = bench.mem_available()
    if need + opts.guard_gib * bench.GIB > available:
        cell.status, cell.note = "skipped", f"would exceed memory: needs ~{need / bench.GIB:.1f} GiB, {available / bench.GIB:.1f} GiB available"
        return cell
    common = ["--params", str(params), "--rounds", str(opts.rounds), "--budget", str(opts.budget), "--timeout", str(opts.peer_timeout)]
    deadline = time.monotonic() + opts.peer_timeout
    tag = f"{peer}-{params}-{devices}"
    coordinator = None
    with bench.Group(int(opts.guard_gib * bench.GIB), logdir) as group:
        try:
            if peer.startswith("flower"):
                # setsid: Ray's daemons join this process group, so that all of them can be ended with it.
                argv = ["setsid", str(bench.FLOWER_PYTHON), str(SECAGG_PEERS_PY), "flower-simulation", *common, "--clients", str(devices), *flower_args(peer, devices)]
                coordinator = group.start(tag, argv)
            else:
                urls = bench.start_devices(group, "fedsync", sys.executable, common, devices, 1, deadline, tag)
                secure = ["--secure"] if peer == "fedsync-secagg" else []
                coordinator = group.start(f"{tag}-coordinator", [sys.executable, str(SECAGG_PEERS_PY), "fedsync-coordinator", *common, *secure, "--urls", *urls])
            group.expect(coordinator, deadline, "baseline")
            devices_cpu = None
            while "moved" not in (counted := group.expect(coordinator, deadline, "round", "moved")):
                if counted["round"] == 1 and not peer.startswith("flower"):  # the warm-up is over
                    devices_cpu = group.cpu_seconds(exclude=coordinator)
            if devices_cpu is not None and len(counted["moved"]) > 1:
                cell.cpu_devices = (group.cpu_seconds(exclude=coordinator) - devices_cpu) / (len(counted["moved"]) - 1)
            done = group.expect(coordinator, deadline, "done")
            cell.moved, cell.threshold, cell.shares, cell.dtypes = counted["moved"], counted["threshold"], counted["shares"], counted["dtypes"]
            cell.times, cell.median, cell.cpu_coordinator = done["times"], done["median"], done["cpu"]
        except bench.OutOfMemoryGuard:
            cell.status, cell.note = "killed", f"out of memory guard: available memory fell under {opts.guard_gib:g} GiB"
        except TimeoutError as exc:
            cell.status, cell.note = "failed", f"timed out after {opts.peer_timeout:g}s ({exc})"
        except RuntimeError as exc:
            cell.status = "killed" if group.tripped.is_set() else "failed"
            cell.note = str(exc)[:600]
        finally:
            if peer.startswith("flower") and coordinator is not None:
                end_process_group(coordinator.popen.pid)
    return cell


def end_process_group(pid: int) -> None:
    """SIGKILL what is left of the process group ``pid`` leads (started by us with setsid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------- report


def fmt_bytes(n: float | None) -> str:
    return "—" if n is None else f"{n / bench.MB:,.0f} MB"


def cell_text(c: Cell | None) -> str:
    if c is None:
        return "not run"
    if c.status != "ok":
        return f"{c.status}: {c.note}"
    return f"{bench.fmt_seconds(c.median)}; {fmt_bytes(c.bytes_per_round)}" + (" †" if len(c.times) == 1 else "")


def ratio(a: Cell | None, b: Cell | None) -> str:
    if a is None or b is None or a.status != "ok" or b.status != "ok" or not b.median or not b.bytes_per_round:
        return "—"
    times = a.median / b.median
    timing = f"{times:.1f}×" if times >= 1 else f"{times:.2f}×"
    return f"{timing} time, {a.bytes_per_round / b.bytes_per_round:.2f}× bytes"


def tables(results: dict, sizes: list[int], counts: list[int], peers: list[str]) -> str:
    def get(peer, p, n):
        return results.get((peer, p, n)) if peer in peers else None

    lines = [
        "### Round time (median after a warm-up round); bytes the coordinator sent + received per round",
        "",
        "| P | N | fedsync | fedsync SecAgg | Flower 1.42 | Flower SecAgg+, full graph | Flower SecAgg+, 3 shares |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sizes:
        for n in counts:
            row = [cell_text(get(x, p, n)) for x in ALL_PEERS]
            lines.append(f"| {bench.human_count(p)} | {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        "### Ratios",
        "",
        "| P | N | fedsync SecAgg ÷ fedsync | Flower SecAgg+ (full) ÷ Flower | Flower SecAgg+ (3 shares) ÷ Flower | fedsync SecAgg ÷ Flower SecAgg+ (full) | fedsync SecAgg ÷ Flower SecAgg+ (3 shares) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sizes:
        for n in counts:
            fs, fss, fl, flf, fls = (get(x, p, n) for x in ALL_PEERS)
            lines.append(f"| {bench.human_count(p)} | {n} | {ratio(fss, fs)} | {ratio(flf, fl)} | {ratio(fls, fl)} | {ratio(fss, flf)} | {ratio(fss, fls)} |")
    settings = sorted({(c.peer, c.devices, c.threshold, c.shares) for c in results.values() if c.status == "ok" and c.threshold is not None})
    if settings:
        lines += ["", "Secure aggregation as run: " + "; ".join(f"{peer} N={n}: threshold {t}, {graph(peer, n, s)}" for peer, n, t, s in settings) + "."]
    dtypes = sorted({(c.peer, ",".join(c.dtypes)) for c in results.values() if c.status == "ok" and c.dtypes})
    if dtypes:
        lines += ["", "The global model's dtype after a round (what the next round sends down): " + "; ".join(f"{peer}: {d}" for peer, d in dtypes) + "."]
    return "\n".join(lines)


def graph(peer: str, devices: int, shares: float | None) -> str:
    if peer == "fedsync-secagg":
        return f"full graph (each device shares with the other {devices - 1})"
    return f"num_shares={shares!r}" + (" (full graph)" if shares == 1.0 or shares == devices else "")


def markdown(info: dict, command: str, started_load: str, ended_load: str, uptime: str, body: str) -> str:
    head = [
        SECTION,
        "",
        "Written by `benchmarks/secagg.py`; see benchmarks/README.md for what is measured and how.",
        "",
        f"Command: `{command}`",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        f"| load average | {started_load} at start, {ended_load} at end (`uptime` at start: {uptime}) |",
        "",
        "fedsync runs N device processes and a coordinator process over HTTP; Flower runs in its "
        "simulation engine (one process, ClientApps in Ray actors), so each system's own SecAgg ÷ plain "
        "ratio is the comparable figure. Bytes: what fedsync's coordinator passed through its sockets' send and "
        "receive calls (HTTP included); Flower's, the protobuf size of every message its ServerApp sends and receives. "
        "A † marks a cell where only the warm-up round fitted in the budget.",
        "",
    ]
    return "\n".join(head) + "\n" + body + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the ``# Secure aggregation`` section of ``path`` (up to the next top-level
    heading), or append it; every other section is kept as it was."""
    old = path.read_text() if path.exists() else ""
    marker = SECTION + "\n"
    begin = 0 if old.startswith(marker) else old.find("\n" + marker) + 1  # 0 (not found) only at the start
    if begin == 0 and not old.startswith(marker):
        before, after = old.rstrip("\n"), ""
    else:
        end = old.find("\n# ", begin + 1)  # the next top-level heading
        before, after = old[:begin].rstrip("\n"), (old[end:] if end >= 0 else "")
    joined = (before + "\n\n" if before else "") + text.rstrip("\n") + "\n" + after
    path.write_text(joined)


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--params", default="1M,10M", help="model sizes, e.g. 1M,10M")
    parser.add_argument("--devices", default="8", help="device counts, e.g. 8")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"subset of {','.join(ALL_PEERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="a peer starts no new round this many seconds after its warm-up round")
    parser.add_argument("--peer-timeout", type=float, default=900.0, help="a peer is killed after this many seconds")
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill a peer when MemAvailable falls under this")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1M params, 3 devices, fedsync only, 1 measured round")
    parser.add_argument("--output", default=None, help="Markdown file (default: benchmarks/RESULTS.md for the full set; none otherwise)")
    parser.add_argument("--json", default="", help="also write every cell (times, bytes per round, settings) to this JSON file")
    parser.add_argument("--logs", default="", help="keep every process's stderr in this folder (default: a temporary one)")
    parser.add_argument("--ref", default="", help="benchmark fedsync as committed at this git ref (e.g. HEAD) instead of the working tree")
    opts = parser.parse_args(argv)
    full = not opts.quick and all(getattr(opts, name) == parser.get_default(name) for name in ("params", "devices", "peers"))
    if opts.quick:
        opts.params, opts.devices = "1M", "3"  # secure aggregation needs at least 3 devices
        opts.peers = ",".join(p for p in opts.peers.split(",") if not p.startswith("flower"))
        opts.rounds, opts.budget = min(opts.rounds, 1), min(opts.budget, 20.0)
    sizes = [bench.parse_count(x) for x in opts.params.split(",") if x]
    counts = [int(x) for x in opts.devices.split(",") if x]
    peers = [p for p in opts.peers.split(",") if p]
    unknown = set(peers) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(ALL_PEERS)}")
    output = opts.output if opts.output is not None else (str(HERE / "RESULTS.md") if full else "")
    command = "python benchmarks/secagg.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if any(p.startswith("flower") for p in peers) and not bench.FLOWER_PYTHON.exists():
        print(f"note: Flower skipped: {bench.FLOWER_PYTHON} is absent; run benchmarks/setup_flower.sh", flush=True)
        peers = [p for p in peers if not p.startswith("flower")]

    info = bench.machine()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started_load = bench.loadavg()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + f"\nuptime: {uptime}", flush=True)
    results: dict[tuple[str, int, int], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="fedsync-secagg-bench-") as tmp:
        logdir = Path(opts.logs or tmp)
        logdir.mkdir(parents=True, exist_ok=True)
        if opts.ref:
            info["fedsync"] += f"; benchmarked: `git archive {opts.ref}` = {bench.checkout(opts.ref, Path(tmp) / 'src')}"
        else:
            # The children run benchmarks/*.py, which would import fedsync from wherever it is installed: use this tree.
            bench.Proc.env["PYTHONPATH"] = str(HERE.parent)
            info["fedsync"] += "; benchmarked: the working tree" + (" (with uncommitted changes)" if bench.dirty() else "")
        for params in sizes:
            for devices in counts:
                for peer in [x for x in ALL_PEERS if x in peers]:
                    started = time.monotonic()
                    c = run_cell(peer, params, devices, opts, logdir)
                    results[(peer, params, devices)] = c
                    print(progress(c, time.monotonic() - started), flush=True)
    body = tables(results, sizes, counts, peers)
    print("\n" + body, flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps([{**asdict(c), "bytes_per_round": c.bytes_per_round} for c in results.values()], indent=1))
    if output:
        write_section(Path(output), markdown(info, command, started_load, bench.loadavg(), uptime, body))
        print(f"\nwritten to {output}")
    return 0 if all(c.status in ("ok", "skipped") for c in results.values()) else 1


def progress(c: Cell, seconds: float) -> str:
    head = f"{c.peer:21} P={bench.human_count(c.params):>4} N={c.devices:<2}"
    if c.status != "ok":
        return f"{head} {c.status}: {c.note}"
    rounds = " ".join(f"{t:.3f}" for t in c.times)
    moved = " ".join(f"{m / bench.MB:.1f}" for m in c.moved)
    devices = f" + devices {c.cpu_devices:.2f}s" if c.cpu_devices is not None else ""
    return f"{head} median {bench.fmt_seconds(c.median)}  rounds [{rounds}] s  MB/round [{moved}]  cpu/round: coordinator {c.cpu_coordinator:.2f}s{devices}  ({seconds:.0f}s)"


if __name__ == "__main__":
    sys.exit(main())
