"""The demo's coordinator: devices up, rounds run and evaluated, baselines compared, results written."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .. import strategies
from .._version import __version__
from ..coordinator.federated import Federated
from ..errors import RoundFailed
from ..wire import codec
from .data import DemoError, Split, load_split
from .fleet import Fleet
from .models import Backend, available, backend_class
from .report import ROUND_HEADER, comparison_lines, device_line, round_line, write_history, write_plot

__all__ = ["DemoConfig", "run", "strategy_names"]


@dataclass
class DemoConfig:
    """The demo's options, as ``fedsync demo --help`` describes them."""

    devices: int = 4
    rounds: int = 20
    alpha: float = 0.5
    adapter: str = "auto"
    strategy: str = "fedavg"
    output: Path = field(default_factory=lambda: Path("fedsync-demo"))
    seed: int = 0
    local_epochs: int = 1
    progress: bool = True
    round_timeout: float = 120.0


def strategy_names() -> dict[str, type[strategies.Strategy]]:
    """Merge strategies by lowercase class name (``fedavg`` -> ``FedAvg``)."""
    found = {}
    for value in vars(strategies).values():
        # The DP wrappers need a clipping norm and noise the demo cannot guess (docs/privacy.md).
        if (
            isinstance(value, type)
            and issubclass(value, strategies.Strategy)
            and value is not strategies.Strategy
            and not issubclass(value, strategies.DPFixedClipping)
        ):
            found[value.__name__.lower()] = value
    return found


def _strategy(name: str) -> strategies.Strategy:
    known = strategy_names()
    if name.lower() not in known:
        raise DemoError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(known))}")
    try:
        return known[name.lower()]()
    except TypeError as exc:
        raise DemoError(
            f"strategy {name!r} needs arguments the demo cannot guess ({exc}); use --strategy fedavg"
        ) from None


def _check(config: DemoConfig) -> None:
    if config.devices < 1:
        raise DemoError(f"--devices must be at least 1, got {config.devices}")
    if config.rounds < 1:
        raise DemoError(f"--rounds must be at least 1, got {config.rounds}")
    if config.local_epochs < 1:
        raise DemoError(f"--local-epochs must be at least 1, got {config.local_epochs}")


class _Progress:
    """A tqdm bar on a terminal, showing the current accuracy; plain lines otherwise."""

    def __init__(self, total: int, enabled: bool, out: TextIO) -> None:
        self.out = out
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is a nicety: the table shows progress too
                return
            self.bar = tqdm(total=total, desc="federated rounds", unit="step", file=sys.stderr, leave=False)

    def say(self, line: str = "") -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.out)
            self.out.flush()
        else:
            print(line, file=self.out, flush=True)

    def step(self, description: str | None = None, **postfix: float) -> None:
        if self.bar is not None:
            if description:
                self.bar.set_description(description, refresh=False)
            if postfix:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(config: DemoConfig, out: TextIO | None = None) -> dict[str, Any]:
    """Run the whole demo and write its files; the history it wrote.

    Raises:
        DemoError: the demo cannot run as configured, or a round failed; the message says why.
        KeyboardInterrupt: after every device process has been stopped.
    """
    _check(config)
    strategy = _strategy(config.strategy)
    try:  # a robust strategy that needs more devices than the demo starts fails every round: say so now
        getattr(strategy, "check_count", lambda n: None)(config.devices)
    except RoundFailed as exc:
        needs = str(exc).split(";")[0]
        raise DemoError(
            f"--strategy {config.strategy} cannot run on {config.devices} "
            f"devices: {needs}; pass more --devices, or another --strategy"
        ) from None
    backend_cls = backend_class(config.adapter)
    split = load_split(config.devices, config.alpha, config.seed)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    progress = _Progress(config.rounds + 1 + config.devices, config.progress, out or sys.stdout)
    try:
        return _run(config, strategy, backend_cls, split, output, progress)
    finally:
        progress.close()


