"""``fedsync certs``: a CA, device and coordinator certificates for mutual TLS, one command each."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import UsageError

__all__ = ["add_certs_command", "CERTS_HELP", "CRL_HELP"]

CRL_HELP = (
    "refuse certificates revoked in this CA's revocation list (DIR/crl.pem of `fedsync certs revoke`) for "
    "--client-ca and --peer-ca; repeat for a second CA. Checked at start: a missing, foreign or expired list stops it"
)

CERTS_HELP = """\
Make the certificates of a mutual-TLS deployment with the cryptography package
(pip install 'fedsync[tls]'): ECDSA P-256 keys, written 0600, never overwritten.

  fedsync certs init DIR                         a CA: DIR/ca.pem, DIR/ca-key.pem
  fedsync certs device DIR --host HOST [...]     a device certificate for HOST (DNS names or IPs)
  fedsync certs coordinator DIR [--name NAME]    a coordinator (client) certificate
  fedsync certs revoke DIR [NAME ...]            revoke certificates: DIR/crl.pem, valid 30 days;
                                                 no NAME renews it (run it before it expires)

Then serve a device that accepts only coordinators holding a certificate of that CA:
  fedsync serve device.py:data --host 0.0.0.0 --certfile DIR/device-HOST.pem \\
      --keyfile DIR/device-HOST-key.pem --client-ca DIR/ca.pem
and connect from the coordinator:
  Remote("https://HOST:8000", verify="DIR/ca.pem",
         cert=("DIR/coordinator-coordinator.pem", "DIR/coordinator-coordinator-key.pem"))
Keep DIR/ca-key.pem off the devices: only the machine that issues certificates needs it.
After a key leaks: fedsync certs revoke DIR device-HOST, copy DIR/crl.pem to the devices
and restart them with --crl DIR/crl.pem (docs/security.md).
"""


def add_certs_command(commands: Any) -> None:
    """Add ``fedsync certs`` to the ``fedsync`` parser; failures are one-line usage errors."""
    parser = commands.add_parser(
        "certs", help="make a CA and certificates for mutual TLS",
        description=CERTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    kinds = parser.add_subparsers(title="what to make", metavar="KIND", dest="kind", required=True)
    init = kinds.add_parser("init", help="create a certificate authority in DIR")
    init.add_argument("folder", metavar="DIR")
    init.add_argument("--name", default="fedsync CA", help="the CA's common name")
    device = kinds.add_parser("device", help="a device's server certificate, signed by DIR's CA")
    device.add_argument("folder", metavar="DIR")
    device.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="a DNS name or IP address coordinators use to reach the device (repeat for several)",
    )
    device.add_argument("--name", default=None, help="file name part (default: the first host)")
    coordinator = kinds.add_parser("coordinator", help="a coordinator's client certificate, signed by DIR's CA")
    coordinator.add_argument("folder", metavar="DIR")
    coordinator.add_argument("--name", default="coordinator", help="file name part and common name")
    revoke = kinds.add_parser("revoke", help="revoke certificates of DIR's CA in DIR/crl.pem (no NAME: renew the list)")
    revoke.add_argument("folder", metavar="DIR")
    revoke.add_argument(
        "names", nargs="*", metavar="NAME",
        help="a certificate's file (device-HOST.pem), its name (HOST, coordinator-NAME) or serial number",
    )  # fmt: skip
    revoke.add_argument(
        "--days", type=int, default=None, metavar="DAYS",
        help="days until the list's next update, when devices refuse it unless renewed (default 30)",
    )  # fmt: skip

    def run(args: argparse.Namespace) -> int:
        from ..wire import certs

        try:
            if args.kind == "init":
                print(f"CA certificate: {certs.init_ca(args.folder, name=args.name)}")
                print(f"CA key (keep it off the devices): {args.folder.rstrip('/')}/ca-key.pem")
            elif args.kind == "device":
                cert, key = certs.issue_device(args.folder, args.host, name=args.name)
                print(f"device certificate: {cert}\ndevice key: {key}")
                print(
                    f"serve with: fedsync serve MODULE:ATTR --certfile {cert} "
                    f"--keyfile {key} --client-ca {args.folder.rstrip('/')}/ca.pem"
                )
            elif args.kind == "revoke":
                days = certs.CRL_DAYS if args.days is None else args.days
                crl, added = certs.revoke(args.folder, args.names, days=days)
                for serial in added:
                    print(f"revoked: serial {serial:#x}")
                if args.names and not added:
                    print("already revoked: nothing added")
                print(f"revocation list: {crl} (valid {days} days: renew with `fedsync certs revoke {args.folder}`)")
                print(f"copy it to the devices and restart them with --crl {crl}")
            else:
                cert, key = certs.issue_coordinator(args.folder, name=args.name)
                print(f"coordinator certificate: {cert}\ncoordinator key: {key}")
                print(f"connect with: Remote(url, verify='{args.folder.rstrip('/')}/ca.pem', cert=('{cert}', '{key}'))")
        except (ValueError, OSError, ImportError) as exc:
            raise UsageError(str(exc)) from None
        return 0

    parser.set_defaults(run=run)
