"""Rounds on a slow link: fedsync with and without compression against Flower 1.42, over a shaped veth pair.

    sudo python benchmarks/slow_link.py [--params 10M] [--rates 100,20] [--peers ...] [--quick]

Two network namespaces, ``fsl-coord`` (the coordinator, 10.231.0.1) and ``fsl-site`` (the N devices,
10.231.0.2; ``--tag`` renames them so that two runs do not meet), are joined by one veth pair whose
two ends are each shaped by a token bucket (``tc qdisc add dev ... root tbf rate R burst B latency
50ms``: netem is not in this kernel). Both directions of the link run at R, and the N devices share it,
as the machines of one site behind one uplink would. For each rate R (Mbit/s) the script first measures
the link with a raw TCP transfer (about two seconds' worth each way) and prints it, then runs, for each
peer, one warm-up round and up to ``--rounds`` measured rounds of a float32 model of P parameters (six
layer-like arrays, as benchmarks/round.py) and reports their median:

- fedsync float32, int8, int4:   ``FedArrays(model, wire_dtype=...)`` on the coordinator; devices are
                                 ``fedsync.serve(FedArrays(model, train))`` processes;
- fedsync delta + int4:          the devices declare ``updates="delta"``: they reply their update in int4;
- fedsync top-k 1% + int4:       ``updates="topk", top_k=0.01`` (error feedback on the device) with an
                                 int4 download;
- fedsync top-k 1% both ways:    the same devices, and a coordinator with ``download="delta",
                                 download_top_k=0.01``: the model goes down as 1 % of its difference
                                 from the view each device holds;
- fedsync STC 1% / 10% both ways: ``updates="stc", top_k=f`` on the devices and ``download="stc",
                                 download_top_k=f`` on the coordinator: sparse ternary (a sign bit per
                                 entry sent, one magnitude per array; fedsync.wire.stc) both ways;
- Flower 1.42 float32:           legacy ``start_server``/``start_client`` over gRPC (benchmarks/peers.py's
                                 ``flower-server``/``flower-client``, run from ``--flower-python``).

Each device's ``train`` is tiny but real: it scales every array by 0.999 in place (a dense update).
Flower's clients return the parameters they received (its cost is transport only, float32 both ways).

Reported per cell: seconds per round (median after the warm-up), fedsync's payload bytes per round
(``RoundResult.bytes_sent + bytes_received``: HTTP bodies), and the link bytes per measured round (both
directions, from the coordinator's veth counters between the end of the warm-up and the end of the last
round: TCP/IP headers, HTTP or gRPC framing included; fedsync's coordinator reads them itself at each
round's end; Flower's are read when its server reports a round's end, so a round's share may shift a little
to the next), those bytes divided by the rate (the time they take
one direction after the other), and the CPU seconds per round of the coordinator and of all devices.

Everything is torn down at the end, on failure too (processes, namespaces, the veth pair), and any
leftover of an earlier run with the same names is removed first. Needs root (``ip netns add``); when a
namespace cannot be created the script prints why and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402  (benchmarks/peers.py: emit, Rounds, time_rounds, the model)
import round as bench  # noqa: E402  (benchmarks/round.py: processes, guards, formatting)

NS_COORD, NS_SITE = "fsl-coord", "fsl-site"
VETH_COORD, VETH_SITE = "fslc0", "fsls0"
ADDR_COORD, ADDR_SITE = "10.231.0.1", "10.231.0.2"
FLOWER_PORT = 9092
RAW_PORT = 9093
SAMPLES = 100
MB = 1e6

# name -> (coordinator wire_dtype, device updates, device top_k, the download's top-k as a delta or None)
FEDSYNC_PEERS: dict[str, tuple[str | None, str | None, float | None, float | None]] = {
    "fedsync-float32": (None, None, None, None),
    "fedsync-int8": ("int8", None, None, None),
    "fedsync-int4": ("int4", None, None, None),
    "fedsync-delta-int4": ("int4", "delta", None, None),
    "fedsync-topk1-int4": ("int4", "topk", 0.01, None),
    "fedsync-topk1-both": ("int4", "topk", 0.01, 0.01),
    # updates="stc" pairs with download="stc": sparse ternary both ways (fedsync.wire.stc)
    "fedsync-stc1-both": ("int4", "stc", 0.01, 0.01),
    "fedsync-stc10-both": ("int4", "stc", 0.1, 0.1),
}
ALL_PEERS = (*FEDSYNC_PEERS, "flower")
LABELS = {
    "fedsync-float32": "fedsync float32",
    "fedsync-int8": "fedsync int8",
    "fedsync-int4": "fedsync int4",
    "fedsync-delta-int4": 'fedsync updates="delta" + int4',
    "fedsync-topk1-int4": 'fedsync updates="topk" 1 % + int4 download',
    "fedsync-topk1-both": 'fedsync top-k 1 % both ways (download="delta", download_top_k=0.01)',
    "fedsync-stc1-both": 'fedsync STC 1 % both ways (updates="stc", download="stc", top-k 0.01)',
    "fedsync-stc10-both": 'fedsync STC 10 % both ways (updates="stc", download="stc", top-k 0.1)',
    "flower": "Flower 1.42 float32",
}


# ----------------------------------------------------------------- the link


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def teardown() -> None:
    """Remove our namespaces (their veth ends go with them) and a veth left in the root namespace."""
    try:
        for ns in (NS_COORD, NS_SITE):
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", VETH_COORD, check=False)
    except FileNotFoundError:  # no iproute2: nothing of ours can exist
        pass


def burst_bytes(mbit: float) -> int:
    """The bucket: 10 ms at the rate, at least 64 KiB (a GSO packet on veth); tbf needs burst >= rate / HZ."""
    return max(65536, int(mbit * 1e6 / 8 / 100))


def setup(mbit: float) -> None:
    """Two namespaces joined by a veth pair, each end shaped to ``mbit`` Mbit/s. Raises CalledProcessError."""
    teardown()
    run("ip", "netns", "add", NS_COORD)
    run("ip", "netns", "add", NS_SITE)
    run("ip", "link", "add", VETH_COORD, "type", "veth", "peer", "name", VETH_SITE)
    for ns, dev, addr in ((NS_COORD, VETH_COORD, ADDR_COORD), (NS_SITE, VETH_SITE, ADDR_SITE)):
        run("ip", "link", "set", dev, "netns", ns)
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", dev, "up")
        run(
            "tc",
            "-n",
            ns,
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            f"{mbit:g}mbit",
            "burst",
            str(burst_bytes(mbit)),
            "latency",
            "50ms",
        )


def shaping() -> str:
    return run("tc", "-n", NS_COORD, "qdisc", "show", "dev", VETH_COORD).stdout.strip()


def link_bytes() -> int:
    """Bytes through the coordinator's veth end so far, both directions."""
    stats = json.loads(run("ip", "-n", NS_COORD, "-j", "-s", "link", "show", "dev", VETH_COORD).stdout)[0]["stats64"]
    return stats["rx"]["bytes"] + stats["tx"]["bytes"]