def _run(
    config: DemoConfig,
    strategy: strategies.Strategy,
    backend_cls: type[Backend],
    split: Split,
    output: Path,
    progress: _Progress,
) -> dict[str, Any]:
    say = progress.say
    say(
        f"fedsync demo: {backend_cls.description}, {config.rounds} rounds of {config.strategy} across "
        f"{config.devices} device processes"
    )
    if config.adapter == "auto":
        say(
            f"adapter: {backend_cls.name}, picked by --adapter auto "
            f"as the fastest installed; {_others(backend_cls.name)}"
        )
    say(
        f"data: scikit-learn digits, {len(split.y_test)} held out for testing, the rest split non-IID "
        f"across devices by Dirichlet(alpha={config.alpha:g}) label proportions"
    )
    rows: list[dict[str, Any]] = []
    device_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedsync-demo-") as workdir, Fleet(Path(workdir)) as fleet:
        say(f"starting {config.devices} device processes on 127.0.0.1 ...")
        started = time.monotonic()
        fleet.start(split.shards, backend_cls.name, config.local_epochs, config.seed)
        # The coordinator imports its framework while the devices import theirs.
        backend = backend_cls()
        model = backend.build(config.seed)
        data = backend.fed(model)
        data.strategy = strategy
        urls = fleet.wait_ready()
        say(f"devices ready in {time.monotonic() - started:.1f}s:")
        for device, shard in zip(fleet.devices, split.shards, strict=True):  # one device per shard
            counts = shard.label_counts()
            say(device_line(device.index, device.url, device.pid, counts))
            device_rows.append({"url": device.url, "pid": device.pid, "samples": len(shard.y), "labels": counts})
        say()
        say(ROUND_HEADER)
        try:
            with Federated(data=data, remotes=urls, timeout=config.round_timeout) as alg:
                for _ in range(config.rounds):
                    rows.append(_round(alg, backend, model, split))
                    say(round_line(rows[-1]))
                    progress.step(accuracy=rows[-1]["test_accuracy"])
        except RoundFailed as exc:
            raise DemoError(_round_failed(exc, fleet)) from None

    epochs = config.rounds * config.local_epochs
    say()
    say(
        f"training the baselines, the same model for {epochs} "
        "epochs: on all data pooled, then on each device's alone ..."
    )
    progress.step("baseline: central")
    central = _train_alone(backend, split, split.pooled(), epochs, config.seed)
    alone = []
    for index, shard in enumerate(split.shards):
        progress.step(f"baseline: device {index} alone")
        alone.append(_train_alone(backend, split, shard, epochs, config.seed))
    federated = rows[-1]["test_accuracy"]
    say()
    for line in comparison_lines(federated, central, alone, config.devices, config.rounds):
        say(line)
    say()

    history = {
        "fedsync": __version__,
        "adapter": backend.name,
        "model": backend.description,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "progress"},
        "devices": device_rows,
        "rounds": rows,
        "comparison": {"federated": federated, "central": central, "alone": alone},
    }
    write_history(output / "history.json", history)
    say(f"wrote {output / 'history.json'}")
    metadata = {
        "fedsync.adapter": backend.name,
        "fedsync.specs": data.specs(rows[-1]["round"]),
        "fedsync.rounds": str(len(rows)),
        "fedsync.test_accuracy": f"{federated:.6f}",
        "fedsync.version": __version__,
    }
    (output / "model.safetensors").write_bytes(codec.encode(data.get_arrays(), metadata))
    say(f"wrote {output / 'model.safetensors'}")
    title = f"fedsync demo: {config.devices} devices, alpha={config.alpha:g}, {backend.name}"
    if write_plot(output / "accuracy.png", rows, central, alone, title):
        say(f"wrote {output / 'accuracy.png'}")
    else:
        say("no plot: matplotlib is not installed; for accuracy.png: pip install 'fedsync[plot]'")
    say(f"federated test accuracy: {federated:.3f}")
    return history


def _others(picked: str) -> str:
    """The other adapters, and how to choose one or what it needs."""
    parts = []
    for name, why in available().items():
        if name != picked:
            parts.append(f"--adapter {name}" if why is None else f"{name}: pip install 'fedsync[{name}]'")
    return "others: " + ", ".join(parts) if parts else "no other adapter"


def _round(alg: Federated, backend: Backend, model: Any, split: Split) -> dict[str, Any]:
    """One federated round, then the merged model on the held-out test set."""
    result = alg.round()
    test_loss, test_accuracy = backend.evaluate(model, split.x_test, split.y_test)
    return {
        "round": result.repetition,
        "devices": len(result.answered),
        "samples": result.samples,
        "train_loss": result.metrics.get("loss"),
        "train_accuracy": result.metrics.get("accuracy"),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "seconds": result.seconds,
        "bytes_sent": result.bytes_sent,
        "bytes_received": result.bytes_received,
    }


def _train_alone(backend: Backend, split: Split, shard: Any, epochs: int, seed: int) -> float:
    """Test accuracy of the same model, from the same start, trained on ``shard`` only."""
    model = backend.build(seed)
    backend.fit(model, shard.x, shard.y, epochs, np.random.default_rng(seed))
    return backend.evaluate(model, split.x_test, split.y_test)[1]


def _round_failed(exc: RoundFailed, fleet: Fleet) -> str:
    lines = [f"a round failed: {str(exc).splitlines()[0]}"]
    by_url = {d.url: d for d in fleet.devices}
    for url, why in exc.failures.items():
        lines.append(f"  {url}: {why}")
        device = by_url.get(url)
        if device is not None:
            lines.append(f"  device {device.index}'s log:\n{device.log_tail()}")
    return "\n".join(lines)
