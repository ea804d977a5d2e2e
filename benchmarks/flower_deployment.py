"""Flower 1.42 in deployment mode (SuperNodes dialing a SuperLink), the peer of fedsync's dial-out devices.

    PYTHON=python bash benchmarks/setup_flower.sh      # once: benchmarks/.venv-flower
    python benchmarks/flower_deployment.py --params 10M --devices 8 --rounds 4

Starts a SuperLink (``--insecure``, subprocess isolation), N SuperNodes that dial its Fleet API, and
``flwr run`` of benchmarks/flower_app (a ServerApp that times rounds of ``send_and_receive`` plus a
sample-weighted mean of N no-op ClientApps' arrays). Reports the median round time and the peak RSS
(VmHWM) of the SuperLink and of its ServerApp process, in bytes and in model copies (P*4 bytes).
:func:`run` is what benchmarks/dial.py calls; every process it starts is stopped when it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = HERE / ".venv-flower" / "bin"
APP = HERE / "flower_app"


def available() -> bool:
    """Whether benchmarks/.venv-flower holds Flower's deployment commands."""
    return (VENV_BIN / "flower-superlink").exists() and (VENV_BIN / "flwr").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the SuperLink exited:\n" + log.read_text()[-3000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not listen on {port} within {timeout:.0f} s")


def _hwm(pid: int) -> int:
    """The peak resident set (VmHWM) of ``pid`` in bytes, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for c in children:
            out.append(int(c))
            todo.append(int(c))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run(params: int, devices: int, rounds: int = 4, timeout: float = 900.0) -> dict:
    """One Flower deployment-mode run; ``{"round_seconds": [...], "superlink_peak": B, "serverapp_peak": B}``.

    Raises:
        RuntimeError: Flower's venv is missing, or the run did not finish within ``timeout`` seconds
            (the message holds the end of the SuperLink's log).
    """
    if not available():
        raise RuntimeError("Flower is not installed: PYTHON=python bash benchmarks/setup_flower.sh")
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               GRPC_VERBOSITY="ERROR", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="flwr-bench-") as tmp:
        env["FLWR_HOME"] = tmp
        # Flower 1.42 serves its Runtime, Control and Fleet APIs over HTTP on one port.
        port = _free_port()
        Path(tmp, "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        log = open(Path(tmp, "superlink.log"), "w")
        try:
            link = subprocess.Popen(
                [str(VENV_BIN / "flower-superlink"), "--insecure", "--isolation", "subprocess",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--database", ":flwr-in-memory-state:"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
            )
            procs.append(link)
            _wait_for_port(port, link, Path(tmp, "superlink.log"))
            for i in range(devices):
                procs.append(subprocess.Popen(
                    [str(VENV_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                     "--host", "127.0.0.1", "--port", str(_free_port()),
                     "--node-config", f"partition-id={i}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
                ))
            out = Path(tmp, "result.json")
            subprocess.run(
                [str(VENV_BIN / "flwr"), "run", str(APP), "bench", "--run-config",
                 f'params={params} devices={devices} rounds={rounds} out="{out}"'],
                env=env, check=True, capture_output=True, timeout=120, cwd=tmp,
            )
            end = time.monotonic() + timeout
            serverapp_peak = 0
            while time.monotonic() < end and not out.exists():
                for pid in _descendants(link.pid):
                    if "serverapp" in _cmdline(pid):
                        serverapp_peak = max(serverapp_peak, _hwm(pid))
                time.sleep(0.5)
            if not out.exists():
                log.flush()
                raise RuntimeError("Flower's run did not finish:\n" + Path(tmp, "superlink.log").read_text()[-3000:])
            time.sleep(0.5)
            result = json.loads(out.read_text())
            result["superlink_peak"] = _hwm(link.pid)
            result["serverapp_peak"] = max(serverapp_peak, int(result.get("serverapp_peak_bytes", 0)))
            return result
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            log.close()


def _count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="10M")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    params = _count(args.params)
    r = run(params, args.devices, args.rounds)
    copies = params * 4
    print(f"flower deployment {args.params} x {args.devices}: median round {statistics.median(r['round_seconds']):.3f} s "
          f"({', '.join(f'{s:.3f}' for s in r['round_seconds'])}); SuperLink peak {r['superlink_peak'] / 1e6:.0f} MB "
          f"({r['superlink_peak'] / copies:.1f} copies), ServerApp peak {r['serverapp_peak'] / 1e6:.0f} MB "
          f"({r['serverapp_peak'] / copies:.1f} copies)")


if __name__ == "__main__":
    main()
