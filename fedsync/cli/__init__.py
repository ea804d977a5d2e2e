"""The ``fedsync`` command (also ``python -m fedsync``).

Subcommands:

- ``fedsync demo``              federated learning across device processes on this machine
- ``fedsync serve MODULE:ATTR`` serve a FedData (or a dict of them) from your file or module
- ``fedsync info URL``          show a device's handshake
- ``fedsync plugins``           list the installed adapters and transports
- ``fedsync dashboard DIR``     a live page of a run, from its checkpoint folder
- ``fedsync certs KIND DIR``    a CA and certificates for mutual TLS (cli/_certs.py)
- ``fedsync check URL``         the protocol's checks against any device; ``fedsync replay A B`` compares two runs

Exit codes: 0 success, 1 the command failed (unreachable device, failed
round, port in use), 2 bad usage (unknown option, module or attribute),
130 interrupted (Ctrl-C), 141 the reader of its output went away
(``fedsync info URL | head -1``), silently, as other command-line tools do.
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import importlib.util
import json
import os
import ssl
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .._version import __version__
from ._aggregate import AGGREGATE_EXAMPLES, add_aggregate_arguments, aggregates, aggregator_for
from ._certs import CRL_HELP
from ._common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CommandError, UsageError, configure_logging
from ._common import Formatter as _Formatter
from ._process import say_how_to_stop, sigterm_as_exit, stdout_to_devnull
from ._serve import DIAL_EXAMPLES, add_dial_arguments, dials, run_dial

__all__ = ["main", "build_parser", "load_target", "UsageError", "CommandError"]

# ----------------------------------------------------------------------- demo


DEMO_HELP = """\
Run federated learning across real device processes on this machine.

Starts DEVICES device processes serving on 127.0.0.1 over real HTTP, splits
scikit-learn's handwritten digits across them non-IID (each device gets
Dirichlet(ALPHA) proportions of each label: small ALPHA, few labels per
device), and runs ROUNDS federated rounds. After each round the coordinator
evaluates the merged model on a held-out test set. At the end it compares the
federated model with the same model trained centrally on all the data, and
with each device training alone on its own data.

Writes to OUTPUT: history.json (one row per round), model.safetensors (the
final model) and accuracy.png (with matplotlib: pip install 'fedsync[plot]').
Needs scikit-learn (pip install 'fedsync[demo]'). Ctrl-C stops every device.

examples:
  fedsync demo
  fedsync demo --devices 8 --alpha 0.1 --rounds 30
  fedsync demo --adapter numpy --output /tmp/run1
"""


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="federated learning on digits across device processes on this machine",
        description=DEMO_HELP, formatter_class=_Formatter,
    )  # fmt: skip
    parser.add_argument("--devices", type=int, default=4, metavar="N", help="number of device processes")
    parser.add_argument("--rounds", type=int, default=20, metavar="N", help="number of federated rounds")
    parser.add_argument(
        "--alpha", type=float, default=0.5, metavar="ALPHA",
        help="Dirichlet concentration of the label split: 0.1 very skewed, 100 nearly even",
    )  # fmt: skip
    parser.add_argument(
        "--adapter", choices=["auto", "torch", "keras", "numpy"], default="auto",
        help="model framework; auto picks the fastest installed: numpy (needs nothing more), else torch, else keras",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", default="fedavg", metavar="NAME", help="how the coordinator merges the devices' models"
    )
    parser.add_argument("--local-epochs", type=int, default=1, metavar="N", help="epochs each device trains per round")
    parser.add_argument(
        "--output",
        default="fedsync-demo",
        metavar="DIR",
        help="folder for history.json, model.safetensors, accuracy.png",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the data split and the model's initial weights"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)"
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, DemoError, run

    config = DemoConfig(
        devices=args.devices,
        rounds=args.rounds,
        alpha=args.alpha,
        adapter=args.adapter,
        strategy=args.strategy,
        output=Path(args.output),
        seed=args.seed,
        local_epochs=args.local_epochs,
        progress=not args.no_progress,
    )
    try:
        with sigterm_as_exit():
            run(config)
    except DemoError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: every device process has been stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# ---------------------------------------------------------------------- serve


SERVE_HELP = (
    """\
Serve a FedData, or a dict {name: FedData}, defined in your own code.

TARGET is MODULE:ATTR. MODULE is a file path (device.py, examples/device.py)
or a dotted module importable from the current directory (mypkg.device);
ATTR is the variable holding the FedData. A dict serves each FedData under
/<name>/. Prints 'serving <url>' on stdout once it accepts connections, and
serves until Ctrl-C.

