"""The distribution a user installs: sdist and wheel, their metadata, and a fresh virtualenv."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The fresh virtualenv must see only what was installed into it: a PYTHONPATH pointing at a checkout
# (how tests run from a worktree) makes its pip believe fedsync is already installed.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.mark.slow  # ~3.0 s: keeps the fast tier under 90 s
def test_sdist_and_wheel_pass_twine_check(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert any(f.endswith(".whl") for f in files) and any(f.endswith(".tar.gz") for f in files)
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_wheel_metadata_carries_entry_points_and_extras(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "[fedsync]\nkeras = fedsync_keras\nray = fedsync_ray\ntorch = fedsync_torch" in entry_points
    assert "[console_scripts]\nfedsync = fedsync.cli:main" in entry_points
    for extra in ("keras", "torch", "all", "demo", "plot", "test", "tensorboard", "mlflow", "tls", "ray"):
        assert f"Provides-Extra: {extra}" in metadata
    assert 'Requires-Dist: torch>=2.1; extra == "torch"' in metadata
    # PEP 561: type checkers use fedsync's annotations.
    assert {"fedsync/py.typed", "fedsync_torch/py.typed", "fedsync_keras/py.typed", "fedsync_ray/py.typed"} <= set(
        names
    )
    assert any(n.startswith("fedsync_torch/") for n in names) and any(n.startswith("fedsync_keras/") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert {"fedsync/dashboard/static/uPlot.iife.min.js", "fedsync/dashboard/static/dashboard.js"} <= set(names)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_runs(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=CLEAN_ENV)
    python, fedsync = venv / "bin" / "python", venv / "bin" / "fedsync"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        timeout=600,
        capture_output=True,
        env=CLEAN_ENV,
    )
    help_text = subprocess.run(
        [str(fedsync), "--help"], check=True, capture_output=True, text=True, timeout=60, env=CLEAN_ENV
    ).stdout
    assert "demo" in help_text and "serve" in help_text
    # The FedFloat example, outside the source tree so only the installed package can be imported.
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples" / "custom_fedfloat", work / "custom_fedfloat")
    shutil.copy(ROOT / "examples" / "run.py", work / "run.py")
    out = subprocess.run(
        [str(python), "run.py", "custom_fedfloat"], cwd=work, capture_output=True, text=True, timeout=300, env=CLEAN_ENV
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "round 3: value 2.0" in out.stdout
    where = subprocess.run(
        [str(python), "-c", "import fedsync; print(fedsync.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    ).stdout
    assert str(venv) in where
