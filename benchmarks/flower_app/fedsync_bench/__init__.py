"""Flower 1.42 deployment-mode peer for benchmarks/dial.py."""
