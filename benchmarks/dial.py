"""Dial-out benchmark (issue #20): devices that dial in, side by side with direct HTTP, raw sockets and Flower.

    python benchmarks/dial.py [--part round|many|resume] [--quick]

Three parts, each runnable alone (``--part``), all by default, written as the "Dial-out" section of
benchmarks/RESULTS.md (other sections kept; a part run alone replaces only its own subsection) and printed:

- round:  10M float32 parameters (peers.py's six arrays) x 8 devices, no-op training. Round time (median after
          a warm-up) and the coordinator's peak RSS (VmHWM minus its RSS after imports, in model copies) for
          devices dialed in to a ``Listener`` (``fedsync.serve(connect=...)`` processes), direct HTTP
          (``fedsync.serve`` processes), raw TCP sockets (peers.py ``raw``) and Flower 1.42 in deployment mode
          (benchmarks/flower_deployment.py: a SuperLink and N SuperNodes dialing in).
- many:   1,000 and 5,000 devices dialed in and long-polling (1,000 per ``many-host`` process: asyncio +
          aiohttp, jobs through ``DeviceApp`` in a thread pool): the listening process's RSS, threads, event
          loop tasks and open file descriptors while idle, and the round time when 100 are sampled.
- resume: a 1 GB model (512 MB when memory is short) sent to one direct-HTTP device through
          tests/support/proxy.py's ``CuttingProxy``, its upload cut once at half: time and bytes on the wire
          until the round is done, with fedsync's resumption against a restart from zero.

Every process is started in its own process group and killed with it at the end. ``--quick``: small sizes,
a smoke run (its results are printed, not written).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import flower_deployment  # noqa: E402
import round as rb  # noqa: E402  (benchmarks/round.py: processes, memory guard, the raw and direct peers)

DIAL_PEERS = HERE / "dial_peers.py"
PEERS = HERE / "peers.py"
GIB = rb.GIB
MB = 1e6
SECTION = "# Dial-out"


class GroupProc(rb.Proc):
    """round.py's child process, in a process group of its own: killed with everything it started."""

    def __init__(self, name: str, argv: list[str], logdir: Path) -> None:
        import queue
        import threading
        from collections import deque

        self.name = name
        self.log = logdir / f"{name}.log"
        self.messages = queue.Queue()
        self.tail = deque(maxlen=30)
        env = {**os.environ, **rb.CHILD_ENV, **self.env}
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


rb.Proc = GroupProc  # round.Group and run_peer start their processes through this name


