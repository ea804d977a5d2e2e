"""Processes for coordinator robustness tests; each prints ``READY <url>`` (or one JSON line) and serves.

- ``python -m tests.support.run_hostile hostile SCENARIO JSON-OPTIONS``: a misbehaving device (``tests/support/hostile.py``);
- ``python -m tests.support.run_hostile device JSON-OPTIONS``: a real fedsync device serving ``constant`` weights,
  with ``token`` and ``certfile``/``keyfile`` (HTTPS) options;
- ``python -m tests.support.run_hostile coordinator JSON-OPTIONS``: runs one round (or evaluation) against
  ``urls`` and prints its outcome with the process's peak memory before and after, as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import threading


def hostile(scenario: str, options: dict) -> None:
    from tests.support import hostile as h

    server = h.serve(scenario, options)
    host, port = server.server_address[:2]
    print(f"READY http://{host}:{port}", flush=True)
    threading.Event().wait()


def device(options: dict) -> None:
    import fedsync
    from tests.support.devices.basic import constant

    tls = (options["certfile"], options["keyfile"]) if options.get("certfile") else None
    server = fedsync.serve(constant(1.0, 10), port=0, block=False, token=options.get("token"), ssl_context=tls)
    print(f"READY {server.url}", flush=True)
    server.join()


def coordinator(options: dict) -> None:
    import numpy as np

    from fedsync import FedArrays, Federated, Remote
    from fedsync.errors import RoundFailed
    from tests.support.seed_fedfloat import FedFloat

    if options.get("kind") == "fedfloat":
        data = FedFloat(0.0)
    else:
        data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    remotes = [Remote(url, timeout=options.get("remote_timeout", 30)) for url in options["urls"]]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome: dict = {}
    with Federated(data, remotes, min_results=options.get("min_results", 1), timeout=options.get("timeout", 30)) as alg:
        try:
            result = alg.evaluate() if options.get("evaluate") else alg.round()
            outcome = {"failures": result.failures, "answered": getattr(result, "answered", list(result.devices))}
        except RoundFailed as exc:
            outcome = {"failures": exc.failures, "error": str(exc)}
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome["grew_kib"] = after - before
    outcome["value"] = float(data.value) if hasattr(data, "value") else float(data.model["w"].mean())
    print(json.dumps(outcome), flush=True)


def main() -> None:
    command = sys.argv[1]
    if command == "hostile":
        hostile(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    elif command == "device":
        device(json.loads(sys.argv[2]))
    elif command == "coordinator":
        coordinator(json.loads(sys.argv[2]))
    else:
        raise SystemExit(f"unknown command {command!r}: use hostile, device or coordinator")


if __name__ == "__main__":
    main()
