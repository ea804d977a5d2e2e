"""The processes that benchmarks/dial.py starts: dial-out coordinators and devices, a host of many devices.

Run as ``python benchmarks/dial_peers.py ROLE [options]``; dial.py does that. Roles print their results as
lines ``@@ {json}`` on stdout (benchmarks/peers.py's convention, whose helpers they reuse) and exit when
their standard input closes, so none outlives dial.py.

- ``dial-coordinator``: a :class:`~fedsync.transports.dial.Listener` and ``Federated`` over its remotes;
  times rounds like peers.py's ``fedsync-coordinator``.
- ``dial-device``: one ``fedsync.serve(FedArrays, connect=URL, name=, token=)`` device, no-op training.
- ``many-coordinator``: a Listener allowing ``--devices`` names; once all registered, reports its own RSS,
  threads and open file descriptors while they long-poll, then times rounds sampling ``--sample`` of them.
- ``many-host``: ``--count`` dialed-in devices in one process: an asyncio + aiohttp client registers each
  name and long-polls for it; a job runs through that device's own ``DeviceApp`` in a thread pool.
- ``resume-coordinator``: one round with one device behind a cutting proxy (dial.py runs the proxy);
  ``--restart`` turns fedsync's resumption off, so the broken round fails and is run again from zero.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from peers import SAMPLES, Rounds, emit, model, report_done, report_start, status_bytes, time_rounds, wait_for_stdin_eof

HOST = "127.0.0.1"


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def token_of(name: str) -> str:
    return f"benchmark-token-{name}"


def names(count: int, first: int = 0) -> list[str]:
    return [f"dev{i:05d}" for i in range(first, first + count)]


def proc_self() -> dict:
    """This process's RSS, peak RSS, threads and open file descriptors, from /proc/self."""
    with open("/proc/self/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return {
        "rss": status_bytes("VmRSS"),
        "hwm": status_bytes("VmHWM"),
        "threads": threads,
        "fds": len(os.listdir("/proc/self/fd")),
    }


def stop_on_eof() -> None:
    threading.Thread(target=lambda: (wait_for_stdin_eof(), os._exit(0)), daemon=True).start()


# ----------------------------------------------------------------- 10M x 8: dialed-in devices


def dial_device(args) -> None:
    import fedsync

    raise_nofile()

    def train(arrays):
        return SAMPLES

    dialer = fedsync.serve(
        fedsync.FedArrays(model(args.params, seed=1), train),
        connect=args.connect,
        name=args.name,
        token=token_of(args.name),
        block=False,
    )
    emit(ready=[args.name], pid=os.getpid())
    try:
        wait_for_stdin_eof()
    finally:
        dialer.close()


def dial_coordinator(args) -> None:
    import fedsync  # noqa: F401  (imported before the baseline is read)
    import fedsync.transports.dial._server  # noqa: F401  (aiohttp too)
    from fedsync import FedArrays, Federated
    from fedsync.transports.dial import Listener

    raise_nofile()
    report_start(args.params)
    data = FedArrays(model(args.params))
    allowed = {name: token_of(name) for name in names(args.devices)}
    with Listener(HOST, 0, devices=allowed) as listener:
        emit(ready=[listener.url], pid=os.getpid())
        stop_on_eof()
        listener.wait_for(args.devices, timeout=args.timeout)
        rounds = Rounds(args.rounds, args.budget)
        with Federated(data, listener.remotes(timeout=args.timeout), timeout=args.timeout) as alg:
            time_rounds(alg, rounds, args.devices, args.profile)
        report_done(rounds)


# ----------------------------------------------------------------- many dialed-in devices


