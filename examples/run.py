"""Run an example on this machine: its devices as `fedsync serve` processes, then its coordinator.

    python examples/run.py custom_fedfloat
    python examples/run.py torch_digits
    python examples/run.py keras_digits
    python examples/run.py torch_fedprox

Each example folder has a device.py (what every device serves) and a coordinator.py;
on real machines, run `fedsync serve device.py:ATTR --port 8000` on each device and
`python coordinator.py` on the coordinator instead.
"""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = {
    # folder: (the FedData's name in device.py, one environment per device)
    "custom_fedfloat": ("data", [{"DEVICE_VALUE": "1.0"}, {"DEVICE_VALUE": "3.0"}]),
    "torch_digits": ("model", [{"DEVICE": "0"}, {"DEVICE": "1"}]),
    "keras_digits": ("model", [{"DEVICE": "0"}, {"DEVICE": "1"}]),
    "torch_fedprox": ("model", [{"DEVICE": "0"}, {"DEVICE": "1"}]),
}


def start_device(folder: Path, attr: str, extra_env: dict, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    command = [sys.executable, "-m", "fedsync", "serve", str(folder / f"device.py:{attr}"), "--port", "0"]
    # In its own session: Ctrl-C reaches only this script, which stops the devices itself.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = process.stdout.readline() if ready else ""
        if line.startswith("serving "):
            return process, line.split()[1]
        if not line:
            break
    process.kill()
    raise SystemExit(f"the device in {folder.name} did not start (exit code {process.poll()})")


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in EXAMPLES:
        print(__doc__)
        return 2
    name = sys.argv[1]
    attr, environments = EXAMPLES[name]
    devices = []
    try:
        for extra_env in environments:
            devices.append(start_device(HERE / name, attr, extra_env))
        urls = ",".join(url for _, url in devices)
        print(f"devices: {urls}", flush=True)
        env = dict(os.environ, FEDSYNC_REMOTES=urls, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
        return subprocess.run([sys.executable, str(HERE / name / "coordinator.py")], env=env).returncode
    finally:
        for process, _ in devices:
            process.terminate()
        for process, _ in devices:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
