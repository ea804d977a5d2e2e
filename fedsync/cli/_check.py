"""``fedsync check URL``: run docs/protocol.md's checks against any device implementation.

One line per check, ``PASS``, ``FAIL`` or ``SKIP``; each failure names the docs/protocol.md section it
breaks (its anchor). Exit 0 when every required check passes, 1 otherwise. Every request has a timeout and
the whole run a deadline. It sends malformed requests on purpose, so it speaks HTTP through ``requests``
directly rather than through :class:`fedsync.transports.remote.Remote`, which would refuse to.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ._check_cases import run_all
from ._check_probe import DOC, SECTIONS, Checker
from ._common import CommandError, Formatter, UsageError, device_url

__all__ = ["add_check_command", "CHECK_HELP", "run_checks"]

CHECK_HELP = """\
Check a device against docs/protocol.md: the handshake, the specs rule, a
submit/result round trip with a known payload, error codes and JSON bodies for
malformed requests, long-poll and wait, evaluate (optional), and the token.
Prints one line per check (PASS, FAIL or SKIP), each failure with the section of
docs/protocol.md it breaks. Exit 0 when every required check passes, else 1.
The run submits one repetition to the device (its training runs once).

examples:
  fedsync check http://127.0.0.1:8000
  fedsync check https://device.lan:8000/model --cafile cert.pem --token s3cret
"""


def run_checks(checker: Checker) -> bool:
    """Run every check (:mod:`fedsync.cli._check_cases`); ``True`` when no required check failed."""
    try:
        run_all(checker)
    finally:
        checker.close()
    return not any(o.verdict == "FAIL" for o in checker.outcomes)


def add_check_command(commands: Any) -> None:
    """Add ``fedsync check URL`` to the ``fedsync`` parser."""
    parser = commands.add_parser(
        "check", help="check a device against the protocol", description=CHECK_HELP, formatter_class=Formatter,
    )  # fmt: skip
    parser.add_argument("url", help="the device's URL (http:// is assumed when no scheme is given)")
    parser.add_argument(
        "--token", default=os.environ.get("FEDSYNC_TOKEN"), metavar="TOKEN",
        help="the device's token (default: $FEDSYNC_TOKEN); also checks that requests without it are refused",
    )  # fmt: skip
    parser.add_argument("--cafile", metavar="PEM", help="trust this certificate (or CA) for https")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="seconds per request")
    parser.add_argument(
        "--deadline", type=float, default=120.0, metavar="SECONDS", help="seconds the whole run may take"
    )
    parser.add_argument("--json", action="store_true", help="print the outcomes as one JSON list instead")
    parser.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    url = device_url(args.url)
    if not (args.timeout > 0 and args.deadline > 0):
        raise UsageError("--timeout and --deadline must be positive numbers of seconds")
    if args.cafile and not Path(args.cafile).is_file():
        raise UsageError(f"--cafile {args.cafile!r} is not a file; give the device's PEM certificate or its CA")
    token = args.token.strip() if args.token else None
    checker = Checker(url, token=token, verify=args.cafile or True, timeout=args.timeout, deadline=args.deadline)
    if not args.json:
        checker.report = lambda outcome: print(outcome.line(), flush=True)
    ok = run_checks(checker)
    counts = {v: sum(o.verdict == v for o in checker.outcomes) for v in ("PASS", "FAIL", "SKIP")}
    if args.json:
        print(json.dumps([o.__dict__ | {"anchor": f"{DOC}#{SECTIONS[o.section]}"} for o in checker.outcomes]))
    else:
        print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped: {url}")
    if not checker.outcomes or checker.outcomes[0].verdict == "FAIL" and len(checker.outcomes) == 1:
        raise CommandError(
            f"{url} did not answer a handshake: {checker.outcomes[0].detail if checker.outcomes else ''}"
        )
    return 0 if ok else 1
