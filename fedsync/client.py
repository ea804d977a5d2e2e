"""The seed's import path for the coordinator: ``from fedsync.client import Federated, Remote``.

The coordinator lives in :mod:`fedsync.coordinator` and the HTTP transport in :mod:`fedsync.transports`;
this module only names the two classes where the original README's code finds them. Everything else is
imported from its home (or from :mod:`fedsync`'s short list).
"""

from .coordinator.federated import Federated
from .transports.remote import Remote

__all__ = ["Federated", "Remote"]
