"""Through nginx against direct (issue #21): the same devices, reached directly and through deploy/nginx/fedsync-proxy.conf.

    python benchmarks/nginx.py [--params 10000000] [--devices 8] [--rounds 5] [--quick]

Starts ``--devices`` real ``fedsync serve`` processes (tests/support/deploy_device.py: one float32 array of
``--params`` weights, no-op training) and one nginx (Debian's package) running the shipped config, one TLS server
block per device, as tests/support/nginx.py builds it for the tests. This process is the coordinator: it times
rounds straight to the devices (plain HTTP) and through nginx (HTTPS to nginx, HTTP/1.1 keep-alive to the device),
one path after the other, each with peers.py's ``Rounds`` and ``time_rounds`` (one
warm-up round, then the median). Prints both, and the ratio; writes the "Issue 21: through nginx" section of
benchmarks/RESULTS.md (other sections kept) unless ``--quick`` (1M x 2, a smoke run) or ``--no-write``.
Every process it starts is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from peers import Rounds, time_rounds  # noqa: E402  (benchmarks/peers.py: how every benchmark times rounds)

SECTION = "# Issue 21: through nginx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per path, after one warm-up")
    parser.add_argument("--workers", type=int, default=2, help="nginx worker processes (Debian's 'auto': one a core)")
    parser.add_argument("--quick", action="store_true", help="1M x 2, 2 rounds: a smoke run, not written")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    opts = parser.parse_args()
    if opts.quick:
        opts.params, opts.devices, opts.rounds = 1_000_000, 2, 2

    from fedsync import FedArrays, Federated, Remote
    from tests.support.nginx import Nginx, free_port, nginx_binary, proxy_config, start_fedsync
    from tests.support.processes import tls_files

    if nginx_binary() is None:
        raise SystemExit("nginx is not installed (Debian: apt-get install nginx-light)")
    started: list = []
    with tempfile.TemporaryDirectory(prefix="fedsync-nginx-bench-") as tmp:
        folder = Path(tmp)
        try:
            for i in range(opts.devices):
                started.append(
                    start_fedsync(folder / f"device{i}.log", "--host", "127.0.0.1", "--port", str(free_port()),
                                  device={"size": opts.params, "value": 0.5, "samples": 100})
                )  # fmt: skip
            cert, key, ca = tls_files(folder)
            addresses = [device.url.removeprefix("http://") for device in started]
            config, ports, _ = proxy_config(addresses, None, cert, key)
            started.append(Nginx(folder / "nginx", config, ports, workers=opts.workers))
            paths = {
                "direct": [Remote(device.url, timeout=120) for device in started[: opts.devices]],
                "nginx": [Remote(f"https://127.0.0.1:{port}", verify=ca, timeout=120) for port in ports],
            }
            algs = {name: Federated(FedArrays({"w": np.zeros(opts.params, np.float32)}), remotes, timeout=600)
                    for name, remotes in paths.items()}  # fmt: skip
            rounds = {name: Rounds(opts.rounds, budget=float("inf")) for name in paths}
            print(f"{opts.params:,} float32 params x {opts.devices} devices, {opts.rounds} rounds each", flush=True)
            # One path after the other, each a Federated of its own: a coordinator learns the devices' repetition
            # in its first handshake only, so two interleaved would submit repetitions the devices already took.
            for name, alg in algs.items():
                with alg, contextlib.redirect_stdout(io.StringIO()):  # peers.py's "@@" lines are for round.py
                    time_rounds(alg, rounds[name], opts.devices, None)
                print(f"  {name}: " + ", ".join(f"{t:.2f} s" for t in rounds[name].times), flush=True)
            errors = started[-1].errors()
        finally:
            for process in reversed(started):
                process.stop()
    medians = {name: statistics.median(r.times[1:]) for name, r in rounds.items()}
    ratio = medians["nginx"] / medians["direct"]
    print(f"direct: median {medians['direct']:.2f} s; through nginx: median {medians['nginx']:.2f} s; "
          f"nginx / direct = {ratio:.2f}x", flush=True)  # fmt: skip
    if "[error]" in errors:
        print(f"nginx logged errors:\n{errors}", flush=True)
    if not (opts.quick or opts.no_write):
        write_section(opts, rounds, medians, ratio)


def write_section(opts, rounds: dict, medians: dict, ratio: float) -> None:
    nginx = (
        subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().removeprefix("nginx version: ")
    )
    lines = [
        SECTION,
        "",
        f"{datetime.date.today():%Y-%m-%d}, `python benchmarks/nginx.py` on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}, {nginx}, {opts.workers} nginx workers). "
        f"{opts.params:,} float32 parameters x {opts.devices} `fedsync serve` device processes, no-op training; the "
        "coordinator in the benchmark's process, the direct rounds then those through nginx; median after one warm-up. "
        "Through nginx is the shipped `deploy/nginx/fedsync-proxy.conf` (TLS at nginx, HTTP/1.1 keep-alive to the device, "
        "buffering off): it adds TLS both ways and a second copy through a process on the same 2 cores.",
        "",
        "| path | median round | rounds (warm-up first) |",
        "|---|---|---|",
    ]
    for name, label in (("direct", 'direct HTTP (`Remote("http://device")`)'), ("nginx", "through nginx (HTTPS)")):
        times = ", ".join(f"{t:.2f}" for t in rounds[name].times)
        lines.append(f"| {label} | {medians[name]:.2f} s | {times} s |")
    lines += ["", f"Through nginx / direct: **{ratio:.2f}x**.", ""]
    path = HERE / "RESULTS.md"
    text = path.read_text()
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n# ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    path.write_text(text)
    print(f"wrote the {SECTION[2:]!r} section of {path}", flush=True)


if __name__ == "__main__":
    main()
