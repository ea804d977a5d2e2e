"""benchmarks/compression.py: its quick run trains both models in every configuration through run_simulation and
prints a row for each with finite numbers and the payload sizes the formats promise; its socket counter counts
what a socket carries; one round over real HTTP is counted on the sockets."""

from __future__ import annotations

import math
import re
import socket

import pytest

from tests.support.benchmarks import load_benchmark as _load


def load_benchmark():
    """benchmarks/compression.py as a module; the modules it imports stay loaded (see ``load_benchmark``)."""
    return _load("compression", keep_imports=True)


ROW = re.compile(
    r"^\| (mlp|cnn|cnn32) \| ([^|]+?) \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \| ([-+\d.]+) \| ([^|]+) \| "
    r"([\d,]+) / ([\d,]+) \| ([\d.]+) \(1/([\d.]+)\) \| ([^|]+) \| ([^|]+) \|$"
)


@pytest.mark.slow  # about 4 s: 2 models x 10 configurations x 2 rounds
def test_quick_run_prints_a_row_per_model_and_configuration_with_finite_numbers(capsys):
    pytest.importorskip("torch")
    bench = load_benchmark()
    out = bench.main(["--quick"])
    text = capsys.readouterr().out
    rows = {(m.group(1), m.group(2)): m.groups() for m in map(ROW.match, out["table"].splitlines()) if m}
    assert sorted(rows) == sorted((model, c.name) for model in bench.MODELS for c in bench.CONFIGS), text
    for (model, name), (_m, _n, mean, low, high, change, _r, down, up, ratio, _inv, meets, _sock) in rows.items():
        assert 0 <= float(low) <= float(mean) <= float(high) <= 1, (model, name)
        assert math.isfinite(float(change)) and math.isfinite(float(ratio)), (model, name)
        assert int(down.replace(",", "")) > 0 and int(up.replace(",", "")) > 0, (model, name)
        assert meets.strip() in ("-", "yes", "no", "upload only"), (model, name, meets)
        # The formats' sizes (docs/compression.md), headers aside: float16 about 1/2, int8 1/4, int4 0.14.
        bound = {"float32": 1.0, "float16": 0.56, "int8": 0.32, "int4": 0.2, "top-k 1% + int4 down": 0.2}
        if name in bound:
            assert float(ratio) <= bound[name], (model, name, ratio)
    for model in bench.MODELS:
        float32_up = int(rows[(model, "float32")][8].replace(",", ""))
        topk_up = int(rows[(model, "top-k 1%")][8].replace(",", ""))
        assert topk_up < float32_up / 8, (model, topk_up, float32_up)  # 8 bytes for 1% of the entries, + headers


def test_socket_counter_counts_each_direction_and_restores_the_socket_methods():
    bench = load_benchmark()
    originals = {name: getattr(socket.socket, name) for name in bench.SocketBytes.SEND + bench.SocketBytes.RECEIVE}
    a, b = socket.socketpair()
    counter = bench.SocketBytes().install()
    try:
        a.sendall(b"x" * 1000)
        buffer = bytearray(1000)
        got = 0
        for _ in range(1000):  # bounded: a socketpair delivers 1000 bytes in a few reads at most
            got += b.recv_into(memoryview(buffer)[got:])
            if got == 1000:
                break
        b.send(b"yz")
        assert a.recv(10) == b"yz"
        assert counter.take() == (1002, 1002)  # both ends are this process's sockets
        assert counter.take() == (0, 0)
    finally:
        counter.remove()
        a.close()
        b.close()
    assert {name: getattr(socket.socket, name) for name in originals} == originals


@pytest.mark.slow  # starts a device process (imports torch)
def test_a_round_over_http_counts_socket_bytes_beyond_the_payload():
    pytest.importorskip("torch")
    bench = load_benchmark()
    args = bench.parse(["--devices", "2", "--seeds", "0", "--http-rounds", "2", "--epochs", "1"])
    cell = bench.over_http("mlp", bench.BY_NAME["delta int8"], args, 0)
    assert len(cell["rounds"]) == 2
    for row in cell["rounds"]:
        assert 0 < row["down"] < row["socket_down"], row  # headers ride on top of the payload
        assert 0 < row["up"] < row["socket_up"], row
        assert row["socket_down"] < 2 * row["down"] and row["socket_up"] < 2 * row["up"], row
