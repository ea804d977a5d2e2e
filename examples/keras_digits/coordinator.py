"""FedAvg over the Keras devices: `python examples/keras_digits/coordinator.py`."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/digits.py

from digits import test_data
from fedsync import Federated, Remote
from fedsync.data import FedKeras
from network import create_model

urls = os.environ.get("FEDSYNC_REMOTES", "http://127.0.0.1:8000,http://127.0.0.1:8001").split(",")
x_test, y_test = test_data()

model = create_model()  # the created keras model
alg = Federated(
    data=FedKeras(model, None),
    remotes=[Remote(url) for url in urls],
)
for round in range(5):
    alg.round()  # a full federated averaging round to obtain an improved model
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)  # show some validation here
    print(f"round {round + 1}: test accuracy {accuracy:.3f}")
