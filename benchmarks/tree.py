"""A tree of aggregators against the flat round (issue #21): what the top coordinator spends, 64 devices.

    python benchmarks/tree.py [--devices 64] [--fanout 8] [--params 100000] [--rounds 10] [--quick] [--no-write]

Starts ``--devices`` device processes (this file's ``device`` role: a float32 model of ``--params`` parameters
over peers.py's six layer-like arrays; ``train`` copies in values fixed by the device's index and returns
``10 + index`` samples), then measures, in the same run and over the same devices:

- flat: a top coordinator over all the devices;
- tree: ``devices / fanout`` aggregators, each ``python -m fedsync serve benchmarks/tree.py:declaration
  --aggregate URL,... --aggregate-timeout S`` over ``fanout`` of the devices (the one line of
  docs/aggregators.md), and a top coordinator over the aggregators.

Each top coordinator is a fresh process of its own (this file's ``top`` role, timing its rounds with peers.py's
``Rounds`` and ``time_rounds``): its round time (median after one warm-up round), its own CPU seconds (getrusage,
user + system, summed over the measured rounds and per round), its peak RSS (VmHWM) and that peak minus its RSS
after imports. The devices' and the aggregators' CPU over the same rounds come from /proc/<pid>/stat.
Flat rounds run first, then the tree's: two coordinators cannot interleave over the same devices (each device
accepts a repetition once), and the aggregators continue above the devices' last repetition by themselves.
Both end with the same model (the sample-weighted mean of the devices' values), checked to float rounding.

On a 2-core machine the 70-odd processes share the cores: the figures measure the top coordinator's own costs,
not the wall-clock speed-up a tree gives when its aggregators run on machines of their own.

Every process started is in its own process group, killed at the end whatever happens; devices also exit when
this benchmark's pipe to their stdin closes. ``--quick``: 16 devices as 4 x 4, 3 measured rounds, not written.
Without ``--quick`` or ``--no-write`` the "Issue 21: a tree of aggregators" section of benchmarks/RESULTS.md is
replaced (other sections kept).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))  # this checkout's fedsync, as the other benchmarks do

import numpy as np  # noqa: E402
import peers  # noqa: E402  (benchmarks/peers.py: model, emit, Rounds, time_rounds, memory readings)

SECTION = "# Issue 21: a tree of aggregators"
PARAMS_ENV = "FEDSYNC_TREE_PARAMS"  # the aggregators' declaration size (they import this file through the CLI)
MB = 1e6


def samples_of(index: int) -> int:
    """Device ``index``'s sample count: unequal, so the merge's weights matter."""
    return 10 + index


def values_of(params: int, index: int) -> dict[str, np.ndarray]:
    """What device ``index``'s train sets its model to."""
    return peers.model(params, seed=1000 + index)


def __getattr__(name: str):
    """``tree.py:declaration`` for ``fedsync serve --aggregate``: the model as the coordinator holds it (no train)."""
    if name == "declaration":
        from fedsync import FedArrays

        return FedArrays(peers.model(int(os.environ[PARAMS_ENV])))
    raise AttributeError(name)


# ----------------------------------------------------------------- roles (child processes)


def device_role(args) -> None:
    import fedsync

    target, samples = values_of(args.params, args.index), samples_of(args.index)

    def train(model):
        for name, values in target.items():
            model[name][...] = values
        return samples

    server = fedsync.serve(fedsync.FedArrays(peers.model(args.params), train), host=peers.HOST, port=0, block=False)
    assert server is not None  # block=False returns the running server
    peers.emit(ready=[server.url], pid=os.getpid())
    try:
        peers.wait_for_stdin_eof()
    finally:
        server.close()


def top_role(args) -> None:
    import fedsync  # noqa: F401  (imported before the baseline is read)
    from fedsync import FedArrays, Federated, Remote

    peers.report_start(args.params)
    data = FedArrays(peers.model(args.params))
    remotes = [Remote(url, timeout=args.timeout) for url in args.urls]
    rounds = peers.Rounds(args.rounds, args.budget)
    with Federated(data, remotes, timeout=args.timeout) as alg:
        peers.time_rounds(alg, rounds, len(remotes), None)
        failures = [dict(r.failures) for r in alg.history.rounds if r.failures]
    peers.report_done(rounds)
    arrays: dict[str, Any] = dict(data.get_arrays())
    np.savez(args.save, **arrays)  # after the measurements: the model both shapes must agree on
    peers.emit(saved=args.save, failures=failures)


