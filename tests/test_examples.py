"""Every example under examples/ runs, as a newcomer would run it."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def example_names():
    spec = importlib.util.spec_from_file_location("examples_run", EXAMPLES / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLES


def test_every_example_folder_is_runnable_by_run_py():
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir() and (p / "device.py").exists()}
    assert folders == set(example_names())


def test_quickstart():
    out = run("examples/quickstart.py")
    assert "round 15: 3 devices, 600 samples" in out
    federated = re.search(r"federated w, b: \[ *([-\d.]+)", out).group(1)
    central = re.search(r"central   w, b: \[ *([-\d.]+)", out).group(1)
    assert abs(float(federated) - float(central)) < 0.02


def test_custom_fedfloat_example():
    out = run("examples/run.py", "custom_fedfloat")
    assert out.splitlines()[-3:] == ["round 1: value 2.0", "round 2: value 2.0", "round 3: value 2.0"]


def final_accuracy(out):
    return float(re.findall(r"round 5: .*test accuracy ([\d.]+)", out)[-1])


@pytest.mark.slow
def test_torch_example():
    pytest.importorskip("torch")
    assert final_accuracy(run("examples/run.py", "torch_digits")) >= 0.85


@pytest.mark.slow
def test_keras_example():
    pytest.importorskip("keras")
    assert final_accuracy(run("examples/run.py", "keras_digits")) >= 0.85
