"""A coordinator with a dial-out listener: the process docs/deployment.md runs under systemd and in Docker.

    python coordinator.py model.py:data --devices devices.json --rounds 10 [--host 0.0.0.0] [--port 9000]
        [--certfile proxy.pem --keyfile proxy-key.pem] [--checkpoint DIR]

MODULE:ATTR is the same FedData declaration the devices serve (``fedsync serve`` reads it the same way);
``devices.json`` is the allow-list, ``{"site-a": "token-a", ...}``. It waits until every listed device has dialed in
(``--wait`` seconds at most), then runs ``--rounds`` rounds over them and prints each round's summary. Without
``--certfile`` it speaks plain HTTP: run it behind a TLS proxy (deploy/nginx/fedsync-proxy.conf) on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedsync import Federated
from fedsync.cli import load_target
from fedsync.transports.dial import Listener


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator.py", description=__doc__.splitlines()[0])
    parser.add_argument("target", metavar="MODULE:ATTR", help="the FedData declaration, e.g. model.py:data")
    parser.add_argument("--devices", required=True, type=Path, help='JSON allow-list {"name": "token", ...}')
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept devices on every interface")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--certfile", help="TLS certificate (PEM) of the listener; plain HTTP without")
    parser.add_argument("--keyfile", help="its private key (PEM)")
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for every device to dial in")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a round may take")
    parser.add_argument("--checkpoint", help="folder for checkpoints: a restarted coordinator resumes from it")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data = load_target(args.target)
    devices = json.loads(args.devices.read_text())
    tls = (args.certfile, args.keyfile) if args.certfile else None
    with Listener(args.host, args.port, devices=devices, ssl_context=tls) as listener:
        print(f"listening on {listener.url} for {len(devices)} devices", flush=True)
        listener.wait_for(len(devices), timeout=args.wait)
        with Federated(data, listener.remotes(), timeout=args.timeout, checkpoint=args.checkpoint) as alg:
            for _ in range(args.rounds):
                result = alg.round()
                print(f"round {result.repetition}: {len(result.answered)} answered, {result.samples} samples, "
                      f"failures {result.failures}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
