"""fedsync on Ray: simulated devices in Ray actors, reached as ``ray://ACTOR/device-ID``.

Registers the ``ray`` transport through fedsync's ``register_transports`` hook
(entry point ``ray = "fedsync_ray"``). Importing this package does not import
ray; starting devices (:class:`RayDevices`) or building a :class:`RayRemote`
does (``pip install 'fedsync[ray]'``). ``run_simulation(..., backend="ray")``
starts its devices with :class:`RayDevices`. See docs/simulation.md.

Ray pickles its own messages (cloudpickle) between the processes of a cluster:
run it only among machines you trust. What fedsync sends is kept plain: str,
int, dicts of str, and numpy ``uint8`` buffers; ``device_fn`` goes as an import
path when it has one, else serialized by the driver with Ray's cloudpickle (the
driver's own code to its own actors); what an actor answers is plain data again,
checked like an HTTP reply.
"""

from __future__ import annotations

from fedsync.plugins.hookspecs import RegisterTransport, hookimpl

from .devices import BACKEND_CONFIG, RayDevices, connect
from .paths import device_fn_for_actors, device_fn_path
from .remote import NAMESPACE, RayRemote

__all__ = [
    "RayDevices",
    "RayRemote",
    "BACKEND_CONFIG",
    "NAMESPACE",
    "connect",
    "device_fn_path",
    "device_fn_for_actors",
    "register_transports",
]


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """Register :class:`RayRemote` for ``ray://`` URLs."""
    register("ray", RayRemote)
