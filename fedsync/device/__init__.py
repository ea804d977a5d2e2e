"""The device: a FedData served as a WSGI app (:class:`~fedsync.device.app.DeviceApp`) and the server that runs it.

The original README calls it a *server*. :func:`fedsync.serve` is the entry point.
"""

from .app import DeviceApp
from .serving import RunningServer, serve

__all__ = ["DeviceApp", "RunningServer", "serve"]