def own_link_bytes() -> int | None:
    """:func:`link_bytes`, read by a process inside the coordinator's namespace (``ip netns exec`` mounts its
    sysfs, which shows its one veth beside ``lo``, whatever ``--tag`` named it) at the moment it asks: a
    round's exact end; ``None`` where sysfs does not show exactly one such device."""
    try:
        (veth,) = [d for d in Path("/sys/class/net").iterdir() if d.name != "lo"]
        return sum(int((veth / "statistics" / name).read_text()) for name in ("rx_bytes", "tx_bytes"))
    except (OSError, ValueError):
        return None


def in_ns(ns: str, python: str, role: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, python, str(Path(__file__).resolve()), "--role", role, *args]


# ----------------------------------------------------------------- roles (run inside the namespaces)


def role_raw_server(args) -> None:
    """Receive a length and that many bytes, acknowledge, send as many back."""
    with socket.create_server((ADDR_SITE, RAW_PORT)) as server:
        peers.emit(ready=True)
        conn, _ = server.accept()
        with conn:
            size = int.from_bytes(recv_exactly(conn, 8), "little")
            view, got = memoryview(bytearray(1 << 20)), 0
            while got < size:
                n = conn.recv_into(view, min(len(view), size - got))
                if not n:
                    raise SystemExit("raw client closed early")
                got += n
            conn.sendall(b"k")
            conn.sendall(bytes(size))
            recv_exactly(conn, 1)


