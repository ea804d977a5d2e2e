"""benchmarks/secagg.py: its smoke run (real device processes over HTTP, plain and secure rounds)
counts the bytes the protocol must move, and its report replaces only its own RESULTS.md section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.benchmarks import load_benchmark as _load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "secagg.py"


def load_benchmark():
    return _load("secagg")


@pytest.mark.parametrize(
    "before, after",
    [
        ("", "{new}"),
        ("# Round benchmark results\nrows\n", "# Round benchmark results\nrows\n\n{new}"),
        (
            "# Round\nr\n\n# Secure aggregation\nold\n### t\nold\n\n# Strategy convergence\ns\n",
            "# Round\nr\n\n{new}\n# Strategy convergence\ns\n",
        ),
        ("# Secure aggregation\nold\n# Strategy convergence\ns\n", "{new}\n# Strategy convergence\ns\n"),
        ("# Round\nr\n# Secure aggregation\nold\n", "# Round\nr\n\n{new}"),
    ],
)
def test_report_replaces_only_its_section(tmp_path, before, after):
    bench = load_benchmark()
    new = "# Secure aggregation\n\nnew table\n"
    path = tmp_path / "RESULTS.md"
    if before:
        path.write_text(before)
    bench.write_section(path, new)
    assert path.read_text() == after.format(new=new)
    bench.write_section(path, new)  # a second run replaces, never duplicates
    assert path.read_text() == after.format(new=new)


@pytest.mark.slow  # a few seconds of real waiting: the full suite runs it (fast tier: 90 s budget)
def test_quick_run_counts_the_bytes_each_protocol_moves(tmp_path):
    """1M float32 parameters, 3 devices: plain FedAvg moves the model down and back (24 MB); secure
    aggregation sends uint64 masked updates back (4 + 8 bytes a parameter a device: 36 MB), plus headers
    and the key phases' JSON. A counter that missed either direction, or the phases, would be off by MBs."""
    out = tmp_path / "cells.json"
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--output", str(results), "--peer-timeout", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cells = {c["peer"]: c for c in json.loads(out.read_text())}
    assert set(cells) == {"fedsync", "fedsync-secagg"}
    params, devices = 1_000_000, 3
    plain, secure = cells["fedsync"], cells["fedsync-secagg"]
    assert plain["status"] == secure["status"] == "ok"
    assert 2 * devices * params * 4 < plain["bytes_per_round"] < 2 * devices * params * 4 + 100_000
    assert devices * params * (4 + 8) < secure["bytes_per_round"] < devices * params * (4 + 8) + 200_000
    assert secure["threshold"] == 3 and plain["threshold"] is None
    assert plain["dtypes"] == secure["dtypes"] == ["float32"]
    assert len(secure["times"]) == 2 and all(t > 0 for t in secure["times"])  # a warm-up and a measured round
    text = results.read_text()
    assert text.startswith("# Secure aggregation\n") and "| 1M | 3 | " in text and "1.50× bytes" in text
