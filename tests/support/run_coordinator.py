"""A coordinator process for the resume test: fit linear regression with a checkpoint.

Usage: ``python -m tests.support.run_coordinator CHECKPOINT ROUNDS OUT URL...``; writes the
final arrays to OUT (safetensors layout) when all rounds are done.
"""

import sys
from pathlib import Path

import numpy as np

from fedsync import FedArrays, Federated
from fedsync.wire import codec


def main() -> None:
    checkpoint, rounds, out, *urls = sys.argv[1:]
    data = FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})
    with Federated(data=data, remotes=urls, checkpoint=checkpoint, timeout=60) as alg:
        alg.fit(int(rounds), progress=False)
        Path(out).write_bytes(codec.encode(data.get_arrays()))


if __name__ == "__main__":
    main()
