"""Measure proposed core changes before making them: patched coordinators against (patched) devices.

    python benchmarks/experiments/run.py [--params 10000000] [--devices 8] [--device-variant npbuf,trust,stream] \
        HEAD pool,fma,finite1 pool,fma,finite1,dl2

Starts the devices once, then runs one coordinator process per variant against them
(``HEAD`` = unpatched), each printing a JSON line; this adds the devices' CPU per round.
Use ``--ref``-like isolation by setting PYTHONPATH to an extracted commit, e.g.
``git archive HEAD fedsync | tar -x -C /tmp/snap && PYTHONPATH=/tmp/snap python ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import round as bench  # noqa: E402  (benchmarks/round.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after the warm-up")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device-variant", default="", help="patches for the devices: npbuf, trust, stream")
    parser.add_argument("variants", nargs="+", help="coordinator patches, e.g. HEAD pool,fma,finite1,dl2")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="fedsync-experiments-"))
    with bench.Group(2 * bench.GIB, logdir) as group:
        deadline = time.monotonic() + 1200
        urls: list[str] = []
        for i in range(args.devices):
            argv = [sys.executable, str(HERE / "device.py"), args.device_variant, "fedsync-device", "--params", str(args.params)]
            urls += group.expect(group.start(f"device{i}", argv), deadline, "ready")["ready"]
        for _ in range(args.repeat):
            for variant in args.variants:
                before, busy_before = devices_cpu(group), machine_busy()
                out = subprocess.run(
                    [sys.executable, str(HERE / "coordinator.py"), "--params", str(args.params), "--rounds", str(args.rounds),
                     "--variant", "" if variant == "HEAD" else variant, "--urls", *urls],
                    capture_output=True, text=True, timeout=900, env={**os.environ, **bench.CHILD_ENV},
                )
                after, busy_after = devices_cpu(group), machine_busy()
                busy = (busy_after[0] - busy_before[0]) / max(1e-9, busy_after[1] - busy_before[1])
                print(out.stdout.strip() or out.stderr[-1500:],
                      f"devices cpu/round {(after - before) / (args.rounds + 1):.2f}s; machine busy {busy:.0%}", flush=True)


def devices_cpu(group: bench.Group) -> float:
    return group.cpu_seconds(exclude=None)


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = list(map(int, f.readline().split()[1:]))
    return sum(fields) - fields[3] - fields[4], sum(fields)


if __name__ == "__main__":
    main()
