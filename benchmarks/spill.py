"""Coordinator memory of a robust merge: FedMedian over many large replies, spilled to disk or held in RAM.

Usage::

    python benchmarks/spill.py [--replies 16] [--parameters 50000000] [--spill-mib 256]

Each measurement runs in a fresh process: ``FedArrays.merge`` (the coordinator's
real merge path, ``_aggregate_whole``) is handed the replies one at a time as
payload bytes, each built only when the merge asks for it and released before
the next (as a download would be), and a thread samples the process's resident
memory (``VmRSS``) every 20 ms. Two runs: ``spill`` (``spill_bytes`` set to
``--spill-mib``) and ``ram`` (a budget above the sum of the replies: every reply
kept in memory, as Flower keeps its results). Not a timed test: the figures are
printed, and docs/strategies.md records a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedsync import FedArrays
from fedsync.wire import codec  # noqa: E402
from fedsync.data.arrays import SAMPLES_KEY  # noqa: E402
from fedsync.strategies import FedMedian  # noqa: E402

MIB = 1 << 20


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def replies(count: int, parameters: int):
    """Payload bytes of one reply at a time: random float32 values written straight into the buffer."""
    rng = np.random.default_rng(0)
    header = codec.encode_frames({"w": np.zeros(parameters, np.float32)}, {SAMPLES_KEY: "1"})[0]  # calloc'd: never touched
    for _ in range(count):
        body = bytearray(len(header) + 4 * parameters)
        body[: len(header)] = header
        rng.random(parameters, dtype=np.float32, out=np.frombuffer(body, np.float32, offset=len(header)))
        yield body
        del body  # released before the next one is built


def measure(count: int, parameters: int, spill_bytes: int) -> dict:
    data = FedArrays({"w": np.zeros(parameters, np.float32)}, strategy=FedMedian(spill_bytes=spill_bytes))
    data.model["w"][...] = 0.5  # the model is resident, as a coordinator's is
    baseline = rss()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    data.merge(replies(count, parameters), 1)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss())
    return {"baseline": baseline, "peak": peak[0], "seconds": seconds, "median_mean": float(data.model["w"][:1000].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=16)
    parser.add_argument("--parameters", type=int, default=50_000_000)
    parser.add_argument("--spill-mib", type=int, default=256)
    parser.add_argument("--only", choices=["spill", "ram"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    reply_bytes = 4 * args.parameters
    budgets = {"spill": args.spill_mib * MIB, "ram": (args.replies + 1) * reply_bytes}
    if args.only:
        print(json.dumps(measure(args.replies, args.parameters, budgets[args.only])))
        return
    total = args.replies * reply_bytes
    print(f"FedMedian over {args.replies} replies of {args.parameters:,} float32 parameters "
          f"({reply_bytes / MIB:,.0f} MiB each, {total / MIB:,.0f} MiB in all)")
    print(f"{'mode':6} {'spill_bytes':>12} {'RSS before':>11} {'peak RSS':>9} {'peak - before':>14} {'of replies':>11} {'seconds':>8}")
    for mode in ("spill", "ram"):
        run = subprocess.run([sys.executable, __file__, "--replies", str(args.replies), "--parameters", str(args.parameters),
                              "--spill-mib", str(args.spill_mib), "--only", mode], capture_output=True, text=True, check=True)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        grown = r["peak"] - r["baseline"]
        print(f"{mode:6} {budgets[mode] / MIB:9,.0f} MiB {r['baseline'] / MIB:7,.0f} MiB {r['peak'] / MIB:5,.0f} MiB "
              f"{grown / MIB:10,.0f} MiB {grown / total:10.0%} {r['seconds']:8.1f}")


if __name__ == "__main__":
    main()
