"""Installed distributions made on the spot: a third party's plugin package, as importlib.metadata finds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def make_distribution(folder: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A real (unzipped) distribution on ``folder``: its own dist-info and entry points."""
    dist_info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[fedsync]\n{lines}")
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))


def pip_install(package: Path, target: Path) -> Path:
    """``pip install`` the package folder ``package`` (no dependencies, no index) into ``target``; ``target``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return target
