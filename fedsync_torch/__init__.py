"""FedTorch: torch.nn.Module state dicts as federated data (filled in by the adapters issue)."""
