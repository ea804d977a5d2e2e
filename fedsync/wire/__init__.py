"""The wire: the bytes both sides agree on.

The array codec (safetensors layout), lossy wire formats, the per-round config message, the sample and
metric checks, bearer tokens and TLS certificates, deadlines and bounded reads, and the reply stream a merge
reads. Nothing here knows a round, a device or a transport.
"""
