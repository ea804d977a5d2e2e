"""Serve a FedData made by a factory function in this process: a real device for tests.

Usage: ``python -m tests.support.run_device FACTORY [JSON-ARGS]``, where FACTORY is a
function of ``tests/support/devices/basic.py`` or ``module:function``; prints ``READY <url>``
once serving. ``FEDSYNC_TEST_TOKEN`` in the environment sets the device's token,
``FEDSYNC_TEST_SERVE`` (a JSON object) more keyword arguments of ``serve`` (a list
``ssl_context`` is the ``(certfile, keyfile)`` pair);
warnings and errors (tracebacks included) go to stderr.
"""

import importlib
import json
import logging
import os
import sys

import fedsync


def main() -> None:
    module, _, name = sys.argv[1].rpartition(":")
    factory = getattr(importlib.import_module(module or "tests.support.devices.basic"), name)
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else []
    data = factory(*args)
    port = int(os.environ.get("FEDSYNC_TEST_PORT", "0"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    options = json.loads(os.environ.get("FEDSYNC_TEST_SERVE", "{}"))
    if isinstance(options.get("ssl_context"), list):
        options["ssl_context"] = tuple(options["ssl_context"])
    where = {} if "connect" in options else {"host": "127.0.0.1", "port": port}  # a dialing device listens on nothing
    server = fedsync.serve(data, block=False, token=os.environ.get("FEDSYNC_TEST_TOKEN"), **where, **options)
    print(f"READY {server.url}", flush=True)
    try:
        server.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
