"""Fixtures of the integration tests that more than one module uses."""

from secret_helpers import world

__all__ = ["world"]
