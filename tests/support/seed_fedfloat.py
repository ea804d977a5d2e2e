"""The seed README's custom-data example, which examples/custom_fedfloat keeps verbatim."""

from examples.custom_fedfloat.fedfloat import FedFloat

__all__ = ["FedFloat"]