def many_coordinator(args) -> None:
    import fedsync  # noqa: F401
    import fedsync.transports.dial._server  # noqa: F401
    from fedsync import FedArrays, Federated
    from fedsync.transports.dial import Listener

    limit = raise_nofile()
    imported = proc_self()
    allowed = {name: token_of(name) for name in names(args.devices)}
    with Listener(HOST, 0, devices=allowed, max_connections=max(10_000, 3 * args.devices)) as listener:
        emit(ready=[listener.url], pid=os.getpid(), nofile=limit, imported=imported)
        stop_on_eof()
        started = time.monotonic()
        listener.wait_for(args.devices, timeout=args.timeout)
        emit(registered=args.devices, seconds=time.monotonic() - started)
        time.sleep(args.idle)  # every device is in a long-poll now
        idle = proc_self()
        idle["connections"] = listener.connections()
        idle["tasks"] = len(_count_tasks(listener.loop))
        emit(idle=idle)
        data = FedArrays(model(args.params))
        rounds = Rounds(args.rounds, args.budget)
        fraction = args.sample / args.devices
        with Federated(
            data, listener.remotes(timeout=args.timeout), fraction=fraction, seed=0, timeout=args.timeout
        ) as alg:
            while rounds.more():
                began = time.perf_counter()
                result = alg.round()
                seconds = time.perf_counter() - began
                if len(result.answered) != args.sample:
                    raise SystemExit(
                        f"round {result.repetition}: {len(result.answered)} of {args.sample} answered: "
                        f"{list(result.failures.items())[:3]}"
                    )
                rounds.record(seconds)
        emit(after=proc_self())
        report_done(rounds)


async def _tasks():
    return asyncio.all_tasks()


def _count_tasks(loop: asyncio.AbstractEventLoop) -> set:
    """The listener loop's tasks (asked on its own thread)."""
    return asyncio.run_coroutine_threadsafe(_tasks(), loop).result(10)


def many_host(args) -> None:
    """``--count`` devices in one process: asyncio + aiohttp for the wire, DeviceApp in a thread pool for jobs."""
    import aiohttp

    import fedsync
    from fedsync.device._dial_job import call_app, environ_for
    from fedsync.device._dial_wire import (
        DIAL_PREFIX,
        HEADERS_HEADER,
        SESSION_HEADER,
        STATUS_HEADER,
        UPLOAD_LENGTH,
        UPLOAD_OFFSET,
        parse_job,
    )
    from fedsync.device.app import DeviceApp

    raise_nofile()

    def train(arrays):
        return SAMPLES

    own = names(args.count, args.first)
    apps = {name: DeviceApp(fedsync.FedArrays(model(args.params, seed=1), train)) for name in own}
    specs = {name: app.devices[""].info()["specs"] for name, app in apps.items()}
    pool = ThreadPoolExecutor(args.threads, thread_name_prefix="job")
    counts = {"registered": 0, "jobs": 0, "errors": 0, "polls": 0}
    url = args.connect

    def run_app(app, job, body: bytes) -> tuple[int, dict, bytes]:
        answer = call_app(app, environ_for(job, io.BytesIO(body), url))
        try:
            data = answer.held if answer.held is not None else b"".join(answer.pieces)
        finally:
            answer.close()
        return answer.status, answer.headers, bytes(data)

    async def one_job(http, base: str, headers: dict, app, job) -> None:
        loop = asyncio.get_running_loop()
        body = b""
        if job.length:
            async with http.get(f"{base}/jobs/{job.id}/body", headers=headers) as response:
                body = await response.read()
        status, answer_headers, data = await loop.run_in_executor(pool, run_app, app, job, body)
        head = {
            **headers,
            STATUS_HEADER: str(status),
            HEADERS_HEADER: json.dumps(answer_headers),
            UPLOAD_LENGTH: str(len(data)),
            UPLOAD_OFFSET: "0",
            "Content-Type": "application/octet-stream",
        }
        async with http.post(f"{base}/jobs/{job.id}/answer", headers=head, data=data) as response:
            if response.status != 204:
                counts["errors"] += 1
            await response.read()
        counts["jobs"] += 1

    async def device(http, name: str, gate: asyncio.Semaphore, jobs: set) -> None:
        base = f"{url}{DIAL_PREFIX}/{name}"
        auth = {"Authorization": f"Bearer {token_of(name)}"}
        registration = json.dumps(
            {"protocol": 1, "fedsync": fedsync.__version__, "bases": [""], "specs": {"": specs[name]}}
        )
        session = None
        while True:
            try:
                if session is None:
                    async with gate:
                        async with http.post(
                            f"{base}/register", headers={**auth, "Content-Type": "application/json"}, data=registration
                        ) as response:
                            if response.status != 200:
                                raise RuntimeError(f"{name}: register answered {response.status}")
                            session = (await response.json())["session"]
                    counts["registered"] += 1
                headers = {**auth, SESSION_HEADER: session}
                async with http.get(f"{base}/next?wait={args.wait:g}", headers=headers) as response:
                    counts["polls"] += 1
                    if response.status == 204:
                        await response.read()
                        continue
                    if response.status == 409:
                        session = None
                        continue
                    if response.status != 200:
                        raise RuntimeError(f"{name}: next answered {response.status}")
                    job = parse_job(await response.read())
                task = asyncio.create_task(one_job(http, base, headers, apps[name], job))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, OSError):
                counts["errors"] += 1
                await asyncio.sleep(1.0)

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=5.0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=args.wait + 15)
        jobs: set = set()
        gate = asyncio.Semaphore(100)  # registrations in flight at once
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as http:
            devices = [asyncio.create_task(device(http, name, gate, jobs)) for name in own]
            reported = False
            while True:
                await asyncio.sleep(1.0)
                if not reported and counts["registered"] >= len(own):
                    emit(ready=own[:1], count=len(own), pid=os.getpid())
                    reported = True
                if stopping.is_set():
                    break
            for task in devices:
                task.cancel()
            emit(host=dict(counts))

    stopping = threading.Event()
    threading.Thread(target=lambda: (wait_for_stdin_eof(), stopping.set()), daemon=True).start()
    asyncio.run(main())
    pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------- a payload cut at half