examples:
  fedsync serve device.py:data
  fedsync serve mypkg.device:model --host 0.0.0.0 --port 8001 --token s3cret
  fedsync serve device.py:data --port 0             # any free port
  fedsync serve device.py:data --certfile cert.pem --keyfile key.pem   # HTTPS
  fedsync serve device.py:data --certfile cert.pem --keyfile key.pem --client-ca ca.pem   # mutual TLS
  fedsync serve device.py:data --certfile cert.pem --keyfile key.pem --client-ca ca.pem \\
      --peer-ca ca.pem --secure-aggregation required   # signed secure aggregation

The token can also come from the FEDSYNC_TOKEN environment variable, which
keeps it out of your shell history and the process list.
"""
    + DIAL_EXAMPLES
    + AGGREGATE_EXAMPLES
)


def _add_serve(commands: Any) -> None:
    parser = commands.add_parser(
        "serve", help="serve a FedData from your file or module as a device",
        description=SERVE_HELP, formatter_class=_Formatter,
    )  # fmt: skip
    parser.add_argument(
        "target", metavar="MODULE:ATTR", help="where the FedData is, e.g. device.py:data or mypkg.device:data"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="HOST", help="interface to listen on; 0.0.0.0 accepts other machines"
    )
    parser.add_argument("--port", type=int, default=8000, metavar="PORT", help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--token", default=os.environ.get("FEDSYNC_TOKEN"), metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every request (default: $FEDSYNC_TOKEN)",
    )  # fmt: skip
    parser.add_argument(
        "--certfile",
        metavar="PEM",
        help="TLS certificate (PEM) to serve HTTPS; needs --keyfile unless the key is in the same file",
    )
    parser.add_argument("--keyfile", metavar="PEM", help="TLS private key (PEM)")
    parser.add_argument(
        "--client-ca",
        metavar="PEM",
        help="mutual TLS: accept only coordinators whose certificate this CA signed (see fedsync certs)",
    )
    parser.add_argument(
        "--max-content-length",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest payload accepted, in bytes (default 2 GiB)",
    )
    parser.add_argument(
        "--secure-aggregation",
        choices=["required"],
        default=None,
        help="take part only in securely aggregated rounds (docs/privacy.md)",
    )
    parser.add_argument(
        "--peer-ca", metavar="PEM",
        help=(
            "signed secure aggregation: sign this device's keys with --certfile's "
            "key and believe only peers whose device certificate this CA signed"
        ),
    )  # fmt: skip
    parser.add_argument("--crl", metavar="PEM", action="append", help=CRL_HELP)
    parser.add_argument("--state-dir", metavar="DIR", help="keep the device's own state here across restarts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    add_dial_arguments(parser)
    add_aggregate_arguments(parser)
    parser.set_defaults(run=_run_serve)


def load_target(target: str, cwd: str | None = None) -> Any:
    """The object ``MODULE:ATTR`` names; MODULE is a ``.py`` path or a dotted module.

    Raises:
        UsageError: malformed target, unknown module or unknown attribute.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"expected MODULE:ATTR, got {target!r}; e.g. device.py:data (a file) or mypkg.device:data (a module)"
        )
    cwd = cwd or os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does, so the user's own modules import
    module = _import(module_name, cwd)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            candidates = _fed_data_names(module)
            hint = f"it defines: {', '.join(candidates)}" if candidates else "it defines no FedData at module level"
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}; {hint}")
        value = getattr(value, part)
    return value


def _import(module_name: str, cwd: str) -> ModuleType:
    looks_like_path = module_name.endswith(".py") or os.sep in module_name or "/" in module_name
    if looks_like_path:
        path = Path(cwd, module_name).resolve()
        if not path.is_file():
            raise UsageError(
                f"no file {module_name!r} (looked for {path}); give the path of a .py file or a dotted module name"
            )
        directory = str(path.parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # so the file can import its neighbours
        # Registered under its own name, unless that would shadow a module already imported.
        name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else "__fedsync_target__"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"{module_name!r} cannot be imported as a Python module; give a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # classes defined in it must find their module (dataclasses, pickling)
        _run_user_code(module_name, lambda: spec.loader.exec_module(module))  # type: ignore[union-attr]  # a .py file spec always has a loader
        return module
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(
            f"no module named {module_name!r} importable from {cwd}; give a file path (device.py:data) "
            "or run from the folder that contains the module"
        )
    return _run_user_code(module_name, lambda: importlib.import_module(module_name))


def _run_user_code(module_name: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as exc:
        # The user's own module raised: its traceback is what helps them, so show it.
        traceback.print_exc()
        raise CommandError(f"importing {module_name!r} raised {type(exc).__name__}: {exc} (traceback above)") from None


def _fed_data_names(module: ModuleType) -> list[str]:
    from ..protocol import FedData

    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and (isinstance(value, FedData) or _is_fed_data_dict(value))
    )  # fmt: skip


def _is_fed_data_dict(value: Any) -> bool:
    from ..protocol import FedData

    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, FedData) for v in value.values())