def role_raw_client(args) -> None:
    size = args.size
    with socket.create_connection((ADDR_SITE, RAW_PORT), timeout=args.timeout) as conn:
        started = time.perf_counter()
        conn.sendall(size.to_bytes(8, "little") + bytes(size))
        recv_exactly(conn, 1)
        up = time.perf_counter() - started
        started = time.perf_counter()
        recv_exactly(conn, size)
        down = time.perf_counter() - started
        conn.sendall(b"k")
    peers.emit(up=size * 8 / up / 1e6, down=size * 8 / down / 1e6)


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = conn.recv(min(1 << 20, size - got))
        if not part:
            raise SystemExit("peer closed early")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def role_fedsync_device(args) -> None:
    import numpy as np

    import fedsync

    factor = np.float32(0.999)

    def train(model):
        for array in model.values():
            array *= factor  # a tiny dense update: every value moves
        return SAMPLES

    data = fedsync.FedArrays(peers.model(args.params, seed=1), train, updates=args.updates or None, top_k=args.top_k)
    server = fedsync.serve(data, host=ADDR_SITE, port=0, block=False)
    peers.emit(ready=[server.url], pid=os.getpid())
    try:
        peers.wait_for_stdin_eof()
    finally:
        server.close()


def role_fedsync_coordinator(args) -> None:

    from fedsync import FedArrays, Federated, Remote

    peers.report_start(args.params)
    how = "stc" if args.updates == "stc" else "delta"  # sparse ternary both ways, or a top-k delta download
    download = {"download": how, "download_top_k": args.download_top_k} if args.download_top_k else {}
    data = FedArrays(peers.model(args.params), wire_dtype=args.wire_dtype or None, **download)
    remotes = [Remote(url, timeout=args.timeout) for url in args.urls]
    rounds = peers.Rounds(args.rounds, args.budget)
    with Federated(data, remotes, timeout=args.timeout) as alg:
        peers.time_rounds(
            alg, rounds, len(remotes), each=lambda r: {"payload": [r.bytes_sent, r.bytes_received], "link": own_link_bytes()}
        )
    peers.report_done(rounds)


ROLES = {
    "raw-server": role_raw_server,
    "raw-client": role_raw_client,
    "fedsync-device": role_fedsync_device,
    "fedsync-coordinator": role_fedsync_coordinator,
}


# ----------------------------------------------------------------- one cell


@dataclass
class Cell:
    peer: str
    rate: float  # Mbit/s
    params: int
    devices: int
    status: str = "ok"  # ok | failed | killed
    note: str = ""
    times: list[float] = field(default_factory=list)
    median: float | None = None
    payload: list[list[int]] = field(default_factory=list)  # fedsync: [sent, received] per round
    link: float | None = None  # link bytes per measured round, both directions
    link_at_round_ends: bool = False  # read by the coordinator itself at each round's end (fedsync), not by us
    cpu_coordinator: float | None = None  # CPU seconds per measured round (median)
    cpu_devices: float | None = None  # all device processes together, per measured round (mean)

    @property
    def payload_per_round(self) -> int | None:
        """Payload bytes of the last round, both directions (every round moves the same here)."""
        return sum(self.payload[-1]) if self.payload else None


