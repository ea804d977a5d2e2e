"""How the coordinator reaches a device, one transport per URL scheme.

:mod:`~fedsync.transports.base` is the contract (``Transport``, ``Answer``); a
:class:`~fedsync.transports.remote.Remote` speaks fedsync's protocol over one:
``http(s)://`` (:mod:`~fedsync.transports.http`), ``local://`` (:mod:`~fedsync.transports.local`),
devices in worker processes (:mod:`~fedsync.transports.process`) and, from the fedsync_ray
distribution, ``ray://``.
"""
