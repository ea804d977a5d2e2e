"""The coordinator's live dashboard (docs/dashboard.md): ``Federated(dashboard=...)`` or ``fedsync dashboard DIR``."""

from .app import RUN_FILE, Dashboard, FolderRun, LiveRun, serve_dashboard

__all__ = ["Dashboard", "LiveRun", "FolderRun", "serve_dashboard", "RUN_FILE"]
