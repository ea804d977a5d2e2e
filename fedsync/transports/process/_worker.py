"""A simulation's worker process: ``python -m fedsync.transports.process._worker --module M --name F``.

Started by :class:`fedsync.transports.process.pool.ProcessPool`, never by hand. It
imports ``device_fn`` by name (``M:F``, or ``--path FILE`` for a script run
as ``__main__``), or, with ``--pickled N``, reads it by value from the first frame on its stdin
(``{"op": "device_fn"}`` and the N bytes cloudpickle made of it in the coordinator that started this
process: see :func:`fedsync.transports.device_functions.ship`). It then answers requests read as frames
(:mod:`fedsync.transports.process._frames`) on its stdin, writing the answers as frames on its stdout:

- ``{"id", "device", "method", "path", "query", "headers", "timeout"}`` + body:
  the request is answered by that device's own WSGI application (a
  :class:`~fedsync.transports.local.LocalTransport` built from ``device_fn(device)`` on first
  use), exactly as in-process; the answer is ``{"id", "status", "headers"}`` +
  body, or ``{"id", "error", "timeout"}`` when the device could not answer.
- ``{"op": "release", "device", "id"}``: drop that device's state; the answer is
  ``{"id", "released": true, "running"}``, ``running`` saying whether anything of the device
  (``device_fn``, a training, an evaluation) still ran: after its round, that is a hung
  call, and the pool kills this process and starts another (a thread cannot be stopped).

Devices train one at a time in this process (one core each; the pool runs
several processes). Nothing else is pickled: requests and answers are JSON headers and raw bytes, and
the coordinator never unpickles what this process sends. The user code's prints go to stderr:
stdout carries frames only. SIGINT is ignored (the coordinator's Ctrl-C is the
coordinator's); the worker exits when its stdin closes, whatever it is doing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from ..._util.checks import is_int
from ...device.app import DEFAULT_MAX_CONTENT_LENGTH
from ...errors import RemoteError, RemoteTimeout
from .. import device_functions
from ..local import LocalTransport, TrainingPool
from ._frames import FrameError, Readable, pack_kept, read_frame, unpack_kept, write_frame
from ._hung import still_running

__all__ = ["main"]

REQUEST_THREADS = 64
"""Requests answered at once (long-polls wait here while devices train); above the coordinator's 64 workers."""


