"""FedData factories for the secure-aggregation tests (tests/secagg/test_secagg.py), served by ``run_device.py``."""

from __future__ import annotations

import os
import signal

import numpy as np

from fedsync import FedArrays

SHAPES = {"w": (40, 25), "b": (25,)}


def update(seed: int) -> dict[str, np.ndarray]:
    """The update a ``noisy(seed, ...)`` device adds to the global weights every round (float32)."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 0.05, shape).astype(np.float32) for name, shape in SHAPES.items()}


def model() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def noisy(seed: int, samples: int) -> FedArrays:
    """Training adds ``update(seed)`` to the received weights and reports ``samples``."""
    step = update(seed)

    def train(weights):
        for name, a in weights.items():
            a += step[name]
        return samples, {"secret_metric": float(seed)}

    return FedArrays(model(), train)


def constant(value: float, samples: int) -> FedArrays:
    """Training sets every weight to ``value``: an update that is the same in every element."""

    def train(weights):
        for a in weights.values():
            a[...] = value
        return samples

    return FedArrays(model(), train)


def killed(seed: int, samples: int) -> FedArrays:
    """Takes part in the key phases, then dies by SIGKILL as training starts (after its shares went out)."""

    def train(weights):
        os.kill(os.getpid(), signal.SIGKILL)

    return FedArrays(model(), train)


def liar(seed: int, samples: int) -> FedArrays:
    """An honest trainer whose unmask answers carry false shares (every byte flipped)."""
    from fedsync.secagg import device as secagg_device

    honest = secagg_device.Session.unmask

    def unmask(self, body):
        answer = honest(self, body)
        flip = lambda text: secagg_device._keys.b64(bytes(x ^ 0xFF for x in secagg_device._keys.unb64(text, 32, "share")))
        return {kind: {peer: flip(text) for peer, text in shares.items()} for kind, shares in answer.items()}

    secagg_device.Session.unmask = unmask
    return noisy(seed, samples)


def hung(seed: int, samples: int) -> FedArrays:
    """Takes part in the key phases, then trains for longer than any test round lasts (alive, never answering)."""
    import time

    def train(weights):
        time.sleep(300)
        return samples

    return FedArrays(model(), train)


def garbler(seed: int, samples: int) -> FedArrays:
    """An honest trainer whose shares-phase answer carries ciphertexts no receiver can decrypt (one bit flipped in each)."""
    from fedsync.secagg import device as secagg_device

    honest = secagg_device.Session.shares

    def shares(self, body):
        answer = honest(self, body)
        keys = secagg_device._keys
        flip = lambda text: keys.b64(keys.unb64(text, keys.CIPHERTEXT_BYTES, "share")[:-1] + bytes([keys.unb64(text, keys.CIPHERTEXT_BYTES, "share")[-1] ^ 1]))  # noqa: E731
        return {"shares": {peer: flip(text) for peer, text in answer["shares"].items()}}

    secagg_device.Session.shares = shares
    return noisy(seed, samples)


def accuser(seed: int, samples: int, *accused: int) -> FedArrays:
    """A device that refuses every inbox claiming the shares of the devices ``accused`` (ids) do not decrypt: a lie."""
    from fedsync.secagg import device as secagg_device

    def inbox(self, body, unsubmitted=None):
        named = [p for p in accused if p in body.get("participants", [])]
        if named:
            raise secagg_device.BadShares(sorted(named), self.rep, self.me)
        return honest(self, body, unsubmitted) if unsubmitted is not None else honest(self, body)

    honest = secagg_device.Session.inbox
    secagg_device.Session.inbox = inbox
    return noisy(seed, samples)


def killed_after_masking(seed: int, samples: int) -> FedArrays:
    """Trains at once, masks its reply, and dies by SIGKILL 0.5 s later: its masked update is in the sum, its shares are gone."""
    import threading

    from fedsync.secagg import device as secagg_device

    honest = secagg_device.Session.mask

    def mask(self, fed, encoding, rep):
        payload = honest(self, fed, encoding, rep)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return payload

    secagg_device.Session.mask = mask
    return noisy(seed, samples)


def slow_noisy(seed: int, samples: int) -> FedArrays:
    """As ``noisy``, after 3 s of training: the devices killed after masking are dead by the unmask phase."""
    import time

    fed = noisy(seed, samples)
    train = fed.train

    def slow(weights):
        time.sleep(3.0)
        return train(weights)

    fed.train = slow
    return fed
