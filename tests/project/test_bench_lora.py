"""benchmarks/lora.py: its quick run (a small PEFT model, 2 device processes over HTTP) sends only the LoRA
tensors with shared="trainable" and every tensor without it, and the adapters it merges have trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "lora.py"

pytest.importorskip("torch")
pytest.importorskip("peft", reason="the peft extra is not installed: pip install 'fedsync[peft]'")


@pytest.mark.slow  # 6 processes each importing torch and peft: about 30 s
def test_quick_run_sends_adapters_only_against_the_whole_model(tmp_path):
    out = tmp_path / "cells.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--peer-timeout", "200"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = {c["peer"]: c for c in json.loads(out.read_text())}
    adapters, whole = cells["adapters"], cells["whole"]
    assert adapters["status"] == whole["status"] == "ok"
    dim, blocks, rank, devices = 64, 2, 8, 2
    params = blocks * (12 * dim * dim + 9 * dim)
    lora = blocks * 2 * (2 * rank * dim)  # lora_A (r×d) and lora_B (d×r) on q and v
    assert adapters["params"] == whole["params"] == params + lora
    assert adapters["trainable"] == lora
    header = 4096  # one payload's header and metadata, generously
    for cell, travels in ((adapters, lora * 4), (whole, (params + lora) * 4)):
        assert len(cell["times"]) == 2  # a warm-up and a measured round
        for sent, received in cell["payload"]:  # every round: the model down to each device and back
            assert devices * travels <= sent < devices * (travels + header)
            assert devices * travels <= received < devices * (travels + header)
        assert cell["lora_b_trained"]  # lora_B starts at zero: the merged adapters carry the devices' steps
    assert "adapters only" in done.stdout and "of the whole model's bytes" in done.stdout
