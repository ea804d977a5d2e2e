"""benchmarks/stateful.py: its quick run trains every algorithm on both data sets through run_simulation and
prints a table row for each with finite numbers; its synthetic data set has the shape Li et al. describe."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tests.support.benchmarks import load_benchmark as _load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "stateful.py"


def load_benchmark():
    return _load("stateful")


ROW = re.compile(
    r"^\| (digits|synthetic) \(2 rounds, target \d+%\) \| ([^|]+?) \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \| "
    r"([\d.]+) \([\d.]+-[\d.]+\) \| ([^|]+) \| ([\d.]+) \|$"
)


@pytest.mark.slow  # ~1.0 s: keeps the fast tier under 90 s
def test_quick_run_prints_a_row_per_algorithm_and_data_set_with_finite_numbers(capsys):
    bench = load_benchmark()
    assert bench.main(["--quick", "--plot", "none"]) == 0
    out = capsys.readouterr().out
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    assert sorted((d, a) for d, a, *_ in rows) == sorted(
        (d, a) for d in ("digits", "synthetic") for a in bench.ALGORITHMS
    ), out
    for data_set, algorithm, mean, low, high, loss, _rounds, seconds in rows:
        assert 0 <= float(low) <= float(mean) <= float(high) <= 1, (data_set, algorithm)
        assert math.isfinite(float(loss)) and float(loss) > 0, (data_set, algorithm, loss)
        assert math.isfinite(float(seconds)), (data_set, algorithm, seconds)
    assert "failed" not in out  # no algorithm diverged or had a device refused
    # Training moved every model: the loss after 2 rounds is below the untrained one, log(10).
    assert all(float(loss) < math.log(10) for *_, loss, _r, _s in rows), out


def test_synthetic_data_set_has_the_papers_shape_and_every_device_its_own_local_work():
    bench = load_benchmark()
    task = bench.synthetic_task(seed=3)
    assert len(task.shards) == 30 and task.per_round == 10
    assert all(x.shape[1] == 60 for x, _ in task.shards) and task.x_test.shape[1] == 60
    sizes = [len(y) for _, y in task.shards]
    assert min(sizes) >= int(0.9 * 50) and max(sizes) > 10 * min(sizes)  # power law: lognormal(4, 2) + 50
    assert set(np.concatenate([y for _, y in task.shards]).tolist()) <= set(range(10))
    assert all(1 <= e <= 10 for e in task.epochs) and len(set(task.epochs)) > 1
    assert len({task.steps(k) for k in range(30)}) > 5  # K_k differs from device to device
    again = bench.synthetic_task(seed=3)
    np.testing.assert_array_equal(again.x_test, task.x_test)  # a seed is the same data set every time
    assert not np.array_equal(bench.synthetic_task(seed=4).x_test[:5], task.x_test[:5])
