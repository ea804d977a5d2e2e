"""A torch device: `DEVICE=0 fedsync serve examples/torch_digits/device.py:model --port 8000`."""

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


def train(model):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    model.train()
    for epoch in range(3):
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return x.shape[0], {"loss": loss.item()}


model = FedTorch(create_model(), train)
