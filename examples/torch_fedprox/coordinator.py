"""FedProx over the torch devices: `python examples/torch_fedprox/coordinator.py`.

Each round sends the devices a configuration (a decaying learning rate, the local
epochs and FedProx's mu) and evaluates the merged model on the coordinator's
held-out digits (server-side evaluation).
"""

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


def schedule(server_round):
    return {"lr": 0.1 * 0.95**server_round, "epochs": 2, "mu": 0.1}


def accuracy(model, server_round):
    with torch.no_grad():
        return {"accuracy": (model(x_test).argmax(dim=1) == y_test).float().mean().item()}


alg = Federated(data=FedTorch(create_model(), None), remotes=[Remote(url) for url in urls], config=schedule, evaluate_fn=accuracy)
with alg:
    alg.fit(10)
for number, result in enumerate(alg.history, 1):
    print(f"round {number}: train loss {result.metrics['loss']:.3f}, test accuracy {result.server_evaluation.metrics['accuracy']:.3f}")
