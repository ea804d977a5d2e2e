#!/usr/bin/env bash
# Creates benchmarks/.venv-flower with Flower 1.42 for benchmarks/round.py's comparison.
# Flower lives in its own venv so that fedsync's environment never depends on it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-flower"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "flwr[simulation]==1.42.0" numpy
FLWR_TELEMETRY_ENABLED=0 "$venv/bin/python" -c "import flwr, numpy; print('flwr', flwr.__version__, 'numpy', numpy.__version__, 'in', '$venv')"
