"""Devices that dial out: the coordinator's :class:`Listener` and the ``dial://NAME`` transport.

A device behind NAT opens outgoing connections only: it registers with a :class:`Listener`, long-polls for
work and answers each request it is handed. The coordinator reaches it as ``listener.remote("site-a")`` (or
``"dial://site-a"`` in ``Federated(remotes=...)``), a :class:`~fedsync.transports.remote.Remote` over a
:class:`DialTransport`. The wire is in docs/protocol.md, "Devices that dial out". The listener needs
``pip install 'fedsync[dial]'`` (aiohttp); importing this package does not.
"""

from .listener import Listener
from .transport import DialAnswer, DialTransport, dial_remote

__all__ = ["Listener", "DialTransport", "DialAnswer", "dial_remote"]