def _ssl_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if certfile is None:
        if keyfile is not None:
            raise UsageError("--keyfile needs --certfile: give both to serve HTTPS")
        return None
    for path in (certfile, keyfile):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"TLS file not found: {path}; give PEM files with --certfile and --keyfile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"cannot load the TLS certificate {certfile!r}"
            + (f" and key {keyfile!r}" if keyfile else "")
            + f": {exc}; give a PEM certificate and its matching private key"
        ) from None
    return context


def _run_serve(args: argparse.Namespace) -> int:
    from ..device import serve
    from ..protocol import FedData
    from ..wire.tokens import checked_token

    try:
        token = checked_token(args.token)  # before importing the user's module: fail fast
    except ValueError as exc:
        raise UsageError(f"bad device token (from --token or $FEDSYNC_TOKEN): {exc}") from None
    data = load_target(args.target)
    if not (isinstance(data, FedData) or _is_fed_data_dict(data)):
        raise UsageError(
            f"{args.target} is a {type(data).__name__}, not a FedData or a dict of them; "
            "e.g. in device.py: data = fedsync.FedArrays(weights, train)"
        )
    if aggregates(args):  # a node of a tree: the declaration's round below runs when the parent's model arrives
        data = aggregator_for(args, data)
    if dials(args):
        return run_dial(args, data, token)
    context: ssl.SSLContext | tuple[str, str] | None = _ssl_context(args.certfile, args.keyfile)
    if args.client_ca is not None and not Path(args.client_ca).is_file():
        raise UsageError(f"client CA file not found: {args.client_ca}; make one with: fedsync certs init DIR")
    if args.peer_ca is not None:
        if not Path(args.peer_ca).is_file():
            raise UsageError(f"peer CA file not found: {args.peer_ca}; make one with: fedsync certs init DIR")
        if context is None:
            raise UsageError(
                "--peer-ca needs --certfile and --keyfile: the device signs "
                "its secure-aggregation keys with its certificate's key"
            )
        # checked above; serve() also needs the files to sign with
        context = (args.certfile, args.keyfile or args.certfile)
    configure_logging(args.verbose)
    try:
        server = serve(
            data,
            args.host,
            args.port,
            block=False,
            token=token,
            max_content_length=args.max_content_length,
            ssl_context=context,
            client_ca=args.client_ca,
            secure_aggregation=args.secure_aggregation,
            peer_ca=args.peer_ca,
            crl=args.crl,
            state_dir=args.state_dir,
        )
    except OSError as exc:
        raise CommandError(_bind_error(exc, args.host, args.port)) from None
    except ValueError as exc:  # e.g. a negative --max-content-length
        raise UsageError(str(exc)) from None
    assert server is not None  # serve(block=False) returns the running server; None only when it blocks
    url = server.url
    print(f"serving {url}", flush=True)
    if isinstance(data, Mapping):
        for name in data:
            print(f"  {name}: {url}/{name}/info", flush=True)
    return _serve_until_stopped(server)


def _serve_until_stopped(server: Any) -> int:
    """Serve until Ctrl-C or SIGTERM, then close ``server``; the exit code 0."""
    say_how_to_stop()
    try:
        with sigterm_as_exit():
            server.join()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
    return 0


def _bind_error(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another device or program is listening there); "
            f"choose another port, e.g. --port {port + 1}, or --port 0 for any free one"
        )
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port}: ports below 1024 need privileges; use e.g. --port 8000"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on host {host!r}: it is not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    return exc.strerror or str(exc)


# -------------------------------------------------------------------- plugins


PLUGINS_HELP = """\
List the FedData adapters fedsync knows: each one's specs token, class, the
plugin and package that registered it, and whether its framework is
installed (with the pip command to install it when it is not). Then the
transports: each URL scheme a remote may use (http, local, ray, ...), its
class, and the plugin and package that registered it.

Adapters and transports come from the 'fedsync' entry-point group;
FEDSYNC_LOAD_PLUGINS (comma-separated entry-point names) limits which load.
--json prints {"adapters": [...], "transports": [...]}.
"""


def _add_plugins(commands: Any) -> None:
    parser = commands.add_parser(
        "plugins", help="list the installed adapters and transports", description=PLUGINS_HELP,
        formatter_class=_Formatter,
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=_run_plugins)


