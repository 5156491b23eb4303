"""The approval web UI served by `opsgate serve` at /ui (see pages.py)."""

from opsgate.server.ui.pages import UiSettings, router
from opsgate.server.ui.security import CSP, SecurityHeaders

__all__ = ["CSP", "SecurityHeaders", "UiSettings", "router"]
