"""Start the demo's device processes and make sure every one of them stops."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .data import DemoError, Shard, save_shard

__all__ = ["Fleet", "DeviceProcess"]

_ROOT = Path(__file__).resolve().parents[2]
# In a source checkout that is not installed, devices find fedsync through PYTHONPATH;
# an installed fedsync needs nothing (and site-packages must not go before the stdlib).
_SOURCE_ROOT = str(_ROOT) if (_ROOT / "pyproject.toml").is_file() else None


@dataclass
class DeviceProcess:
    """One device process: its number, process, log file and (once ready) URL."""

    index: int
    process: subprocess.Popen
    log_path: Path
    log: IO[bytes]
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the device wrote to stderr, for error messages."""
        if not self.log.closed:
            self.log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:]) or "    (nothing)"


class Fleet:
    """Device processes serving shards on loopback; a context manager that stops them all.

    Each device runs in its own session, so a Ctrl-C in the terminal reaches
    only the coordinator, which then stops the devices itself (closing their
    stdin, then SIGTERM, then SIGKILL); a device also exits by itself when its
    stdin closes, which covers a coordinator that is killed outright.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.devices: list[DeviceProcess] = []

    def start(self, shards: list[Shard], adapter: str, epochs: int, seed: int) -> None:
        """Start one device process per shard; :meth:`wait_ready` waits until they serve."""
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",  # N devices share the cores: one thread each
            MKL_NUM_THREADS="1",
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=os.pathsep.join(p for p in (_SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p),
        )
        for index, shard in enumerate(shards):
            shard_path = self.workdir / f"device-{index}.safetensors"
            save_shard(shard, shard_path)
            log_path = self.workdir / f"device-{index}.log"
            log = open(log_path, "wb")
            command = [
                sys.executable, "-m", "fedsync.demo", "device", str(shard_path),
                "--adapter", adapter, "--epochs", str(epochs), "--seed", str(seed),
                "--index", str(index), "--parent", str(os.getpid()),
            ]  # fmt: skip
            try:
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                    cwd=self.workdir,  # not the user's folder: a stray numpy.py there must not shadow numpy
                    start_new_session=True,
                )  # fmt: skip
            except BaseException:
                log.close()
                raise
            self.devices.append(DeviceProcess(index, process, log_path, log))

    def wait_ready(self, timeout: float = 180.0) -> list[str]:
        """Wait until every device serves; their URLs."""
        deadline = time.monotonic() + timeout
        waiting = {stream: d for d in self.devices if (stream := d.process.stdout) is not None}  # always a pipe
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                slow = next(iter(waiting.values()))
                raise DemoError(
                    f"device {slow.index} (pid {slow.pid}) did not start "
                    f"within {timeout:g}s; its log:\n{slow.log_tail()}"
                )
            ready, _, _ = select.select(list(waiting), [], [], remaining)
            for stream in ready:
                device = waiting[stream]
                line = stream.readline().decode(errors="replace")
                if line.startswith("READY "):
                    device.url = line.split()[1]
                    del waiting[stream]
                elif not line:
                    code = device.process.wait()
                    raise DemoError(
                        f"device {device.index} (pid {device.pid}) exited with code {code} before serving; its log:\n"
                        f"{device.log_tail()}"
                    )
        return [d.url for d in self.devices]

    def stop(self, grace: float = 5.0) -> int:
        """Stop every device process; how many were still running."""
        running = [d for d in self.devices if d.process.poll() is None]
        for device in self.devices:
            for stream in (device.process.stdin, device.process.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        for device in running:
            try:
                device.process.terminate()
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for device in running:
            try:
                device.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                device.process.kill()
                device.process.wait()
        for device in self.devices:
            device.log.close()
        return len(running)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
