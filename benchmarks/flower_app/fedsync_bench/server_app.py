"""The ServerApp: waits for N SuperNodes, then times rounds of send_and_receive + a sample-weighted mean."""

import json
import resource
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def layer_shapes(params: int) -> list[tuple[int, ...]]:
    """The same six layer-like arrays as benchmarks/peers.py (three weight matrices, their biases)."""
    width = max(1, min(1024, params // 64))
    rest = max(0, params - 3 * width)
    first, second = (rest * 5 // 10) // width, (rest * 3 // 10) // width
    third = rest - (first + second) * width
    return [(first, width), (width,), (second, width), (width,), (third,), (width,)]


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    params, devices, rounds, out = int(cfg["params"]), int(cfg["devices"]), int(cfg["rounds"]), str(cfg["out"])
    arrays = [np.ones(shape, np.float32) for shape in layer_shapes(params)]
    deadline = time.monotonic() + 120
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= devices:
            break
        time.sleep(0.2)
    nodes = nodes[:devices]
    times = []
    for r in range(rounds + 1):  # one warm-up round
        start = time.perf_counter()
        record = ArrayRecord(arrays)
        messages = [
            Message(
                content=RecordDict({"arrays": record, "config": ConfigRecord({"round": r})}),
                dst_node_id=node,
                message_type="train",
            )
            for node in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=600))
        total = None
        weight = 0
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"a SuperNode failed: {reply.error}")
            got = reply.content["arrays"].to_numpy_ndarrays()
            n = int(reply.content["metrics"]["num-examples"])
            total = [n * a for a in got] if total is None else [t + n * a for t, a in zip(total, got)]
            weight += n
        arrays = [(t / weight).astype(np.float32) for t in total]
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if out:
        with open(out, "w") as f:
            json.dump({"round_seconds": times[1:], "nodes": len(nodes), "serverapp_peak_bytes": peak}, f)
