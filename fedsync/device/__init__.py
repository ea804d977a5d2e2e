"""The device: a FedData served as a WSGI app (:class:`~fedsync.device.app.DeviceApp`) and the server that runs it.

The original README calls it a *server*. :func:`fedsync.serve` is the entry point; with ``connect=URL`` the
device dials out to a coordinator's listener instead of listening (:mod:`fedsync.device.dialer`).
"""

from .app import DeviceApp
from .dialer import DialRefused, RunningDialer
from .serving import RunningServer, serve

__all__ = ["DeviceApp", "RunningServer", "RunningDialer", "DialRefused", "serve"]