def measure_link(mbit: float, opts, logdir: Path) -> dict:
    """Raw TCP, about two seconds' worth at the rate each way: the measured Mbit/s up and down."""
    size = max(1 << 20, int(mbit * 1e6 / 8 * opts.probe_seconds))
    deadline = time.monotonic() + 60 + 4 * opts.probe_seconds
    with bench.Group(int(opts.guard_gib * bench.GIB), logdir) as group:
        server = group.start(f"raw-server-{mbit:g}", in_ns(NS_SITE, sys.executable, "raw-server", "--params", "0"))
        group.expect(server, deadline, "ready")
        client = group.start(
            f"raw-client-{mbit:g}", in_ns(NS_COORD, sys.executable, "raw-client", "--params", "0", "--size", str(size))
        )
        return group.expect(client, deadline, "up")


def run_cell(peer: str, mbit: float, opts, logdir: Path) -> Cell:
    cell = Cell(peer, mbit, opts.params, opts.devices)
    common = [
        "--params",
        str(opts.params),
        "--rounds",
        str(opts.rounds),
        "--budget",
        str(opts.budget),
        "--timeout",
        str(opts.peer_timeout),
    ]
    deadline = time.monotonic() + opts.peer_timeout
    tag = f"{peer}-{mbit:g}"
    with bench.Group(int(opts.guard_gib * bench.GIB), logdir) as group:
        try:
            if peer == "flower":
                python, peers_py = opts.flower_python, str(HERE / "peers.py")
                address = f"{ADDR_COORD}:{FLOWER_PORT}"
                ns_exec = ["ip", "netns", "exec"]
                coordinator = group.start(
                    f"{tag}-server",
                    [
                        *ns_exec,
                        NS_COORD,
                        python,
                        peers_py,
                        "flower-server",
                        *common,
                        "--address",
                        address,
                        "--clients",
                        str(opts.devices),
                    ],
                )
                group.expect(coordinator, deadline, "ready")
                for i in range(opts.devices):
                    device = group.start(
                        f"{tag}-client{i}",
                        [*ns_exec, NS_SITE, python, peers_py, "flower-client", *common, "--address", address],
                    )
                    group.expect(device, deadline, "ready")
            else:
                wire, updates, top_k, down = FEDSYNC_PEERS[peer]
                extra = (["--updates", updates] if updates else []) + (["--top-k", str(top_k)] if top_k else [])
                urls = []
                for i in range(opts.devices):
                    device = group.start(
                        f"{tag}-device{i}", in_ns(NS_SITE, sys.executable, "fedsync-device", *common, *extra)
                    )
                    urls += group.expect(device, deadline, "ready")["ready"]
                wire_arg = (["--wire-dtype", wire] if wire else []) + (["--download-top-k", str(down)] if down else [])
                wire_arg += ["--updates", updates] if updates == "stc" else []  # the coordinator's download="stc"
                coordinator = group.start(
                    f"{tag}-coordinator",
                    in_ns(NS_COORD, sys.executable, "fedsync-coordinator", *common, *wire_arg, "--urls", *urls),
                )
            before, cpu = link_bytes(), group.cpu_seconds(exclude=coordinator)
            ends: list[int] = []  # fedsync: the link's bytes at each round's end, read by the coordinator itself
            while "done" not in (message := group.expect(coordinator, deadline, "round", "done", "payload")):
                if "payload" in message:
                    cell.payload.append(message["payload"])
                    if message.get("link") is not None:
                        ends.append(message["link"])
                elif message["round"] == 1:  # the warm-up is over
                    before, cpu = link_bytes(), group.cpu_seconds(exclude=coordinator)
            cell.times, cell.median = message["times"], message["median"]
            measured = max(1, len(cell.times) - 1)
            # Read here, a round's share may shift to the next when this process reads the coordinator's
            # messages late (a loaded machine); read by the coordinator at each round's end, it does not.
            cell.link_at_round_ends = len(ends) == len(cell.times) and len(ends) > 1
            exact = cell.link_at_round_ends
            cell.link = (ends[-1] - ends[0]) / (len(ends) - 1) if exact else (link_bytes() - before) / measured
            cell.cpu_coordinator = message["cpu"]
            cell.cpu_devices = (group.cpu_seconds(exclude=coordinator) - cpu) / measured
        except TimeoutError as exc:
            cell.status, cell.note = "failed", f"timed out after {opts.peer_timeout:g}s ({exc})"
        except RuntimeError as exc:
            cell.status = "killed" if group.tripped.is_set() else "failed"
            cell.note = str(exc)[:400]
        except bench.OutOfMemoryGuard:
            cell.status, cell.note = "killed", "out of memory guard"
    return cell


