"""Average the devices' floats: `python examples/custom_fedfloat/coordinator.py`."""

import os

from fedsync import Federated, Remote

from fedfloat import FedFloat

urls = os.environ.get("FEDSYNC_REMOTES", "http://127.0.0.1:8000,http://127.0.0.1:8001").split(",")
# Remote(url) sends $FEDSYNC_TOKEN when it is set. The 10.0 is not used: FedFloat.receive keeps
# each device's own value in the first round (see the README's "Custom data").
alg = Federated(data=FedFloat(10.0), remotes=[Remote(url) for url in urls])
for round in range(3):
    alg.round()
    print(f"round {round + 1}: value {alg.data.value}")
