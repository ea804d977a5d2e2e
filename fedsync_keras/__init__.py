"""FedKeras: Keras 3 models as federated data (filled in by the adapters issue)."""
