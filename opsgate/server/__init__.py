"""`opsgate serve`: the gate as its own process, behind an HTTP API (see app.py)."""

from opsgate.server.app import create_app, settle_heap, uvicorn_options

__all__ = ["create_app", "settle_heap", "uvicorn_options"]