# ----------------------------------------------------------------- the benchmark


def processes():
    """round.py's process groups, each child in a process group of its own (dial.py's GroupProc)."""
    import dial  # its GroupProc: a child in a process group of its own, killed with everything it started
    import round as rb

    class TreeProc(dial.GroupProc):
        """Also turns ``fedsync serve``'s ``serving URL`` line into a ``{"ready": [URL]}`` message."""

        def _read(self) -> None:
            import json

            assert self.popen.stdout is not None  # started with stdout=PIPE
            for raw in self.popen.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("@@ "):
                    self.messages.put(json.loads(line[3:]))
                elif line.startswith("serving "):
                    self.messages.put({"ready": [line.split()[1]], "pid": self.popen.pid})
                else:
                    self.tail.append(line)
            self.messages.put(None)

    class TreeGroup(rb.Group):
        def start(self, name: str, argv: list[str]):
            proc = TreeProc(name, argv, self.logdir)
            self.procs.append(proc)
            return proc

    return rb, TreeGroup


def cpu_of(procs) -> float:
    """User + system CPU seconds used so far by ``procs`` (peers.process_cpu of their pids)."""
    return peers.process_cpu(proc.popen.pid for proc in procs)


def run_top(group, name: str, urls: list[str], opts, logdir: Path, others: dict[str, list]) -> dict:
    """One top coordinator over ``urls`` in a fresh process; its figures, and ``others``' CPU meanwhile."""
    save = str(logdir / f"{name}.npz")
    argv = [sys.executable, __file__, "top", "--params", str(opts.params), "--rounds", str(opts.rounds),
            "--budget", str(opts.budget), "--timeout", str(opts.timeout), "--save", save, "--urls", *urls]  # fmt: skip
    deadline = time.monotonic() + opts.deadline
    top = group.start(f"top-{name}", argv)
    start = group.expect(top, deadline, "baseline")
    cpu_before = {key: cpu_of(procs) for key, procs in others.items()}
    while "done" not in (message := group.expect(top, deadline, "round", "done")):
        print(
            f"  {name} round {message['round']}: {message['seconds']:.2f} s, top CPU {message['cpu']:.2f} s", flush=True
        )
        if message["round"] == 1:  # the warm-up is over
            cpu_before = {key: cpu_of(procs) for key, procs in others.items()}
    others_cpu = {key: cpu_of(procs) - cpu_before[key] for key, procs in others.items()}
    saved = group.expect(top, deadline, "saved")
    rounds = [m for m in top.seen if "round" in m]
    measured = rounds[1:] or rounds
    top.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
    return {
        "times": message["times"],
        "median": message["median"],
        "cpu_total": sum(m["cpu"] for m in measured),
        "cpu_round": statistics.median(m["cpu"] for m in measured),
        "measured": len(measured),
        "baseline": start["baseline"],
        "peak": message["peak"],
        "others_cpu": others_cpu,
        "failures": saved["failures"],
        "model": dict(np.load(saved["saved"])),
    }


def start_all(group, name: str, argvs: list[list[str]], deadline: float, batch: int = 8) -> list:
    """Start processes a few at a time (their imports are CPU-bound); each with its first ready URL."""
    procs = []
    for first in range(0, len(argvs), batch):
        started = [group.start(f"{name}{i}", argv) for i, argv in enumerate(argvs[first : first + batch], first)]
        for proc in started:
            proc.url = group.expect(proc, deadline, "ready")["ready"][0]
        procs += started
    return procs


def benchmark(opts, logdir: Path) -> dict:
    rb, TreeGroup = processes()
    results: dict = {}
    with TreeGroup(int(opts.guard_gib * rb.GIB), logdir) as group:
        try:
            deadline = time.monotonic() + opts.deadline
            print(f"starting {opts.devices} devices ({opts.params:,} float32 parameters each)", flush=True)
            devices = start_all(
                group,
                "device",
                [[sys.executable, __file__, "device", "--params", str(opts.params), "--index", str(i)]
                 for i in range(opts.devices)],
                deadline,
            )  # fmt: skip
            urls = [d.url for d in devices]
            print(f"flat: a top coordinator over {len(urls)} devices", flush=True)
            results["flat"] = run_top(group, "flat", urls, opts, logdir, {"devices": devices})
            os.environ[PARAMS_ENV] = str(opts.params)  # the children inherit it: the aggregators' declaration size
            aggregators = start_all(
                group,
                "aggregator",
                [[sys.executable, "-m", "fedsync", "serve", f"{__file__}:declaration", "--host", peers.HOST,
                  "--port", "0", "--aggregate", ",".join(urls[first : first + opts.fanout]),
                  "--aggregate-timeout", str(opts.aggregate_timeout)]
                 for first in range(0, len(urls), opts.fanout)],
                time.monotonic() + opts.deadline,
            )  # fmt: skip
            print(f"tree: a top coordinator over {len(aggregators)} aggregators x {opts.fanout} devices", flush=True)
            results["tree"] = run_top(
                group,
                "tree",
                [a.url for a in aggregators],
                opts,
                logdir,
                {"devices": devices, "aggregators": aggregators},
            )
        finally:
            group.kill_all()
    return results


