"""A Keras device: `DEVICE=0 fedsync serve examples/keras_digits/device.py:model --port 8000`."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/digits.py

import keras
from digits import device_data
from fedsync.data import FedKeras
from network import create_model

x, y = device_data(int(os.environ.get("DEVICE", "0")))  # local training data


def train(model):
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return x.shape[0]


keras.utils.set_random_seed(1)
model = create_model()  # create a keras model
model = FedKeras(model, train)
