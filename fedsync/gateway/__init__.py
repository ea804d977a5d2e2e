"""The HTTP/1.1 server machinery every listening role shares.

Today the device (:mod:`fedsync.device`) and the dashboard serve through it; a dial-out listener and an
aggregator will too. It knows sockets, keep-alive and TLS, not federated learning.
"""
