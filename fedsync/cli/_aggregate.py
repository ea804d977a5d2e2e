"""``fedsync serve TARGET --aggregate URL,...``: serve an aggregator, a node of a tree (docs/aggregators.md).

TARGET is then the model's declaration, as the coordinator holds it (no ``train``). The device serves, or dials
out with ``--connect``, an :class:`~fedsync.aggregator.Aggregator` that runs a round over the devices below when
its parent's model arrives. Devices below that dial in reach it through a listener of its own
(``--aggregate-listen HOST:PORT`` with the allow-list in ``--aggregate-devices FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ._common import UsageError

__all__ = ["AGGREGATE_EXAMPLES", "add_aggregate_arguments", "aggregates", "aggregator_for"]

AGGREGATE_EXAMPLES = """
An aggregator (a node of a tree) serves the model's declaration and merges a
round of the devices below it each time its parent's model arrives:
  fedsync serve model.py:declaration --port 9001 \\
      --aggregate http://10.0.1.5:8000,http://10.0.1.6:8000 --aggregate-timeout 240
Devices below that dial in (dial://NAME) reach its own listener:
  fedsync serve model.py:declaration --connect https://top:9000 --name agg-1 --token T \\
      --aggregate dial://site-a,dial://site-b --aggregate-listen 0.0.0.0:9100 \\
      --aggregate-devices below.json      # {"site-a": "token-a", "site-b": "token-b"}
"""


def add_aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--aggregate`` options of ``fedsync serve``."""
    group = parser.add_argument_group(
        "aggregating (a node of a tree, docs/aggregators.md)",
        "TARGET is then the model's declaration without train; each round from the parent runs a round below",
    )
    group.add_argument("--aggregate", metavar="URL,...", help="the devices below, comma-separated")
    group.add_argument(
        "--aggregate-token", metavar="TOKEN", default=os.environ.get("FEDSYNC_AGGREGATE_TOKEN"),
        help="the bearer token of the devices below (default: $FEDSYNC_AGGREGATE_TOKEN)",
    )  # fmt: skip
    group.add_argument("--aggregate-cafile", metavar="PEM", help="the CA of the devices below (HTTPS)")
    group.add_argument(
        "--aggregate-timeout", metavar="S", type=float, default=300.0,
        help="the most seconds a round below takes (default 300); keep it below the parent's timeout",
    )  # fmt: skip
    group.add_argument("--aggregate-min", metavar="N", type=int, help="devices below that must answer (default: all)")
    group.add_argument(
        "--aggregate-empty", choices=("fail", "keep"), default="fail",
        help="when every device below reports 0 samples: fail (the default), or keep: answer an empty reply",
    )  # fmt: skip
    group.add_argument("--aggregate-listen", metavar="HOST:PORT", help="a listener for devices below that dial in")
    group.add_argument(
        "--aggregate-devices", metavar="FILE", help='the dial-in allow-list, JSON {"site-a": "token", ...}'
    )


def aggregates(args: argparse.Namespace) -> bool:
    """Whether ``fedsync serve`` was asked to serve an aggregator."""
    return args.aggregate is not None


def aggregator_for(args: argparse.Namespace, data: Any) -> Any:
    """The :class:`~fedsync.aggregator.Aggregator` of ``data`` over ``args.aggregate``.

    Raises:
        UsageError: no devices listed, a dial:// device without a listener, a file not found, or an
            argument the Aggregator refuses (a declaration with train, a strategy other than FedAvg).
    """
    from ..aggregator import Aggregator
    from ..transports.remote import Remote

    urls = [u.strip() for u in args.aggregate.split(",") if u.strip()]
    if not urls:
        raise UsageError(
            "--aggregate needs the devices below, e.g. --aggregate http://10.0.1.5:8000,http://10.0.1.6:8000"
        )
    verify: bool | str = True
    if args.aggregate_cafile is not None:
        if not Path(args.aggregate_cafile).is_file():
            raise UsageError(f"--aggregate-cafile not found: {args.aggregate_cafile}")
        verify = args.aggregate_cafile
    dialed = [u for u in urls if u.startswith("dial://")]
    listener = _listener(args) if dialed else None
    if dialed and listener is None:
        raise UsageError(
            f"{dialed[0]} dials in: give --aggregate-listen HOST:PORT and --aggregate-devices FILE for its listener"
        )
    remotes = []
    for url in urls:
        try:
            if url.startswith("dial://"):
                assert listener is not None  # checked above
                remotes.append(listener.remote(url.removeprefix("dial://")))
            else:
                remotes.append(Remote(url, token=args.aggregate_token, verify=verify))
        except ValueError as exc:
            raise UsageError(f"--aggregate {url}: {exc}") from None
    try:
        return Aggregator(
            data,
            remotes,
            timeout=args.aggregate_timeout,
            min_results=args.aggregate_min,
            empty_rounds=args.aggregate_empty,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot aggregate {args.target}: {exc}") from None


def _listener(args: argparse.Namespace) -> Any:
    """The listener for devices below that dial in, or ``None`` when ``--aggregate-listen`` is not given."""
    if args.aggregate_listen is None:
        return None
    from ..transports.dial import Listener

    host, _, port = args.aggregate_listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--aggregate-listen takes HOST:PORT, e.g. 0.0.0.0:9100; got {args.aggregate_listen!r}")
    if args.aggregate_devices is None or not Path(args.aggregate_devices).is_file():
        raise UsageError('--aggregate-listen needs --aggregate-devices FILE, JSON {"site-a": "token-a", ...}')
    try:
        devices = json.loads(Path(args.aggregate_devices).read_text())
        return Listener(host, int(port), devices=devices)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--aggregate-devices {args.aggregate_devices}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--aggregate-listen {args.aggregate_listen}: {exc}") from None
