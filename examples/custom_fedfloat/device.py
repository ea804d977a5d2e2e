"""A device holding a float: `DEVICE_VALUE=1.0 fedsync serve examples/custom_fedfloat/device.py:data --port 8000`."""

import os

from fedfloat import FedFloat

data = FedFloat(float(os.environ.get("DEVICE_VALUE", "1.0")))
