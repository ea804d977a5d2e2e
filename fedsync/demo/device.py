"""A demo device process: ``python -m fedsync.demo device SHARD ...``.

Serves its shard's model on loopback, prints ``READY <url> <pid>`` once
serving, and exits as soon as its standard input closes, so a coordinator that
dies for any reason (even ``kill -9``) leaves no device behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import numpy as np

from ..device import serve
from .data import load_shard
from .models import choose_backend

__all__ = ["main"]


def _exit_when_parent_goes() -> None:
    # The coordinator holds the other end of our stdin; EOF means it is gone.
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader
    # holds its lock and aborts the interpreter's shutdown.
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedsync.demo device",
        description="One device of `fedsync demo` (started by the demo; not meant to be run by hand).",
    )
    parser.add_argument("shard", help="this device's private data, a .safetensors file with arrays x and y")
    parser.add_argument("--adapter", default="numpy", help="backend: numpy, torch or keras")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="this device's number, for its shuffling seed")
    parser.add_argument("--parent", type=int, default=None, help="the coordinator's pid (names the process)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    threading.Thread(target=_exit_when_parent_goes, name="fedsync-demo-watchdog", daemon=True).start()
    backend = choose_backend(args.adapter)
    shard = load_shard(args.shard)
    rng = np.random.default_rng([args.seed, args.index])

    def train(model):
        loss, accuracy = backend.fit(model, shard.x, shard.y, args.epochs, rng)
        return len(shard.y), {"loss": loss, "accuracy": accuracy}

    server = serve(backend.fed(backend.build(args.seed), train), host=args.host, port=0, block=False)
    assert server is not None  # serve(block=False) returns the running server; None only when it blocks
    print(f"READY {server.url} {os.getpid()}", flush=True)
    # Nobody reads our stdout after READY: anything a framework prints later goes to the log.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        server.join()
    except KeyboardInterrupt:
        server.close()
    return 0