class _Worker:
    """This process's devices and the pipe to the coordinator."""

    def __init__(self, device_fn: Callable[[int], Any], out: BinaryIO, max_content_length: int | None) -> None:
        self.device_fn = device_fn
        self.out = out
        self.write_lock = threading.Lock()
        self.max_content_length = max_content_length
        self.pool = TrainingPool(1)
        self.devices: dict[int, LocalTransport] = {}
        self.kept: dict[
            int, dict[str, bytes]
        ] = {}  # each released device's own state (codec bytes), for its next round
        self.requests = concurrent.futures.ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="fedsync-worker")

    def device(self, device_id: int) -> LocalTransport:
        """The device's in-process transport; its FedData is built on its first request (not here, on the reader)."""
        transport = self.devices.get(device_id)
        if transport is None:
            transport = LocalTransport(
                f"local://device-{device_id}",
                functools.partial(self.device_fn, device_id),
                pool=self.pool,
                max_content_length=self.max_content_length,
                kept=self.kept.pop(device_id, None),
            )
            self.devices[device_id] = transport
        return transport

    def handle(self, header: dict[str, Any], body: bytes | bytearray) -> None:
        """The answer to one request: the device's, or why it could not answer."""
        request_id = header.get("id")
        try:
            transport = header["transport"]
            query = str(header.get("query", ""))
            status, headers, content = transport.call(
                str(header["method"]),
                str(header["path"]) + (f"?{query}" if query else ""),
                {str(k): str(v) for k, v in dict(header.get("headers") or {}).items()},
                body,
                float(header["timeout"]),
            )
            reply: dict[str, Any] = {"id": request_id, "status": status, "headers": headers}
        except RemoteTimeout as exc:
            reply, content = {"id": request_id, "error": exc.reason, "timeout": True}, b""
        except RemoteError as exc:
            reply, content = {"id": request_id, "error": exc.reason}, b""
        except Exception as exc:  # a bug here must not kill the other devices of this process
            reply, content = (
                {"id": request_id, "error": f"the worker process failed: {type(exc).__name__}: {str(exc)[:500]}"},
                b"",
            )
        del body
        with self.write_lock:
            write_frame(self.out, reply, content)

    def serve(self, inp: Readable) -> None:
        """Answer frames until the coordinator closes the pipe."""
        while True:
            frame = read_frame(inp, max_body=(self.max_content_length or DEFAULT_MAX_CONTENT_LENGTH) + (1 << 16))
            if frame is None:
                return
            header, body = frame
            device_id = header.get("device")
            if not is_int(device_id):
                raise FrameError(f"a frame names device {device_id!r}, expected an integer")
            if header.get("op") == "release":
                # On the reader, in pipe order: a later request for this device builds it afresh.
                transport = self.devices.pop(device_id, None)
                running = transport is not None and still_running(transport)
                # Its own state goes back to the coordinator, as bytes, for its next round (on any worker).
                kept = self.kept.pop(device_id, {})
                if transport is not None:
                    transport.release()
                    kept = transport.kept
                if "id" in header:
                    answer = {"id": header["id"], "released": True, "running": running}
                    size, limit = sum(map(len, kept.values())), self.max_content_length or DEFAULT_MAX_CONTENT_LENGTH
                    if size > limit:  # a worker could not take it back (its frames' bound): that device's failure
                        answer["kept_refused"] = (
                            f"its own state is {size} bytes, over the {limit} bytes a worker takes in a frame; "
                            "raise max_content_length or keep a smaller device_state()"
                        )
                        kept = {}
                    entries, state = pack_kept(kept)
                    with self.write_lock:
                        write_frame(self.out, {**answer, "kept": entries}, state)
                continue
            if header.get("op") == "keep":  # the device's own state, for when it is next built here
                self.kept[device_id] = unpack_kept(header.get("kept"), body)
                continue
            header["transport"] = self.device(device_id)
            self.requests.submit(self.handle, header, body)


def main(argv: list[str] | None = None) -> None:
    """The worker's entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m fedsync.transports.process._worker",
        description="A fedsync simulation worker (started by run_simulation).",
    )
    parser.add_argument("--name", required=True, help="device_fn's qualified name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--module", help="the module defining device_fn")
    source.add_argument("--path", help="the script defining device_fn (when it ran as __main__)")
    source.add_argument(
        "--pickled", type=int, metavar="N", help="device_fn comes by value: the first frame on stdin, of N bytes"
    )
    parser.add_argument("--max-content-length", type=int, default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The frames get their own descriptors; fd 1 then points at stderr, so the user's prints cannot break a frame.
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        if args.pickled is not None:
            device_fn = _by_value(inp, args.pickled)
        else:
            device_fn = device_functions.load(args.name, args.module, args.path)
    except Exception as exc:  # the coordinator raises it: a programming error, not a device's failure
        write_frame(out, {"ready": False, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"})
        os._exit(1)
    write_frame(out, {"ready": True, "pid": os.getpid()})
    worker = _Worker(device_fn, out, args.max_content_length)
    try:
        worker.serve(inp)
    except (FrameError, OSError) as exc:
        print(f"fedsync worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
    finally:
        sys.stderr.flush()
        os._exit(0)  # without waiting for trainings the coordinator no longer wants


def _by_value(inp: Readable, size: int) -> Callable[[int], Any]:
    """``device_fn`` from the first frame the coordinator wrote: exactly ``size`` bytes, as its command line said."""
    frame = read_frame(inp, max_body=max(0, size), max_header=1024)
    if frame is None or frame[0] != {"op": "device_fn"} or len(frame[1]) != size:
        raise ValueError(f"the coordinator's first frame is not device_fn's {size} bytes")
    return device_functions.unpickle(bytes(frame[1]))


if __name__ == "__main__":
    main()
