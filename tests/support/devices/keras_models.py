"""Keras devices for ``tests/fedsync_keras/test_adapter.py``: ``devices("tests.support.devices.keras_models:digits", "A")``.

Device processes train on one core each: the tests start several at once on a
shared machine, and TensorFlow would otherwise spawn a thread pool per core.
"""

from __future__ import annotations

import os

# Read by TensorFlow when it is first imported, so set before anything imports keras.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np  # noqa: E402

from fedsync.data import FedKeras  # noqa: E402

SEED = 0
DEVICE_CLASSES = {"A": range(0, 5), "B": range(5, 10)}  # each device mostly sees its own half


def digits_split() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits, split non-IID between devices A and B, and a test set neither sees.

    Device A holds 90% of the training images of digits 0-4 and 10% of those of
    5-9; device B the rest. Inputs are standardized with statistics agreed on in
    advance (those of the whole training pool), as a real deployment would ship
    its preprocessing with the model declaration.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)
    mean, std = x_pool.mean(axis=0), x_pool.std(axis=0) + 1e-6
    x_pool, x_test = (x_pool - mean) / std, (x_test - mean) / std
    rng = np.random.default_rng(SEED)
    parts: dict[str, list[int]] = {"A": [], "B": []}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(y_pool == digit))
        owner = "A" if digit in DEVICE_CLASSES["A"] else "B"
        other = "B" if owner == "A" else "A"
        cut = int(round(0.9 * len(indices)))
        parts[owner].extend(indices[:cut])
        parts[other].extend(indices[cut:])
    shards = {
        name: (x_pool[idx].astype("float32"), y_pool[idx].astype("int64"))
        for name, idx in ((name, np.array(sorted(idx))) for name, idx in parts.items())
    }
    return shards, (x_test.astype("float32"), y_test.astype("int64"))


def digits_model(width: int = 32):
    """The declaration shared by the digits devices and their coordinator."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def digits(device: str) -> FedKeras:
    """Device ``"A"`` or ``"B"``, written as the seed README writes a Keras device."""
    (x, y) = digits_split()[0][device]

    def train(model):
        model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        return x.shape[0]

    model = digits_model()
    model = FedKeras(model, train)
    return model


def small_model(width: int = 4):
    """A model with trainable and non-trainable weights (BatchNormalization's moving statistics)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(width),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )


def constant(value: float, samples: int) -> FedKeras:
    """A device whose training sets every weight to ``value`` and reports ``samples``."""
    # Built first so that this process's Keras layer names (dense_2, ...) differ
    # from the coordinator's: the specs must not depend on them.
    small_model(width=7)

    def train(model):
        for v in model.weights:
            v.assign(np.full(v.shape, value, dtype=v.dtype))
        return samples, {"loss": value}

    return FedKeras(small_model(), train)
