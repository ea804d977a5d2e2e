"""``fedsync info URL``: a device's handshake, shown safely whatever the device answers."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._util.checks import is_number
from .._util.json import shown
from ._common import CommandError, Formatter, UsageError, device_url

__all__ = ["add_info_command", "INFO_HELP"]


INFO_HELP = """\
Show a device's handshake: protocol and fedsync versions, specs, state, last
repetition, rounds served and its model's weights.

examples:
  fedsync info http://127.0.0.1:8000
  fedsync info 127.0.0.1:8000/model       # a FedData served under /model
  fedsync info https://device.lan:8000 --cafile cert.pem --token s3cret --json
"""


def add_info_command(commands: Any) -> None:
    """Add ``fedsync info URL`` to the ``fedsync`` parser."""
    parser = commands.add_parser(
        "info", help="show a device's handshake", description=INFO_HELP, formatter_class=Formatter,
    )  # fmt: skip
    parser.add_argument("url", help="the device's URL (http:// is assumed when no scheme is given)")
    parser.add_argument(
        "--token",
        default=os.environ.get("FEDSYNC_TOKEN"),
        metavar="TOKEN",
        help="the device's token (default: $FEDSYNC_TOKEN)",
    )
    parser.add_argument(
        "--cafile",
        metavar="PEM",
        help="trust this certificate (e.g. the device's self-signed --certfile, or the CA of fedsync certs) for https",
    )
    parser.add_argument(
        "--cert", metavar="PEM", help="mutual TLS: this coordinator's certificate (fedsync certs coordinator)"
    )
    parser.add_argument("--key", metavar="PEM", help="mutual TLS: the certificate's private key")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="seconds to wait for an answer")
    parser.add_argument("--json", action="store_true", help="print the raw JSON handshake")
    parser.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from ..errors import RemoteError, RemoteTimeout, RemoteUnavailable
    from ..transports.remote import Remote

    url = device_url(args.url)
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.cafile and not Path(args.cafile).is_file():
        raise UsageError(
            f"--cafile {args.cafile!r} is not a file; give the PEM certificate the device serves with, or its CA"
        )
    cert = (args.cert, args.key) if args.key else args.cert

    def connect(url: str) -> Remote:
        """A remote for ``url`` with this command's token, TLS files and timeout."""
        return Remote(url, timeout=args.timeout, token=args.token, retries=0, verify=args.cafile or True, cert=cert)

    try:
        remote = connect(url)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    with remote:
        try:
            infos = _device_infos(remote, connect)
        except RemoteUnavailable as exc:
            if not exc.reason.startswith("cannot connect"):  # TLS and HTTP failures say what they are
                raise CommandError(_as_flags(remote.scrub(str(exc)))) from None
            raise CommandError(
                f"cannot connect to {url}: is a device serving there? (start one with: fedsync serve MODULE:ATTR)"
            ) from None
        except RemoteTimeout:
            raise CommandError(
                f"{url} did not answer within {args.timeout:g}s; is it a fedsync device? (try --timeout)"
            ) from None
        except RemoteError as exc:
            raise CommandError(remote.scrub(str(exc))) from None  # a device may echo the token it was sent
    if args.json:
        print(json.dumps(infos if len(infos) > 1 or "" not in infos else infos[""], indent=2))
        return 0
    for base, info in infos.items():
        print(_format_info(f"{url}/{base}" if base else url, info))
    return 0


