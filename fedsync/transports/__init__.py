"""How the coordinator reaches a device, one transport per URL scheme.

``http(s)://`` (:mod:`~fedsync.transports.remote`), ``local://`` (:mod:`~fedsync.transports.local`), devices in
worker processes (:mod:`~fedsync.transports.process`) and, from the fedsync_ray distribution, ``ray://``.
"""
