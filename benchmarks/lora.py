"""LoRA adapters: a round of a 50M-parameter PEFT model, adapters only against the whole model.

    python benchmarks/lora.py [--dim 768 --blocks 8] [--rank 8] [--devices 2] [--rounds 3] [--quick]

A transformer-like stack built here with ``torch.nn`` (no hub download): ``--blocks`` blocks of six
``Linear`` layers of width ``--dim`` (``q``, ``k``, ``v``, ``o`` of d×d and an MLP ``up`` d×4d,
``down`` 4d×d): 12·d² + 9·d parameters a block, 56.7M at d = 768 and 8 blocks. ``peft`` puts LoRA of
rank ``--rank`` on ``q`` and ``v`` (``peft.LoraConfig(r=8, target_modules=["q", "v"])``). Every
process builds it from the same seed, as devices that load the same pretrained base.

Two peers, each with ``--devices`` ``fedsync.serve`` device processes and a coordinator process over
HTTP on 127.0.0.1, one after the other:

- adapters:     ``FedTorch(model, train, shared="trainable")`` on every side: only ``lora_A``/``lora_B``
                travel; the frozen base is fingerprinted into the specs and never sent;
- whole model:  ``FedTorch(model, train)``: every tensor of the same PEFT model travels, base included.

Each device's ``train`` takes one SGD step (lr 0.01) on a batch of 8 random vectors of its own with a
mean-squared loss; only the LoRA parameters have ``requires_grad``, so both peers train the same thing.
Reported: payload bytes per round (``RoundResult.bytes_sent`` + ``bytes_received``, HTTP bodies, both
directions), seconds per round (median of ``--rounds`` after one warm-up round), and the coordinator's
peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import round as bench  # noqa: E402  (benchmarks/round.py: processes, guards, formatting)

PEERS = ("adapters", "whole")
LABELS = {"adapters": 'adapters only (`shared="trainable"`)', "whole": "whole model (no `shared=`)"}
MB = 1e6


# ----------------------------------------------------------------- the model


def build(dim: int, blocks: int, rank: int):
    """The PEFT model: the same base and the same initial adapters in every process."""
    import peft
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(dim, dim) for _ in range(4))
            self.up, self.down = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = torch.softmax(self.q(x) * self.k(x), dim=-1)  # a stand-in for attention, per vector
            x = x + self.o(gate * self.v(x))
            return x + self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    with torch.no_grad():
        base = torch.nn.Sequential(*(Block() for _ in range(blocks)))
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q", "v"], lora_dropout=0.0)
    return peft.get_peft_model(base, config)


def fed(args, train=None):
    from fedsync_torch import FedTorch

    model = build(args.dim, args.blocks, args.rank)
    options = {"shared": "trainable"} if args.peer == "adapters" else {}
    return FedTorch(model, train, **options)


# ----------------------------------------------------------------- roles (processes)


def role_device(args) -> None:
    import peers
    import torch

    import fedsync

    generator = torch.Generator().manual_seed(1 + args.seed)
    x = torch.randn(8, args.dim, generator=generator)
    target = torch.randn(8, args.dim, generator=generator)
    holder: dict = {}

    def train(module):
        optimizer = holder.setdefault(
            "sgd", torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01)
        )
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(module(x), target).backward()
        optimizer.step()
        return 100

    data = fed(args, train)
    server = fedsync.serve(data, host="127.0.0.1", port=0, block=False)
    peers.emit(ready=[server.url], pid=os.getpid())
    try:
        peers.wait_for_stdin_eof()
    finally:
        server.close()


def role_coordinator(args) -> None:
    import peers
    import torch

    from fedsync import Federated, Remote

    baseline = peers.status_bytes("VmRSS")
    data = fed(args)
    model = data.model
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    built = peers.status_bytes("VmHWM")  # the model built and wrapped, before any round
    peers.emit(params=total, trainable=trainable, state_bytes=state, baseline=baseline, built=built)
    remotes = [Remote(url, timeout=args.timeout) for url in args.urls]
    rounds = peers.Rounds(args.rounds, args.budget)
    with Federated(data, remotes, timeout=args.timeout) as alg:
        peers.time_rounds(alg, rounds, len(remotes), each=lambda r: {"payload": [r.bytes_sent, r.bytes_received]})
    lora_b = [t for n, t in model.state_dict().items() if "lora_B" in n]  # zeros until a merge moves them
    peers.emit(lora_b_trained=bool(lora_b) and all(bool(torch.any(t != 0)) for t in lora_b))
    peers.report_done(rounds)


ROLES = {"device": role_device, "coordinator": role_coordinator}


# ----------------------------------------------------------------- one peer


@dataclass
class Cell:
    peer: str
    status: str = "ok"
    note: str = ""
    params: int = 0
    trainable: int = 0
    state_bytes: int = 0
    times: list[float] = field(default_factory=list)
    median: float | None = None
    payload: list[list[int]] = field(default_factory=list)  # [sent, received] per round
    peak: int | None = None
    baseline: int | None = None  # RSS after imports, before the model
    built: int | None = None  # peak RSS once the model is built, before the first round
    lora_b_trained: bool | None = None

    @property
    def bytes_per_round(self) -> int | None:
        return sum(self.payload[-1]) if self.payload else None


def run_peer(peer: str, opts, logdir: Path) -> Cell:
    cell = Cell(peer)
    model = ["--dim", str(opts.dim), "--blocks", str(opts.blocks), "--rank", str(opts.rank), "--peer", peer]
    common = [*model, "--rounds", str(opts.rounds), "--budget", str(opts.budget), "--timeout", str(opts.peer_timeout)]
    script = [sys.executable, str(Path(__file__).resolve()), "--role"]
    deadline = time.monotonic() + opts.peer_timeout
    with bench.Group(int(opts.guard_gib * bench.GIB), logdir) as group:
        try:
            devices = [
                group.start(f"{peer}-device{i}", [*script, "device", *common, "--seed", str(i)])
                for i in range(opts.devices)
            ]
            urls = [url for device in devices for url in group.expect(device, deadline, "ready")["ready"]]
            coordinator = group.start(f"{peer}-coordinator", [*script, "coordinator", *common, "--urls", *urls])
            while "done" not in (
                message := group.expect(coordinator, deadline, "params", "payload", "lora_b_trained", "done")
            ):
                if "params" in message:
                    cell.params, cell.trainable = message["params"], message["trainable"]
                    cell.state_bytes, cell.baseline = message["state_bytes"], message["baseline"]
                    cell.built = message["built"]
                elif "payload" in message:
                    cell.payload.append(message["payload"])
                else:
                    cell.lora_b_trained = message["lora_b_trained"]
            cell.times, cell.median, cell.peak = message["times"], message["median"], message["peak"]
        except TimeoutError as exc:
            cell.status, cell.note = "failed", f"timed out after {opts.peer_timeout:g}s ({exc})"
        except RuntimeError as exc:
            cell.status = "killed" if group.tripped.is_set() else "failed"
            cell.note = str(exc)[:400]
        except bench.OutOfMemoryGuard:
            cell.status, cell.note = "killed", "out of memory guard"
    return cell


def table(cells: list[Cell], opts) -> str:
    first = next((c for c in cells if c.params), None)
    lines = []
    if first:
        lines += [
            f"Model: {opts.blocks} blocks of width {opts.dim}, {first.params:,} parameters "
            f"({first.state_bytes / MB:,.1f} MB of float32 state); LoRA rank {opts.rank} on `q`, `v`: "
            f"{first.trainable:,} trainable parameters ({first.trainable / first.params:.2%}). "
            f"N = {opts.devices} device processes over HTTP on 127.0.0.1, one SGD step a round.",
            "",
        ]
    lines += [
        "| what travels | payload per round (both directions) | round (median) "
        "| coordinator peak RSS: after imports → model built → after the rounds (rounds' growth in model copies) |",
        "|---|---|---|---|",
    ]
    by = {c.peer: c for c in cells}
    for peer in PEERS:
        c = by.get(peer)
        if c is None:
            continue
        if c.status != "ok":
            lines.append(f"| {LABELS[peer]} | {c.status}: {c.note} | — | — |")
            continue
        lines.append(
            f"| {LABELS[peer]} | {c.bytes_per_round / MB:,.2f} MB | {bench.fmt_seconds(c.median)} "
            f"| {c.baseline / MB:,.0f} → {c.built / MB:,.0f} → {c.peak / MB:,.0f} MB "
            f"(+{(c.peak - c.built) / c.state_bytes:.1f}) |"
        )
    a, w = by.get("adapters"), by.get("whole")
    if a and w and a.status == w.status == "ok":
        lines += [
            "",
            f"Adapters only: {a.bytes_per_round / w.bytes_per_round:.2%} of the whole model's bytes "
            f"({w.bytes_per_round / a.bytes_per_round:,.0f}× fewer), rounds {w.median / a.median:.1f}× faster.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--peer", choices=PEERS, default="adapters", help=argparse.SUPPRESS)
    parser.add_argument("--urls", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=768, help="block width")
    parser.add_argument("--blocks", type=int, default=8, help="blocks of 12·d² + 9·d parameters")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--devices", type=int, default=2, help="device processes")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"subset of {','.join(PEERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="no new round after this many seconds")
    parser.add_argument("--peer-timeout", type=float, default=600.0, help="a peer is killed after this many seconds")
    parser.add_argument("--guard-gib", type=float, default=2.0, help="kill a peer when MemAvailable falls under this")
    parser.add_argument("--quick", action="store_true", help="smoke check: width 64, 2 blocks, one measured round")
    parser.add_argument("--json", default="", help="also write the cells here")
    parser.add_argument("--logs", default="", help="keep every process's stderr in this folder")
    opts = parser.parse_args(argv)
    if opts.role:
        ROLES[opts.role](opts)
        return 0
    if opts.quick:
        opts.dim, opts.blocks, opts.rounds = 64, 2, 1
    peers = [p for p in opts.peers.split(",") if p]
    if set(peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(set(peers) - set(PEERS))}; choose from {PEERS}")
    bench.Proc.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])  # the checkout's fedsync, and peers.py
    print(f"machine: load average {bench.loadavg()}, {os.cpu_count()} cores", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="fedsync-lora-") as tmp:
        logdir = Path(opts.logs or tmp)
        logdir.mkdir(parents=True, exist_ok=True)
        for peer in [p for p in PEERS if p in peers]:
            started = time.monotonic()
            cell = run_peer(peer, opts, logdir)
            cells.append(cell)
            if cell.status == "ok":
                print(
                    f"{peer:9} median {bench.fmt_seconds(cell.median)} "
                    f"rounds [{' '.join(f'{t:.2f}' for t in cell.times)}] "
                    f"payload {cell.bytes_per_round / MB:.2f} MB/round ({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
            else:
                print(f"{peer:9} {cell.status}: {cell.note}", flush=True)
    print(f"\nload average at the end: {bench.loadavg()}\n")
    print(table(cells, opts), flush=True)
    if opts.json:
        import json
        from dataclasses import asdict

        Path(opts.json).write_text(
            json.dumps([asdict(c) | {"bytes_per_round": c.bytes_per_round} for c in cells], indent=1)
        )
    return 0 if all(c.status == "ok" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
