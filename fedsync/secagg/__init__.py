"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS): the coordinator learns only the sum of the sampled devices' updates.

Switch it on with ``Federated(data, remotes, secure_aggregation=SecAgg())``; devices that
serve an array FedData answer its phases (``pip install 'fedsync[secagg]'`` on both sides).

Modules, one job each: :mod:`.settings` (:class:`SecAgg`, the overflow bound),
:mod:`.keys` (X25519, HKDF-SHA256, AES-GCM), :mod:`.shamir` (checked Shamir sharing),
:mod:`.masking` (fixed point and ChaCha20 masks in the ring mod 2**64), :mod:`.device`
(the device's phases; :mod:`._bodies` checks their JSON bodies), :mod:`.coordinator` (the round's
phases and the streaming sum),
:mod:`.disputes` (whom to drop for undecryptable shares),
:mod:`.identity` (signed rounds: device certificates, ECDSA signatures, the consistency check).
"""

from .settings import SecAgg

__all__ = ["SecAgg"]