def _device_infos(remote: Any, connect: Callable[[str], Any]) -> dict[str, dict[str, Any]]:
    """``{"": info}`` for a single FedData, ``{name: info}`` for a device serving several
    (each reached with ``connect(url)``, as ``remote`` was)."""
    from ..errors import RemoteError

    try:
        return {"": remote.info()}
    except RemoteError as exc:
        if "no specs" not in str(exc):
            raise
    # A device with several FedData answers /info with an index of its bases.
    from ..wire.transfer import Deadline

    deadline = Deadline.within(remote.timeout)  # the index and every base's handshake together
    index = remote.get_json("/info", deadline=deadline, what="/info")  # bounded in size and time
    bases = index.get("bases") if isinstance(index, dict) else None
    if not bases or not isinstance(bases, list):
        raise RemoteError(remote.url, "/info answered no specs and no bases; is this a fedsync device?")
    # A device's bases are the names of its dict of FedData (see serve): a few words, never paths.
    if len(bases) > MAX_BASES or not all(
        isinstance(b, str) and 0 < len(b) <= 200 and "/" not in b and b.isprintable() for b in bases
    ):
        raise RemoteError(
            remote.url,
            f"/info answered {len(bases)} bases, not a list of at most {MAX_BASES} names; is this a fedsync device?",
        )
    infos = {}
    for base in bases:
        with connect(f"{remote.url}/{base}") as sub:
            infos[base] = sub.info(deadline=deadline)
    return infos


MAX_BASES = 256
"""The most named bases ``fedsync info`` asks a device about."""


def _parameters(weights: list[Any]) -> str:
    """The number of parameters a device's summary lists, or ``?`` when its shapes are not lists of sizes."""
    total = 0
    for w in weights:
        shape = w.get("shape") if isinstance(w, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**63 for d in shape) or len(shape) > 64:
            return "?"
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return f"{total:,}" if total < 2**63 else "?"


def _format_info(url: str, info: Mapping[str, Any]) -> str:
    seconds = info.get("last_seconds")
    # Every value but the URL is the device's: shown as printable, clipped text, whatever its type.
    rows = [
        ("device", url),
        ("state", shown(info.get("state", "?"), 200, quote=False)),
        ("specs", shown(info.get("specs", "?"), 200, quote=False)),
        ("type", shown(info.get("type", "?"), 200, quote=False)),
        (
            "repetition",
            f"{shown(info.get('repetition', '?'), 200, quote=False)} "
            "(the last one it accepted; a coordinator continues above it)",
        ),
        ("rounds served", shown(info.get("rounds_served", "?"), 200, quote=False)),
        ("last training", f"{seconds:.2f}s" if is_number(seconds) else "-"),
        (
            "protocol",
            f"{shown(info.get('protocol', '?'), 20, quote=False)} "
            f"(fedsync {shown(info.get('fedsync', '?'), 40, quote=False)})",
        ),
    ]
    if info.get("last_error"):
        rows.append(("last error", shown(info["last_error"], 2000, quote=False)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    weights = (info.get("summary") or {}).get("weights") if isinstance(info.get("summary"), dict) else None
    if weights and isinstance(weights, list):
        lines.append(f"{'weights':<{width}}  {len(weights)} arrays, {_parameters(weights)} parameters")
        listed = [w if isinstance(w, dict) else {"name": w} for w in weights[:MAX_WEIGHTS_SHOWN]]
        name_width = max(len(shown(w.get("name", ""), 80, quote=False)) for w in listed)
        for w in listed:
            dims = tuple(w["shape"]) if isinstance(w.get("shape"), list) else w.get("shape", "")
            shape = shown(dims, 80, quote=False)
            lines.append(
                f"{'':<{width}}    {shown(w.get('name'), 80, quote=False):<{name_width}}  {shape:<14} "
                f"{shown(w.get('dtype', ''), 40, quote=False)}"
            )
        if len(weights) > MAX_WEIGHTS_SHOWN:
            lines.append(f"{'':<{width}}    ... and {len(weights) - MAX_WEIGHTS_SHOWN} more (see --json)")
    return "\n".join(lines)


MAX_WEIGHTS_SHOWN = 1000
"""The most weights ``fedsync info`` lists one per line."""


def _as_flags(message: str) -> str:
    """A Remote's TLS hints, which name its Python arguments, in this command's flags."""
    return message.replace(
        "pass verify=CA_BUNDLE, the device's certificate or its CA",
        "pass --cafile with the device's certificate or its CA",
    ).replace("pass cert=(certfile, keyfile)", "pass --cert CERTFILE --key KEYFILE")
