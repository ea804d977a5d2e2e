"""Simulation side by side (issue #14): fedsync's run_simulation against Flower 1.42's, in one run.

Usage::

    bash benchmarks/setup_flower.sh        # once: benchmarks/.venv-flower with flwr[simulation] 1.42
    python benchmarks/simulation.py [--sizes 100,1000,10000] [--peers local,processes,ray,flower]
                                    [--rounds 10] [--framework numpy] [--profile]

The workload (benchmarks/sim_workload.py): scikit-learn's digits split non-IID over N
devices of 32 samples each, a 64-32-10 MLP in numpy or torch, one local epoch, FedAvg,
10 rounds; N=100 with fraction 1.0, N=1,000 with 0.1, N=10,000 with 0.01, so every round
trains 100 devices whatever N. Peers:

- ``local``: fedsync ``run_simulation`` on threads (``worker_kind="threads"``);
- ``processes``: the same on worker processes (``worker_kind="processes"``);
- ``ray``: ``run_simulation(..., backend="ray")`` (skipped, saying why, where fedsync has no Ray backend);
- ``flower``: Flower's ``flwr.simulation.run_simulation`` with its Ray backend (ClientApp/ServerApp,
  its FedAvg), in Flower's venv.

Each peer runs alone in its own process (benchmarks/sim_peers.py), with 2 CPUs (2 workers,
Ray ``num_cpus=2``) and ``OMP_NUM_THREADS=1``. Measured: seconds per round (median of rounds
2..R: round 1 is the warm-up), start-up (process start to round 1's start: imports, data,
workers, Ray), the whole process tree's peak RSS (sampled every 0.1 s over every descendant,
Ray's daemons included; shared libraries count once per process) and its peak PSS
(shared pages split between the processes that map them), the final model's test accuracy,
and the devices answering each round.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import sim_workload  # noqa: E402

FLOWER_PYTHON = HERE / ".venv-flower" / "bin" / "python"
ALL_PEERS = ["local", "processes", "ray", "flower"]
FRACTIONS = {100: 1.0, 1000: 0.1, 10000: 0.01}
MB = 1 << 20
SECTION = "# Simulation"  # one section per framework: "# Simulation (numpy)"


# ----------------------------------------------------------------- measuring a process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def tree_memory(root: int) -> tuple[int, int, int]:
    """``(rss, pss, processes)`` summed over ``root`` and all its descendants, in bytes."""
    children = _children()
    todo, rss, pss, count = [root], 0, 0, 0
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            count += 1
        except (OSError, ValueError):
            pass
    return rss, pss, count


class TreeSampler:
    """The peak memory of a process tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.rss = self.pss = self.processes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            rss, pss, count = tree_memory(self.pid)
            self.rss, self.pss, self.processes = max(self.rss, rss), max(self.pss, pss), max(self.processes, count)
            self.stop.wait(self.interval)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


# ----------------------------------------------------------------- running one peer


def ray_backend_missing() -> str | None:
    """Why fedsync's Ray peer cannot run here, or None."""
    from fedsync.coordinator.simulation import run_simulation

    if "backend" not in inspect.signature(run_simulation).parameters:
        return "fedsync's run_simulation has no backend= (the Ray backend has not landed on this branch)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed: pip install 'fedsync[ray]'"
    return None