# ----------------------------------------------------------------- report


def expected_model(params: int, devices: int) -> dict[str, np.ndarray]:
    """The sample-weighted mean of every device's values, in float64."""
    total = sum(samples_of(i) for i in range(devices))
    out = {name: np.zeros(a.shape, np.float64) for name, a in peers.model(params).items()}
    for i in range(devices):
        for name, values in values_of(params, i).items():
            out[name] += values.astype(np.float64) * samples_of(i)
    return {name: a / total for name, a in out.items()}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)))) for name in a)


def table(opts, results: dict) -> tuple[list[str], dict]:
    flat, tree = results["flat"], results["tree"]
    expected = expected_model(opts.params, opts.devices)
    check = {
        "flat_vs_expected": max_difference(flat["model"], expected),
        "tree_vs_expected": max_difference(tree["model"], expected),
        "tree_vs_flat": max_difference(tree["model"], flat["model"]),
    }
    aggregators = opts.devices // opts.fanout

    def row(label: str, r: dict, extra: str) -> str:
        return (
            f"| {label} | {r['median']:.3f} s | {r['cpu_total']:.2f} s ({r['cpu_round']:.3f} s/round) | "
            f"{r['peak'] / MB:.0f} MB | +{(r['peak'] - r['baseline']) / MB:.1f} MB | {extra} | "
            + ", ".join(f"{t:.2f}" for t in r["times"])
            + " s |"
        )

    lines = [
        "| top coordinator over | round (median) | top CPU, measured rounds (per round) | top peak RSS "
        "| peak − RSS after imports | CPU of the rest, measured rounds | rounds (warm-up first) |",
        "|---|---|---|---|---|---|---|",
        row(f"{opts.devices} devices (flat)", flat, f"devices {flat['others_cpu']['devices']:.2f} s"),
        row(
            f"{aggregators} aggregators × {opts.fanout} devices (tree)",
            tree,
            f"aggregators {tree['others_cpu']['aggregators']:.2f} s, devices {tree['others_cpu']['devices']:.2f} s",
        ),
    ]
    ratios = {
        "time": tree["median"] / flat["median"],
        "cpu": tree["cpu_total"] / flat["cpu_total"],
        "growth": (tree["peak"] - tree["baseline"]) / max(1, flat["peak"] - flat["baseline"]),
        "peak": tree["peak"] / flat["peak"],
        "all_cpu": (tree["cpu_total"] + sum(tree["others_cpu"].values()))
        / (flat["cpu_total"] + sum(flat["others_cpu"].values())),
    }
    lines += [
        "",
        f"Tree / flat, the top coordinator: round time **{ratios['time']:.2f}×**, CPU **{ratios['cpu']:.2f}×**, "
        f"peak RSS {ratios['peak']:.2f}× (growth over its baseline {ratios['growth']:.2f}×). "
        f"All processes' CPU (top + aggregators + devices), tree / flat: {ratios['all_cpu']:.2f}×.",
        "",
        f"Per reply it merges, the top spends {flat['cpu_round'] / opts.devices * 1000:.1f} ms of CPU flat "
        f"({opts.devices} replies a round) and {tree['cpu_round'] / aggregators * 1000:.1f} ms in the tree "
        f"({aggregators}): its CPU follows the number of replies it handles, which the tree divides by "
        f"{opts.fanout}. Its memory hardly depends on that number (each reply is folded in as it downloads), so "
        "the tree changes it little.",
        "",
        f"Same model both ways: the largest difference from the float64 weighted mean of the devices' values is "
        f"{check['flat_vs_expected']:.1e} (flat) and {check['tree_vs_expected']:.1e} (tree); tree against flat "
        f"{check['tree_vs_flat']:.1e}. Rounds with a failure: flat {len(flat['failures'])}, tree "
        f"{len(tree['failures'])}.",
    ]
    return lines, ratios


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_section(opts, lines: list[str], command: str, load: str) -> None:
    header = [
        SECTION,
        "",
        f"{datetime.date.today():%Y-%m-%d}, `{command}` on {os.cpu_count()} cores shared with other jobs "
        f"({platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}; load averages "
        f"{load}, this run's own processes included). {opts.devices} device processes, {opts.params:,} float32 "
        f"parameters ({opts.params * 4 / MB:.1f} MB) in peers.py's six arrays; each device's train copies in "
        f"fixed values and returns 10 + its index samples. Flat: one top coordinator over the {opts.devices} "
        f"devices. Tree: {opts.devices // opts.fanout} `fedsync serve tree.py:declaration --aggregate URL,... "
        f"--aggregate-timeout {opts.aggregate_timeout:g}` processes over {opts.fanout} devices each, and a top "
        "coordinator over them. Each top coordinator is a fresh process (its own peak RSS); flat rounds first, then "
        f"the tree's; one warm-up round then {opts.rounds} measured, median. CPU is user + system from getrusage "
        "(top) and /proc/<pid>/stat (the rest), summed over the measured rounds.",
        "",
        f"**{os.cpu_count()} cores for {opts.devices + opts.devices // opts.fanout + 1} processes**: the aggregators "
        "and devices run on the same cores as the top, so these figures measure the top coordinator's own costs "
        "(CPU, memory, the replies it handles), not the wall-clock speed-up of a tree whose aggregators have "
        "machines of their own. A tree adds a hop, so on one machine it does more work in all.",
        "",
    ]
    path = HERE / "RESULTS.md"
    text = path.read_text()
    body = "\n".join(header + lines) + "\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n# ", start + len(SECTION))
        text = text[:start] + body + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
    print(f"wrote the {SECTION[2:]!r} section of {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("device", "top"):
        role = argparse.ArgumentParser()
        role.add_argument("role")
        role.add_argument("--params", type=int, required=True)
        role.add_argument("--index", type=int, default=0)
        role.add_argument("--urls", nargs="*", default=[])
        role.add_argument("--rounds", type=int, default=5)
        role.add_argument("--budget", type=float, default=300.0)
        role.add_argument("--timeout", type=float, default=120.0)
        role.add_argument("--save", default="")
        args = role.parse_args(argv)
        (device_role if args.role == "device" else top_role)(args)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--fanout", type=int, default=8, help="devices under each aggregator")
    parser.add_argument("--params", type=int, default=100_000, help="float32 parameters of the model")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds after one warm-up, per shape")
    parser.add_argument("--budget", type=float, default=240.0, help="no new round of a shape after this many seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="the top coordinators' round timeout (s)")
    parser.add_argument("--aggregate-timeout", type=float, default=90.0, help="the aggregators' round timeout (s)")
    parser.add_argument("--deadline", type=float, default=600.0, help="the most seconds a shape's run may take")
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill everything under this much free memory")
    parser.add_argument("--quick", action="store_true", help="16 devices as 4 x 4, 3 measured rounds; not written")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.devices, opts.fanout, opts.rounds = 16, 4, 3
    if opts.devices % opts.fanout:
        parser.error(f"--devices {opts.devices} is not a multiple of --fanout {opts.fanout}")
    if opts.aggregate_timeout >= opts.timeout:
        parser.error("--aggregate-timeout must be below --timeout (docs/aggregators.md, Deadlines)")
    command = "python " + " ".join(["benchmarks/tree.py", *argv])
    # SIGTERM unwinds like Ctrl-C, through benchmark()'s finally: every process group started is killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started, load_before = time.monotonic(), loadavg()
    with tempfile.TemporaryDirectory(prefix="fedsync-tree-bench-") as tmp:
        results = benchmark(opts, Path(tmp))
    load = f"{load_before} before, {loadavg()} after"
    lines, _ = table(opts, results)
    print(f"\n{os.cpu_count()} cores shared by all {opts.devices + opts.devices // opts.fanout + 1} processes: "
          "the top coordinator's own costs, not a wall-clock speed-up.\n", flush=True)  # fmt: skip
    print("\n".join(lines), flush=True)
    print(f"\n(whole run: {time.monotonic() - started:.0f} s)", flush=True)
    if not (opts.quick or opts.no_write):
        write_section(opts, lines, command, load)


if __name__ == "__main__":
    main()
