"""Simulated devices in worker processes: ``run_simulation(worker_kind="processes")``, over pipes, no pickle."""
