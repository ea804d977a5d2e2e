"""``fedsync replay A B``: whether two runs did the same, round by round (:mod:`fedsync.coordinator.replay`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import EXIT_FAILED, Formatter, UsageError

__all__ = ["add_replay_command", "REPLAY_HELP"]

REPLAY_HELP = """\
Compare two runs' records round by round: the devices each round sampled, the
config each device was sent, the SHA-256 of the payload the coordinator sent and
of the merged model. Prints "identical" (exit 0) or the first round and field
that differ (exit 1). A record that cannot be read (missing, damaged, edited,
not a run's) is an error (exit 2).

A and B: checkpoint folders (Federated(checkpoint=DIR), run_simulation(checkpoint=DIR))
or history files (History.save). The recipe: run the same script twice, with
checkpoint folders A and B, then compare them (docs/simulation.md, "Reproducible runs").

examples:
  fedsync replay runs/a runs/b
  fedsync replay runs/a/ history-b.json
"""


def add_replay_command(commands: Any) -> None:
    """Add ``fedsync replay A B`` to the ``fedsync`` parser."""
    parser = commands.add_parser(
        "replay", help="check that a rerun matches a run, round by round",
        description=REPLAY_HELP, formatter_class=Formatter,
    )  # fmt: skip
    parser.add_argument("run_a", metavar="A", help="the first run: a checkpoint folder or a history file")
    parser.add_argument("run_b", metavar="B", help="the second run (the rerun)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..coordinator.replay import compare_runs, read_run, run_notes

    try:
        first, second = read_run(args.run_a), read_run(args.run_b)
        difference = compare_runs(first, second)
    except (ValueError, OSError) as exc:  # CheckpointError, FileRefused, FileNotFoundError: all name the file
        raise UsageError(str(exc)) from None
    for note in run_notes(first, second):
        print(f"note: {note}")
    if difference is not None:
        print(f"differ: {difference}")
        return EXIT_FAILED
    print(f"identical: {len(first)} rounds (sampled devices, configs, payload and model digests)")
    return 0
