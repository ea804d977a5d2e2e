"""``fedsync serve TARGET --connect URL``: a device that dials out to a coordinator's listener (docs/dial-out.md).

The listening ``fedsync serve`` lives in ``cli/__init__.py``; this module adds the options of a device
behind NAT or a firewall, which opens outgoing connections only, and runs it until Ctrl-C, SIGTERM,
or a refusal (exit code 2: the message says whether the token or the name was refused).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import EXIT_USAGE, CommandError, UsageError, configure_logging
from ._process import say_how_to_stop, sigterm_as_exit

__all__ = ["DIAL_EXAMPLES", "add_dial_arguments", "dials", "run_dial"]

DIAL_EXAMPLES = """
A device behind NAT or a firewall dials out instead (outgoing HTTPS only); it
registers as NAME on the coordinator's listener, which must list NAME and its
token, and reconnects by itself when the coordinator restarts:
  fedsync serve device.py:data --connect https://coordinator:9000 --name site-a \\
      --token T --cafile ca.pem [--certfile site-a.pem --keyfile site-a-key.pem]
"""


class Refused(CommandError):
    """The listener refused this device: retrying cannot help, so the command stops with a usage error's code."""

    code = EXIT_USAGE


def add_dial_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--connect``, ``--name`` and ``--cafile`` options of ``fedsync serve``."""
    group = parser.add_argument_group(
        "dialing out",
        "a device behind NAT opens outgoing connections only; --certfile/--keyfile are then its client "
        "certificate (mutual TLS)",
    )
    group.add_argument("--connect", metavar="URL", help="dial this coordinator's listener, e.g. https://coord:9000")
    group.add_argument("--name", metavar="NAME", help="this device's name on the listener's allow-list, e.g. site-a")
    group.add_argument("--cafile", metavar="PEM", help="the CA that signed the listener's certificate (HTTPS)")


def dials(args: argparse.Namespace) -> bool:
    """Whether ``fedsync serve`` was asked to dial out (any of its dialing options given)."""
    return any(getattr(args, option) is not None for option in ("connect", "name", "cafile"))


def run_dial(args: argparse.Namespace, data: Any, token: str | None) -> int:
    """Dial ``args.connect`` as ``args.name`` until stopped; 0, or raises Refused (exit 2) when refused.

    Raises:
        UsageError: a dialing option missing, a listening option given, a file not found.
        Refused: the listener refused the token (401) or the name (403).
    """
    from ..device import RunningDialer, serve

    if args.connect is None:
        raise UsageError("--name and --cafile are for dialing out: add --connect URL (the coordinator's listener)")
    if args.name is None:
        raise UsageError("--connect needs --name: this device's name on the coordinator's allow-list, e.g. site-a")
    if token is None:
        raise UsageError(f"--connect needs --token (or $FEDSYNC_TOKEN): the token the listener holds for {args.name}")
    listening = [
        option
        for option, given in (
            ("--host", args.host != "127.0.0.1"),
            ("--port", args.port != 8000),
            ("--client-ca", args.client_ca is not None),
        )
        if given
    ]
    if listening:
        raise UsageError(f"{', '.join(listening)}: a device that dials out listens on nothing; drop them")
    for option, path in (("--cafile", args.cafile), ("--certfile", args.certfile), ("--keyfile", args.keyfile)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option} file not found: {path}; make the CA and certificates with: fedsync certs")
    if args.keyfile is not None and args.certfile is None:
        raise UsageError("--keyfile needs --certfile: give both for mutual TLS")
    cert = None if args.certfile is None else (args.certfile, args.keyfile or args.certfile)
    configure_logging(args.verbose)
    try:
        dialer = serve(
            data,
            connect=args.connect,
            state_dir=args.state_dir,
            name=args.name,
            token=token,
            verify=args.cafile if args.cafile is not None else True,
            cert=cert,
            block=False,
            max_content_length=args.max_content_length,
            secure_aggregation=args.secure_aggregation,
            peer_ca=args.peer_ca,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    assert isinstance(dialer, RunningDialer)  # serve(connect=..., block=False) returns one
    print(f"dialing {dialer.url} as {dialer.name}", flush=True)
    say_how_to_stop()
    try:
        with sigterm_as_exit():
            dialer.join()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        dialer.close()
    if dialer.error is not None:
        raise Refused(str(dialer.error))
    return 0