def run_peer(peer: str, data: Path, n: int, args, profile: str = "") -> dict:
    """One simulation of ``peer`` on the prepared ``data``; its measurements (or ``{"skipped": why}``)."""
    if peer == "ray" and not args.ray_tree and (why := ray_backend_missing()):
        return {"skipped": why}
    if peer == "flower" and not FLOWER_PYTHON.exists():
        return {"skipped": f"no Flower venv at {FLOWER_PYTHON}: run bash benchmarks/setup_flower.sh"}
    python = str(FLOWER_PYTHON) if peer == "flower" else sys.executable
    role = ["flower"] if peer == "flower" else ["fedsync", "--kind", {"local": "threads"}.get(peer, peer)]
    argv = [python, str(HERE / "sim_peers.py"), *role, "--framework", args.framework, "--rounds", str(args.rounds),
            "--fraction", str(FRACTIONS.get(n, min(1.0, 100 / n))), "--workers", str(args.workers), "--seed", str(args.seed)]  # fmt: skip
    if profile:
        argv += ["--profile", profile]
    env = {
        **os.environ, "SIM_DATA": str(data), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        # Worker processes and Ray actors import sim_peers:device_fn; fedsync from this tree (or --ray-ref's).
        "PYTHONPATH": os.pathsep.join([args.ray_tree if peer == "ray" and args.ray_tree else str(ROOT), str(HERE)]),
    }  # fmt: skip
    log = Path(args.logs) / f"{peer}-{n}-{args.framework}.log"
    spawned = time.time()
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
        sampler = TreeSampler(proc.pid)
        try:
            out, _ = proc.communicate(timeout=args.peer_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        finally:
            sampler.close()
    finished = time.time()
    lines = [line[3:] for line in out.decode("utf-8", "replace").splitlines() if line.startswith("@@ ")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"failed": f"exit {proc.returncode}: {' | '.join(tail)[-300:]}"}
    result = json.loads(lines[-1])
    rounds = [end - start for start, end in zip(result["starts"], result["ends"])]
    return {
        "round": statistics.median(rounds[1:] or rounds), "rounds": rounds, "first": rounds[0],
        "startup": result["starts"][0] - spawned, "total": finished - spawned,
        "rss": sampler.rss, "pss": sampler.pss, "processes": sampler.processes,
        "accuracy": result["accuracy"], "answered": result.get("answered", []),
    }  # fmt: skip


# ----------------------------------------------------------------- report


def sampling_spread(data: Path, n: int, rounds: int, seeds: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of the final accuracy over ``seeds`` other samplings of 100 devices a round.

    Computed in this process with the same workload and plain FedAvg (numpy): how far two
    peers that sample different devices (fedsync and Flower do) may fairly differ.
    """
    import numpy as np

    wl = sim_workload.Workload(data)
    sampled = max(1, int(n * FRACTIONS.get(n, min(1.0, 100 / n))))
    finals = []
    for seed in range(1, seeds + 1):
        rng = np.random.default_rng([seed, 7])
        model = [a.copy() for a in wl.init]
        for _ in range(rounds):
            trained = []
            for device in rng.choice(n, sampled, replace=False):
                copy = [a.copy() for a in model]
                sim_workload.train_numpy(copy, *wl.shard(int(device)))
                trained.append(copy)
            model = [np.mean([t[k] for t in trained], axis=0) for k in range(len(model))]
        finals.append(sim_workload.accuracy(model, wl.x_test, wl.y_test))
    return float(np.mean(finals)), float(np.std(finals))



def profile_lines(path: str, top: int = 15) -> list[str]:
    """The ``top`` functions by own time, as pstats prints them."""
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(path, stream=text).sort_stats("tottime").print_stats(top)
    body = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(body) if "ncalls" in line), 0)
    return [line.rstrip() for line in body[max(0, start - 3) : start + top + 1] if line.strip()]


def cell(result: dict | None, key: str) -> str:
    if result is None:
        return "—"
    if "skipped" in result or "failed" in result:
        return "—"
    value = result[key]
    if key in ("rss", "pss"):
        return f"{value / MB:,.0f} MB"
    if key == "accuracy":
        return f"{value:.3f}"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def table(results: dict, sizes: list[int], peers: list[str]) -> list[str]:
    lines = [
        "| N (fraction) | peer | s/round (median, rounds 2..R) | round 1 | start-up | tree peak RSS (PSS) | processes | final accuracy | answered/round | ×faster than Flower | memory ÷ Flower (RSS) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        flower = results.get((n, "flower"))
        for peer in peers:
            r = results.get((n, peer))
            if r is None:
                continue
            if "skipped" in r or "failed" in r:
                lines.append(f"| {n:,} ({FRACTIONS.get(n, 100 / n):g}) | {peer} | {'skipped: ' + r['skipped'] if 'skipped' in r else 'FAILED: ' + r['failed']} |||||||||")
                continue
            ok = flower is not None and "round" in flower and peer != "flower"
            speed = f"{flower['round'] / r['round']:.1f}×" if ok else ""
            memory = f"{r['rss'] / flower['rss']:.2f}" if ok else ""
            answered = sorted(set(r["answered"]))
            lines.append(
                f"| {n:,} ({FRACTIONS.get(n, 100 / n):g}) | {peer} | {cell(r, 'round')} | {cell(r, 'first')} | {cell(r, 'startup')} | "
                f"{cell(r, 'rss')} ({cell(r, 'pss')}) | {r['processes']} | {cell(r, 'accuracy')} | {', '.join(map(str, answered))} | {speed} | {memory} |"
            )
    return lines


def target(results: dict) -> str:
    local, flower = results.get((1000, "local")), results.get((1000, "flower"))
    if not (local and flower and "round" in local and "round" in flower):
        return "- Target (N=1,000: local ≥ 5× faster per round than Flower, ≤ 1/4 of its memory): not measured in this run."
    speed, memory = flower["round"] / local["round"], local["rss"] / flower["rss"]
    met = speed >= 5 and memory <= 0.25
    return (
        f"- Target (N=1,000: local ≥ 5× faster per round than Flower, ≤ 1/4 of its memory): "
        f"{speed:.1f}× faster, {memory:.2f} of its peak RSS ({local['pss'] / flower['pss']:.2f} of its PSS) — {'met' if met else 'NOT met'}."
    )


def markdown(command: str, results: dict, sizes: list[int], peers: list[str], args, profile: list[str], load: tuple[str, str], spread: dict) -> str:
    lines = [
        f"{SECTION} ({args.framework})",
        "",
        "Written by `benchmarks/simulation.py` (see its docstring and benchmarks/README.md). "
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other engineers' jobs "
        f"(load average {load[0]} at start, {load[1]} at end); Python {platform.python_version()}; framework: {args.framework}; "
        f"{args.rounds} rounds; 2 workers per peer.",
        "",
        *table(results, sizes, peers),
        "",
        target(results),
        "- Accuracy: at N=100 every peer trains the same 100 devices each round and must end with the same model. "
        "At N ≥ 1,000 fedsync's peers share one sampling (same seed) and Flower samples other devices; "
        "the final accuracy over 10 other samplings (numpy FedAvg in-process) is "
        + (", ".join(f"N={n:,}: {mean:.3f} ± {sd:.3f}" for n, (mean, sd) in spread.items()) or "not computed")
        + ": a difference within about two of those standard deviations is sampling noise.",
    ]
    if profile:
        lines += ["", "Profile of fedsync's local peer at N=1,000 (cProfile of every thread, a separate run; top functions by own time):", "", "```", *profile, "```"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace ``text``'s section of ``path`` (its first line, up to the next top-level heading), keeping the others."""
    old = path.read_text() if path.exists() else ""
    start = old.find("\n" + text.splitlines()[0] + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n# ", start + 1)
    path.write_text(old[: start + 1] + text + (old[end:] if end >= 0 else ""))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000", help="device counts, e.g. 100,1000")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"subset of {','.join(ALL_PEERS)} (local: threads)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--framework", choices=["numpy", "torch"], default="numpy")
    parser.add_argument("--workers", type=int, default=2, help="workers per peer (Flower: Ray num_cpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also profile fedsync's local peer at N=1,000 (a separate run)")
    parser.add_argument("--peer-timeout", type=float, default=1800.0, help="a peer is killed after this many seconds")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"), help="Markdown file whose '# Simulation (FRAMEWORK)' section is replaced ('' for none)")
    parser.add_argument("--ray-ref", default="", help="run the ray peer on fedsync as committed at this git ref (e.g. a branch with backend='ray')")
    parser.add_argument("--logs", default="", help="keep every peer's stderr in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if unknown := set(peers) - set(ALL_PEERS):
        parser.error(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    work = Path(tempfile.mkdtemp(prefix="fedsync-sim-"))
    args.logs = args.logs or str(work)
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    args.ray_tree = ""
    if args.ray_ref:
        args.ray_tree = str(work / "ray-tree")
        Path(args.ray_tree).mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ray_ref], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", args.ray_tree], input=archive, check=True)
    command = "python benchmarks/simulation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = loadavg()
    results: dict = {}
    profile: list[str] = []
    spread: dict = {}
    for n in sizes:
        data = work / f"data-{n}"
        sim_workload.prepare(data, n, seed=args.seed)
        for peer in peers:
            print(f"N={n:,} {peer} ...", file=sys.stderr, flush=True)
            results[(n, peer)] = r = run_peer(peer, data, n, args)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "rounds"}
            print(f"  {shown}", file=sys.stderr, flush=True)
        if FRACTIONS.get(n, 1.0) < 1.0:
            spread[n] = sampling_spread(data, n, args.rounds)
        if args.profile and n == 1000:
            path = str(work / "local-1000.prof")
            run_peer("local", data, n, args, profile=path)
            profile = profile_lines(path)
    text = markdown(command, results, sizes, peers, args, profile, (load_start, loadavg()), spread)
    print(text)
    if args.output:
        write_section(Path(args.output), text)
        print(f"written to {args.output} (logs in {args.logs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