def proc_status(pid: int) -> dict:
    """RSS and peak RSS (bytes) and threads of ``pid``, from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    except OSError:
        pass
    return out


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / MB:,.0f} MB"


def secs(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


# ----------------------------------------------------------------- part 1: 10M x 8


def run_dial(params: int, devices: int, opts, logdir: Path) -> rb.Outcome:
    """Dialed-in devices: a dial-coordinator, then ``devices`` dial-device processes connecting to it."""
    outcome = rb.Outcome("dial", params, devices)
    common = [
        "--params",
        str(params),
        "--rounds",
        str(opts.rounds),
        "--budget",
        str(opts.budget),
        "--timeout",
        str(opts.peer_timeout),
    ]
    deadline = time.monotonic() + opts.peer_timeout
    with rb.Group(int(opts.guard_gib * GIB), logdir) as group:
        coordinator = None
        try:
            extra = ["--profile", opts.profile] if opts.profile else []
            coordinator = group.start(
                "dial-coordinator",
                [sys.executable, str(DIAL_PEERS), "dial-coordinator", *common, *extra, "--devices", str(devices)],
            )
            start = group.expect(coordinator, deadline, "baseline")
            url = group.expect(coordinator, deadline, "ready")["ready"][0]
            procs = [
                group.start(
                    f"dial-device{i}",
                    [
                        sys.executable,
                        str(DIAL_PEERS),
                        "dial-device",
                        *common,
                        "--connect",
                        url,
                        "--name",
                        f"dev{i:05d}",
                    ],
                )
                for i in range(devices)
            ]
            for proc in procs:
                group.expect(proc, deadline, "ready")
            outcome.baseline = start["baseline"]
            devices_cpu = group.cpu_seconds(exclude=coordinator)
            while "done" not in (message := group.expect(coordinator, deadline, "round", "done")):
                if message["round"] == 1:
                    devices_cpu = group.cpu_seconds(exclude=coordinator)
            measured = max(1, len(message["times"]) - 1)
            outcome.cpu_devices = (group.cpu_seconds(exclude=coordinator) - devices_cpu) / measured
            outcome.cpu_coordinator = message["cpu"]
            outcome.times, outcome.median, outcome.peak = message["times"], message["median"], message["peak"]
        except (rb.OutOfMemoryGuard, TimeoutError, RuntimeError) as exc:
            outcome.status = "failed"
            outcome.note = f"{type(exc).__name__}: {exc}"[:400]
    return outcome


def part_round(opts, logdir: Path) -> tuple[str, dict]:
    params, devices = (1_000_000, 2) if opts.quick else (10_000_000, 8)
    model_bytes = params * 4
    rows = []
    print(f"[round] {params:,} params x {devices} devices: dial, direct, raw, flower", flush=True)
    dial = run_dial(params, devices, opts, logdir)
    direct = rb.run_peer("fedsync", params, devices, opts, logdir)
    raw = rb.run_peer("raw", params, devices, opts, logdir)
    for label, o in (
        ("dialed-in (`serve(connect=...)`, Listener)", dial),
        ("direct HTTP (`serve`, Remote)", direct),
        ("raw TCP sockets", raw),
    ):
        if o.status != "ok":
            rows.append(f"| {label} | {o.status}: {o.note} | | | |")
            print(f"  {label}: {o.status}: {o.note}", flush=True)
            continue
        copies = f"{mb(o.peak)}; +{mb(o.delta)} = {o.delta / model_bytes:.1f} copies"
        cpu = f"{o.cpu_coordinator:.2f} + {o.cpu_devices:.2f}"
        times = ", ".join(secs(t) for t in o.times)
        rows.append(f"| {label} | {secs(o.median)} | {copies} | {cpu} | {times} |")
        print(f"  {label}: median {secs(o.median)} ({times}); peak {copies}; cpu {cpu}", flush=True)
    flower_note = ""
    if opts.no_flower or not flower_deployment.available():
        flower_note = "not run" + ("" if opts.no_flower else f": no Flower venv at {flower_deployment.VENV_BIN}")
        rows.append(f"| Flower 1.42 deployment (SuperLink + SuperNodes) | {flower_note} | | | |")
    else:
        try:
            r = flower_deployment.run(params, devices, rounds=opts.rounds, timeout=opts.peer_timeout)
            median = statistics.median(r["round_seconds"])
            times = ", ".join(secs(t) for t in r["round_seconds"])
            mem = (
                f"ServerApp {mb(r['serverapp_peak'])} = {r['serverapp_peak'] / model_bytes:.1f} copies; "
                f"SuperLink {mb(r['superlink_peak'])} = {r['superlink_peak'] / model_bytes:.1f} copies"
            )
            rows.append(
                f"| Flower 1.42 deployment (SuperLink + SuperNodes) | {secs(median)} | {mem} (whole peaks) | — | "
                f"{times} |"
            )
            print(f"  flower deployment: median {secs(median)} ({times}); {mem}", flush=True)
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            rows.append(f"| Flower 1.42 deployment | failed: {str(exc)[:200]} | | | |")
            print(f"  flower deployment failed: {exc}", flush=True)
    ratio = dial.median / direct.median if dial.median and direct.median else None
    lines = [
        f"### {params // 10**6}M parameters x {devices} devices: dialed-in, direct, raw sockets, Flower deployment",
        "",
        f"Model {mb(model_bytes)} (float32, six arrays), no-op training; the median of {opts.rounds} rounds after a "
        "warm-up. Memory: the coordinator's peak RSS (VmHWM), and that minus its RSS after imports, in model copies "
        "(P×4 bytes; its own model is one). CPU: seconds per round, coordinator + all devices.",
        "",
        "| devices | round (median) | coordinator peak RSS | CPU s/round | rounds |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    if ratio is not None:
        lines.append(
            f"Dialed-in ÷ direct: **{ratio:.2f}×** (target: within 1.25×). Dialed-in ÷ raw sockets: "
            f"{dial.median / raw.median:.1f}×."
            if raw.median
            else ""
        )
        lines.append("")
    lines.append(
        "Flower's figures are whole peaks (its processes' baselines are not subtracted) and its round time "
        "includes its SuperNodes' polling of the SuperLink for messages."
    )
    return "\n".join(lines) + "\n", {"dial": dial, "direct": direct, "raw": raw, "ratio": ratio}


# ----------------------------------------------------------------- part 2: many dialed-in devices


def run_many(count: int, opts, logdir: Path) -> dict:
    per_host = min(count, opts.per_host)
    hosts = math.ceil(count / per_host)
    sample = min(opts.sample, count)
    common = ["--params", str(opts.many_params), "--timeout", str(opts.peer_timeout)]
    deadline = time.monotonic() + opts.peer_timeout
    out: dict = {"devices": count, "hosts": hosts, "sample": sample}
    with rb.Group(int(opts.guard_gib * GIB), logdir) as group:
        try:
            coordinator = group.start(
                f"many{count}-coordinator",
                [
                    sys.executable,
                    str(DIAL_PEERS),
                    "many-coordinator",
                    *common,
                    "--devices",
                    str(count),
                    "--sample",
                    str(sample),
                    "--rounds",
                    str(opts.rounds),
                    "--budget",
                    str(opts.budget),
                    "--idle",
                    str(opts.idle),
                ],
            )
            ready = group.expect(coordinator, deadline, "ready")
            url, out["imported"], out["nofile"] = ready["ready"][0], ready["imported"], ready["nofile"]
            host_procs = []
            for h in range(hosts):
                n = min(per_host, count - h * per_host)
                host_procs.append(
                    group.start(
                        f"many{count}-host{h}",
                        [
                            sys.executable,
                            str(DIAL_PEERS),
                            "many-host",
                            *common,
                            "--connect",
                            url,
                            "--count",
                            str(n),
                            "--first",
                            str(h * per_host),
                        ],
                    )
                )
            out["register_seconds"] = group.expect(coordinator, deadline, "registered")["seconds"]
            out["idle"] = group.expect(coordinator, deadline, "idle")["idle"]
            out["hosts_rss"] = sum(proc_status(p.popen.pid).get("VmRSS", 0) for p in host_procs)
            done = group.expect(coordinator, deadline, "done")
            after = next(m for m in coordinator.seen if "after" in m)["after"]
            out.update(status="ok", times=done["times"], median=done["median"], peak=done["peak"], after=after)
        except (rb.OutOfMemoryGuard, TimeoutError, RuntimeError, StopIteration) as exc:
            out.update(status="failed", note=f"{type(exc).__name__}: {exc}"[:400])
    return out


def part_many(opts, logdir: Path) -> tuple[str, list]:
    counts = [50] if opts.quick else [1000, 5000]
    results = []
    for count in counts:
        print(f"[many] {count} dialed-in devices, {min(opts.sample, count)} sampled per round", flush=True)
        r = run_many(count, opts, logdir)
        results.append(r)
        print(f"  {r}", flush=True)
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append(f"| {r['devices']:,} | failed: {r['note']} | | | | | |")
            continue
        idle, imported = r["idle"], r["imported"]
        per = (idle["rss"] - imported["rss"]) / r["devices"]
        rows.append(
            f"| {r['devices']:,} | {mb(idle['rss'])} (+{mb(idle['rss'] - imported['rss'])}, {per / 1e3:.0f} kB per "
            f"device) | {idle['threads']} | {idle['tasks']:,} | {idle['fds']:,} ({idle['connections']:,} connections) "
            f"| {secs(r['median'])} ({', '.join(secs(t) for t in r['times'])}) | {mb(r['peak'])} |"
        )
    lines = [
        "### Many dialed-in devices: the listening side idle, and rounds of 100 sampled",
        "",
        f"Devices: {opts.per_host:,} per `many-host` process (benchmarks/dial_peers.py: asyncio + aiohttp client, "
        f"each device registered under its own name and token, long-polling `next?wait=30`; a job runs through "
        f"that device's own `DeviceApp` in a pool of 32 threads). Model: {opts.many_params:,} float32 parameters, "
        f"no-op training. The coordinator (`Listener` + `Federated(fraction=100/N)`) is one process; its figures "
        f"come from /proc/self {opts.idle:g} s after every device registered (RSS: +the growth over its RSS after "
        f"imports, before the Listener). Threads: the whole process's (main, the listener's event loop, the "
        f"benchmark's stdin watcher); tasks: the event loop's asyncio tasks. Round: median after a warm-up; "
        f"each round samples 100 devices at random, so most are new to the coordinator and cost it a "
        f"`GET /info` handshake first.",
        "",
        "| devices | coordinator RSS idle | threads | loop tasks | open fds | round, 100 sampled | peak RSS |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    return "\n".join(lines) + "\n", results


# ----------------------------------------------------------------- part 3: a payload cut at half


def part_resume(opts, logdir: Path) -> tuple[str, list]:
    from tests.support.proxy import CuttingProxy

    size_note = ""
    params = 25_000_000 if opts.quick else 250_000_000

    # coordinator: model + exact accumulator (~6.5 copies) + slack; device: model, the received one, its reply.
    def need(p: int) -> float:
        return p * 4 * (9 + 4) + 1 * GIB

    available = rb.mem_available()
    if not opts.quick and need(params) + opts.guard_gib * GIB > available:
        params = 125_000_000
        size_note = (
            f"Reduced from 1 GB to 512 MB: 1 GB needs ~{need(250_000_000) / GIB:.1f} GiB and "
            f"{available / GIB:.1f} GiB was available."
        )
    model_bytes = params * 4
    results = []
    for mode in ("resumed", "restarted"):
        print(f"[resume] {mb(model_bytes)} payload, upload cut at 50 %: {mode}", flush=True)
        out: dict = {"mode": mode}
        deadline = time.monotonic() + opts.peer_timeout
        with rb.Group(int(opts.guard_gib * GIB), logdir) as group:
            device = group.start(
                f"resume-{mode}-device", [sys.executable, str(PEERS), "fedsync-device", "--params", str(params)]
            )
            try:
                device_url = group.expect(device, deadline, "ready")["ready"][0]
                with CuttingProxy(device_url, direction="up", after=model_bytes // 2, times=1) as proxy:
                    argv = [
                        sys.executable,
                        str(DIAL_PEERS),
                        "resume-coordinator",
                        "--params",
                        str(params),
                        "--timeout",
                        str(opts.peer_timeout),
                        "--urls",
                        proxy.url,
                    ]
                    coordinator = group.start(
                        f"resume-{mode}-coordinator", argv + (["--restart"] if mode == "restarted" else [])
                    )
                    done = group.expect(coordinator, deadline, "done")
                    out.update(
                        status="ok",
                        seconds=done["seconds"],
                        attempts=done["attempts"],
                        resent=done["resent"],
                        resumes=done["resumes"],
                        up=proxy.forwarded["up"],
                        down=proxy.forwarded["down"],
                        cuts=proxy.cuts,
                        peak=done["peak"],
                    )
            except (rb.OutOfMemoryGuard, TimeoutError, RuntimeError) as exc:
                out.update(status="failed", note=f"{type(exc).__name__}: {exc}"[:400])
        results.append(out)
        print(f"  {out}", flush=True)
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append(f"| {r['mode']} | failed: {r['note']} | | | |")
            continue
        attempts = "; ".join(f"{secs(a['seconds'])}" + (" failed" if "failed" in a else "") for a in r["attempts"])
        rows.append(
            f"| {r['mode']} | {secs(r['seconds'])} ({attempts}) | {mb(r['up'])} up + {mb(r['down'])} down "
            f"= {(r['up'] + r['down']) / model_bytes:.2f} models | {mb(r['resent'])} in {r['resumes']} "
            f"resumption(s) | {r['cuts']} |"
        )
    lines = [
        f"### A {mb(model_bytes)} payload cut at 50 %: resumed against restarted",
        "",
        f"One direct-HTTP device process (peers.py `fedsync-device`, no-op training) behind tests/support/proxy.py's "
        f"`CuttingProxy`, which cuts the first connection whose upload (coordinator to device) passes half the "
        f"model ({mb(model_bytes // 2)}), once. **Resumed**: fedsync as it is: the coordinator asks `HEAD "
        f"{{rep}}/submit` how many bytes the device holds and sends the rest with `Upload-Offset`. **Restarted**: "
        f"the same coordinator with resumption turned off (`fedsync.transports._resume.MAX_RESUMES = 0` in its "
        f"process), so the break fails the device, the round raises `RoundFailed`, and the coordinator runs the "
        f"round again from zero, as a client without resumable transfers must. Time: from the first round's start "
        f"to the merged round; bytes: what crossed the proxy in each direction (the reply comes back whole in "
        f"both). {size_note}",
        "",
        "| transfer | time to finish (attempts) | bytes on the wire | re-sent (fedsync's count) | cuts |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    return "\n".join(lines) + "\n", results


# ----------------------------------------------------------------- RESULTS.md


def write_section(path: Path, header: str, parts: dict[str, str]) -> None:
    """Replace the Dial-out section's header and the given parts' subsections, keeping the rest of the file."""
    text = path.read_text() if path.exists() else ""
    start = text.find("\n" + SECTION + "\n")
    before, old = (text, "") if start < 0 else (text[: start + 1], text[start + 1 :])
    after = ""
    if old:
        end = old.find("\n# ", 1)
        old, after = (old, "") if end < 0 else (old[: end + 1], old[end + 1 :])
    kept: dict[str, str] = {}
    for chunk in old.split("\n<!-- part: ")[1:]:
        name, _, body = chunk.partition(" -->\n")
        kept[name] = body.rstrip("\n") + "\n"
    kept.update(parts)
    body = "".join(f"\n<!-- part: {name} -->\n{kept[name]}" for name in ("round", "many", "resume") if name in kept)
    section = f"{SECTION}\n\n{header.rstrip()}\n{body}"
    path.write_text(before.rstrip("\n") + "\n\n\n" + section.rstrip("\n") + "\n" + ("\n" + after if after else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=["round", "many", "resume"],
        action="append",
        help="run this part only (repeatable; default: all three)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, no Flower, nothing written")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="no new round after this many seconds")
    parser.add_argument("--peer-timeout", type=float, default=900.0, help="a measurement is stopped after this")
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill a run when MemAvailable falls under this")
    parser.add_argument("--many-params", type=int, default=10_000, help="model size of the many-devices part")
    parser.add_argument("--per-host", type=int, default=1000, help="dialed-in devices per host process")
    parser.add_argument("--sample", type=int, default=100, help="devices sampled per round in the many part")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before the listener is measured")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--flower-venv", default="", help="Flower's venv (default: benchmarks/.venv-flower)")
    parser.add_argument("--profile", default="", help="cProfile the dial coordinator's first measured round here")
    parser.add_argument(
        "--output", default="", help="Markdown file (default: benchmarks/RESULTS.md; none with --quick)"
    )
    parser.add_argument("--logs", default="", help="keep every process's stderr in this folder")
    opts = parser.parse_args(argv)
    opts.profile_at = None
    if opts.quick:
        opts.rounds, opts.no_flower, opts.idle = 2, True, 2.0
    if opts.flower_venv:
        flower_deployment.VENV_BIN = Path(opts.flower_venv) / "bin"
        rb.FLOWER_PYTHON = flower_deployment.VENV_BIN / "python"
    parts = opts.part or ["round", "many", "resume"]
    rb.Proc.env = {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    info = rb.machine()
    load_start = rb.loadavg()
    memory_start = rb.mem_available()
    written: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fedsync-dial-") as tmp:
        logdir = Path(opts.logs or tmp)
        logdir.mkdir(parents=True, exist_ok=True)
        runs = {"round": part_round, "many": part_many, "resume": part_resume}
        for part in parts:
            written[part] = runs[part](opts, logdir)[0]
            print(written[part], flush=True)
    load_end = rb.loadavg()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    header = "\n".join(
        [
            "Written by `benchmarks/dial.py` (issue #20); a part run alone (`--part`) rewrites only its own "
            "subsection.",
            "",
            "| machine | |",
            "|---|---|",
            f"| cpu | {info['cpu']} |",
            f"| memory | {info['memory']} ({memory_start / GIB:.1f} GiB available at start) |",
            f"| python, numpy | {info['python']}, {info['numpy']} |",
            f"| fedsync | commit {commit}{' + uncommitted changes' if rb.dirty() else ''} |",
            f"| flwr | {info['flwr']} |",
            f"| date | {info['date']} |",
            f"| load average | {load_start} at start, {load_end} at end (parts: {', '.join(parts)}) |",
            "",
            "The machine's 2 cores are shared with other engineers' jobs (tests, builds), so absolute times carry "
            "their noise.",
        ]
    )
    output = opts.output or ("" if opts.quick else str(HERE / "RESULTS.md"))
    if output:
        write_section(Path(output), header, written)
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