# ----------------------------------------------------------------- report


def table(cells: list[Cell], probes: dict[float, dict], opts) -> str:
    by = {(c.peer, c.rate): c for c in cells}
    rates = sorted({c.rate for c in cells}, reverse=True)
    peers = [p for p in ALL_PEERS if any(c.peer == p for c in cells)]
    lines = [
        f"P = {bench.human_count(opts.params)} float32 parameters ({opts.params * 4 / MB:,.0f} MB), "
        f"N = {opts.devices} devices "
        "sharing one link; seconds per round (median after a warm-up), link bytes per round (both directions, "
        "veth counters) and those bytes divided by the rate (the time they take one direction after the other).",
        "",
        "| rate (raw TCP up / down, Mbit/s) | peer | round (median) | Flower ÷ this | payload per round "
        "| link bytes per round | link bytes ÷ rate | CPU s/round: coordinator + devices |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        probe = probes.get(rate, {})
        head = f"{rate:g} Mbit/s ({probe.get('up', 0):.1f} / {probe.get('down', 0):.1f})"
        flower = by.get(("flower", rate))
        for peer in peers:
            c = by.get((peer, rate))
            if c is None:
                continue
            if c.status != "ok":
                lines.append(f"| {head} | {LABELS[peer]} | {c.status}: {c.note} | — | — | — | — | — |")
                continue
            versus = (
                f"{flower.median / c.median:.2f}×" if flower and flower.status == "ok" and peer != "flower" else "—"
            )
            payload = f"{c.payload_per_round / MB:,.1f} MB" if c.payload_per_round else "—"
            floor = c.link * 8 / (rate * 1e6)  # one direction after the other, as a round mostly is
            lines.append(
                f"| {head} | {LABELS[peer]} | {bench.fmt_seconds(c.median)} | {versus} | {payload} "
                f"| {c.link / MB:,.1f} MB | {bench.fmt_seconds(floor)} "
                f"| {c.cpu_coordinator:.2f} + {c.cpu_devices:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--urls", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--wire-dtype", default="", help=argparse.SUPPRESS)
    parser.add_argument("--updates", default="", help=argparse.SUPPRESS)
    parser.add_argument("--top-k", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--download-top-k", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="10M", help="model size in float32 parameters (default 10M)")
    parser.add_argument("--devices", type=int, default=2, help="device processes, all behind the one link")
    parser.add_argument("--rates", default="100,20", help="link rates in Mbit/s")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"subset of {','.join(ALL_PEERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument(
        "--budget", type=float, default=240.0, help="a peer starts no new round after this many seconds"
    )
    parser.add_argument("--peer-timeout", type=float, default=900.0, help="a peer is killed after this many seconds")
    parser.add_argument(
        "--probe-seconds", type=float, default=2.0, help="the raw TCP check moves this many seconds' worth each way"
    )
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill a peer when MemAvailable falls under this")
    parser.add_argument(
        "--flower-python", default=str(bench.FLOWER_PYTHON), help="Flower 1.42's python (benchmarks/setup_flower.sh)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 1M parameters, 100 Mbit/s, one measured round, no Flower"
    )
    parser.add_argument("--tag", default="fsl", help="names: namespaces TAG-coord, TAG-site; veths TAGc0, TAGs0")
    parser.add_argument("--json", default="", help="also write the cells and link checks here")
    parser.add_argument("--logs", default="", help="keep every process's stderr in this folder")
    opts = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", opts.tag):
        parser.error(f"--tag must be 1-8 lowercase letters or digits, starting with a letter; got {opts.tag!r}")
    global NS_COORD, NS_SITE, VETH_COORD, VETH_SITE
    NS_COORD, NS_SITE, VETH_COORD, VETH_SITE = f"{opts.tag}-coord", f"{opts.tag}-site", f"{opts.tag}c0", f"{opts.tag}s0"
    if opts.role:
        opts.params = bench.parse_count(opts.params)
        ROLES[opts.role](opts)
        return 0
    if opts.quick:
        opts.params, opts.rates, opts.rounds = "1M", "100", 1
        opts.peers = ",".join(p for p in opts.peers.split(",") if p != "flower")
    opts.params = bench.parse_count(opts.params)
    peers = [p for p in opts.peers.split(",") if p]
    unknown = set(peers) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    if "flower" in peers and not Path(opts.flower_python).exists():
        print(
            f"note: Flower skipped: {opts.flower_python} is absent; "
            "run benchmarks/setup_flower.sh or pass --flower-python",
            flush=True,
        )
        peers.remove("flower")
    rates = [float(r) for r in opts.rates.split(",") if r]
    bench.Proc.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])  # the checkout's fedsync, and peers.py

    # A SIGTERM (timeout, CI) unwinds like an error, so the finally below still removes the link.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        setup(rates[0])
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
        why = getattr(exc, "stderr", "") or str(exc)
        print(
            f"cannot build the shaped link: {shlex.join(getattr(exc, 'cmd', []) or ['ip'])}: {why.strip()} "
            "(needs root, iproute2 and tc with the tbf qdisc)",
            file=sys.stderr,
            flush=True,
        )
        teardown()
        return 2
    print(
        f"machine: load average {bench.loadavg()}, {os.cpu_count()} cores; P = {opts.params:,}, N = {opts.devices}",
        flush=True,
    )
    cells: list[Cell] = []
    probes: dict[float, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fedsync-slow-link-") as tmp:
            logdir = Path(opts.logs or tmp)
            logdir.mkdir(parents=True, exist_ok=True)
            for rate in rates:
                setup(rate)
                probes[rate] = measure_link(rate, opts, logdir)
                print(
                    f"link {rate:g} Mbit/s: {shaping()}; raw TCP measures {probes[rate]['up']:.1f} Mbit/s up, "
                    f"{probes[rate]['down']:.1f} down",
                    flush=True,
                )
                for peer in [p for p in ALL_PEERS if p in peers]:
                    started = time.monotonic()
                    cell = run_cell(peer, rate, opts, logdir)
                    cells.append(cell)
                    took = time.monotonic() - started
                    if cell.status == "ok":
                        print(
                            f"{peer:20} {rate:g} Mbit/s: median {bench.fmt_seconds(cell.median)} rounds "
                            f"[{' '.join(f'{t:.2f}' for t in cell.times)}] link {cell.link / MB:.1f} MB/round "
                            f"payload {(cell.payload_per_round or 0) / MB:.1f} MB "
                            f"cpu {cell.cpu_coordinator:.2f}+{cell.cpu_devices:.2f}s "
                            f"({took:.0f}s)",
                            flush=True,
                        )
                    else:
                        print(f"{peer:20} {rate:g} Mbit/s: {cell.status}: {cell.note}", flush=True)
    finally:
        teardown()
    print(f"\nload average at the end: {bench.loadavg()}\n")
    print(table(cells, probes, opts), flush=True)
    if opts.json:
        Path(opts.json).write_text(
            json.dumps(
                {"probes": {f"{k:g}": v for k, v in probes.items()}, "cells": [asdict(c) for c in cells]}, indent=1
            )
        )
    return 0 if all(c.status == "ok" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
