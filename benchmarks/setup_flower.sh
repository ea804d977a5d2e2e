#!/usr/bin/env bash
# Creates benchmarks/.venv-flower with Flower 1.42 (and its Ray simulation engine, and CPU torch)
# for the comparisons of benchmarks/round.py and benchmarks/simulation.py.
# Flower lives in its own venv so that fedsync's environment never depends on it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-flower"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The same torch as fedsync's environment (benchmarks/simulation.py --framework torch), if it has one.
torch="$("$python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' 2>/dev/null || true)"
"$venv/bin/python" -m pip install --quiet "flwr[simulation]==1.42.0" numpy $torch
FLWR_TELEMETRY_ENABLED=0 "$venv/bin/python" -c "import flwr, numpy; print('flwr', flwr.__version__, 'numpy', numpy.__version__, 'in', '$venv')"
