"""A non-IID split of scikit-learn's digits for the examples: each device mostly sees some digits.

Every process computes the same split, so a device only needs its number.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DEVICES = 2


def split():
    """(device shards, held-out test set); inputs scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    rng = np.random.default_rng(0)
    # Device 0 holds 90% of digits 0-4 and 10% of 5-9; device 1 the other way round.
    owner = np.where(y_train < 5, 0, 1)
    swap = rng.random(len(y_train)) < 0.1
    owner = np.where(swap, 1 - owner, owner)
    shards = [(x_train[owner == d], y_train[owner == d]) for d in range(DEVICES)]
    return shards, (x_test, y_test)


def device_data(device):
    """This device's private (x, y)."""
    return split()[0][device]


def test_data():
    """The coordinator's held-out (x, y) for validation; no device has it."""
    return split()[1]
