__version__ = "0.1.0"
"""fedsync's version (PEP 440)."""

PROTOCOL_VERSION = 1
"""The wire protocol's version, sent in every device's ``/info`` (docs/protocol.md)."""
