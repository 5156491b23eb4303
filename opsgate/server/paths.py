"""The path a request is routed by."""

from __future__ import annotations

from typing import Any


def route_path(scope: Any) -> str:
    """The path the router matches: without the root path an app mounted under one
    sees its requests' paths start with (as Starlette's router strips it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path