def _run_plugins(args: argparse.Namespace) -> int:
    from .. import plugins
    from ..errors import PluginError

    try:
        adapters, transports = plugins.describe(), plugins.describe_transports()
    except PluginError as exc:
        raise CommandError(str(exc)) from None
    rows = [
        {
            "token": a["token"],
            "class": f"{a['cls'].__module__}.{a['cls'].__qualname__}",
            "plugin": a["plugin"],
            "package": f"{a['package']} {a['version']}" if a.get("package") else "-",
            "framework": "installed" if a["importable"] else (
                f"missing: pip install 'fedsync[{a['extra']}]'" if a.get("extra") else "missing"
            ),
        }
        for a in adapters
    ]  # fmt: skip
    schemes = [
        {
            "scheme": t["scheme"],
            "class": f"{getattr(t['factory'], '__module__', '?')}."
            f"{getattr(t['factory'], '__qualname__', repr(t['factory']))}",
            "plugin": t["plugin"],
            "package": f"{t['package']} {t['version']}" if t.get("package") else "-",
        }
        for t in transports
    ]  # fmt: skip
    if args.json:
        print(json.dumps({"adapters": rows, "transports": schemes}, indent=2))
        return 0
    _table(rows, "no adapters registered")
    print()
    _table(schemes, "no transports registered")
    return 0


def _table(rows: list[dict[str, Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(f"{k:<{widths[k]}}" for k in keys).rstrip())
    for row in rows:
        print("  ".join(f"{str(row[k]):<{widths[k]}}" for k in keys).rstrip())


# ------------------------------------------------------------------ dashboard


DASHBOARD_HELP = """\
Serve a page that shows a run from its checkpoint folder: rounds done and to
go, elapsed time and ETA, a chart of every metric against the round, the
devices (sampled, answered, last failure) and the configuration.

DIR is the folder given as Federated(..., checkpoint=DIR). The run may be
finished, still running (the page follows it, re-reading the folder), or not
started yet. Prints 'dashboard <url>' on stdout, then serves until Ctrl-C. The
page loads nothing from the internet.

examples:
  fedsync dashboard runs/exp1
  fedsync dashboard runs/exp1 --port 0       # any free port
"""


def _add_dashboard(commands: Any) -> None:
    parser = commands.add_parser(
        "dashboard", help="a live page of a run, from its checkpoint folder",
        description=DASHBOARD_HELP, formatter_class=_Formatter,
    )  # fmt: skip
    parser.add_argument("folder", metavar="DIR", help="the run's checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8600, metavar="PORT", help="TCP port; 0 picks a free one")
    parser.set_defaults(run=_run_dashboard)


def _run_dashboard(args: argparse.Namespace) -> int:
    from ..dashboard.app import serve_dashboard

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"{folder} is a file, not a checkpoint folder; pass the folder given as Federated(checkpoint=...)"
        )
    try:
        server = serve_dashboard(folder, args.host, args.port)
    except OSError as exc:
        raise CommandError(_bind_error(exc, args.host, args.port)) from None
    print(f"dashboard {server.url}/", flush=True)
    if not (folder / "checkpoint.json").exists():
        print(
            f"no checkpoint in {folder} yet: the page shows the run once its first round is written",
            file=sys.stderr,
            flush=True,
        )
    return _serve_until_stopped(server)


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The ``fedsync`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedsync",
        description=(
            "Synchronized federated learning across remote devices.\n\n"
            "A device serves its private data's model over HTTP (fedsync serve); a\n"
            "coordinator sends the model to every device, each trains locally, and\n"
            "the coordinator merges the results. Start with: fedsync demo"
        ),
        epilog="Run 'fedsync COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fedsync {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    _add_demo(commands)
    _add_serve(commands)
    from ._info import add_info_command

    add_info_command(commands)
    _add_plugins(commands)
    _add_dashboard(commands)
    from ._certs import add_certs_command

    add_certs_command(commands)
    from ._check import add_check_command

    add_check_command(commands)
    from ._replay import add_replay_command

    add_replay_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedsync`` command; returns its exit code.

    ``argv=None`` means this process is the command (``fedsync ...``): it ends
    when ``main`` returns, so the last garbage collection is skipped (see below).
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help, --version, a usage error: flushed here, where a broken pipe is caught
            sys.stdout.flush()
            raise
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        code = args.run(args)
        # Inside the try: a reader that went away shows here, not as a traceback at exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except CommandError as exc:
        print(f"fedsync {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if argv is None:
            # The interpreter's last collections walk every object torch or TensorFlow
            # created: 0.4 s and 1 s of a device's stop on SIGTERM. Frozen objects are
            # skipped; atexit handlers and finalizers still run.
            gc.freeze()
