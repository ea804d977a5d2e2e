"""The coordinator: when and with whom. The round (sampling, quorum, deadlines), its history, callbacks,
checkpoints, server-side evaluation and the simulation entry point.

The original README calls it the *client*; ``from fedsync.client import Federated`` keeps working.
"""
