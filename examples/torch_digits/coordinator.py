"""FedAvg over the torch devices: `python examples/torch_digits/coordinator.py`."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/digits.py

import torch
from digits import test_data
from fedsync import Federated, Remote
from fedsync.data import FedTorch
from network import create_model

urls = os.environ.get("FEDSYNC_REMOTES", "http://127.0.0.1:8000,http://127.0.0.1:8001").split(",")
x_test, y_test = (torch.from_numpy(a) for a in test_data())

model = create_model()
alg = Federated(data=FedTorch(model, None), remotes=[Remote(url) for url in urls])
for round in range(5):
    result = alg.round()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"round {round + 1}: train loss {result.metrics['loss']:.3f}, test accuracy {accuracy:.3f}")
