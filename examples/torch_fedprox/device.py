"""A FedProx device: `DEVICE=0 fedsync serve examples/torch_fedprox/device.py:model --port 8000`.

FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020)
adds mu/2 * ||w - w_global||^2 to the local loss, so a device whose data differs
from the others' cannot pull the model far from this round's global weights.
The coordinator chooses mu, the learning rate and the local epochs each round;
they arrive as `config`.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/digits.py

import torch
from digits import device_data
from fedsync.data import FedTorch
from network import create_model

torch.set_num_threads(1)  # several devices share this machine's cores
x, y = (torch.from_numpy(a) for a in device_data(int(os.environ.get("DEVICE", "0"))))
y = y.long()


def train(net, config):
    optimizer = torch.optim.SGD(net.parameters(), lr=config["lr"])
    net.train()
    for epoch in range(config["epochs"]):
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            # The proximal term: differentiable, against the weights received this round.
            (loss + model.proximal_term(config["mu"])).backward()
            optimizer.step()
    return x.shape[0], {"loss": loss.item()}


model = FedTorch(create_model(), train)