def resume_coordinator(args) -> None:
    import fedsync
    import fedsync.transports._resume as resume
    from fedsync import FedArrays, Federated, Remote
    from fedsync.errors import FedSyncError

    if args.restart:
        resume.MAX_RESUMES = 0  # a break fails the device: what a client without resumable transfers does
    report_start(args.params)
    data = FedArrays(model(args.params))
    remote = Remote(args.urls[0], timeout=args.timeout)
    attempts = []
    started = time.perf_counter()
    with Federated(data, [remote], timeout=args.timeout) as alg:
        for _attempt in range(2):
            began = time.perf_counter()
            try:
                result = alg.round()
            except FedSyncError as exc:
                attempts.append(
                    {"seconds": time.perf_counter() - began, "failed": f"{type(exc).__name__}: {exc}"[:300]}
                )
                continue
            attempts.append({"seconds": time.perf_counter() - began, "answered": len(result.answered)})
            if result.answered:
                break
    emit(
        done=True,
        seconds=time.perf_counter() - started,
        attempts=attempts,
        resent=remote.resent_bytes,
        resumes=remote.resumes.count,
        peak=status_bytes("VmHWM"),
        fedsync=fedsync.__version__,
    )


# ----------------------------------------------------------------- command line

ROLES = {
    "dial-device": dial_device,
    "dial-coordinator": dial_coordinator,
    "many-coordinator": many_coordinator,
    "many-host": many_host,
    "resume-coordinator": resume_coordinator,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--connect", default="")
    parser.add_argument("--name", default="")
    parser.add_argument("--urls", nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="no new round after this many seconds")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--profile", default="", help="dial-coordinator: cProfile the first measured round here")
    parser.add_argument("--sample", type=int, default=100, help="many-coordinator: devices sampled per round")
    parser.add_argument("--idle", type=float, default=5.0, help="many-coordinator: seconds idle before /proc is read")
    parser.add_argument("--count", type=int, default=1000, help="many-host: devices in this process")
    parser.add_argument("--first", type=int, default=0, help="many-host: the first device's number")
    parser.add_argument("--threads", type=int, default=32, help="many-host: threads running jobs")
    parser.add_argument("--wait", type=float, default=30.0, help="many-host: seconds of each long-poll")
    parser.add_argument("--restart", action="store_true", help="resume-coordinator: resumption off")
    args = parser.parse_args(argv)
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
