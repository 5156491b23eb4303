"""The path a request is routed by."""

from __future__ import annotations

import re
from typing import Any

# A path Starlette's `request.url.path` gives back unchanged (nothing it escapes,
# nothing a URL parser reads differently).
_PLAIN = re.compile(r"/[A-Za-z0-9/_.~-]*")


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


def request_path(request: Any) -> str:
    """`request.url.path` (the path a proof's htu must name), without building the
    request's whole URL (from its Host header and server) when the path is plain."""
    path: str = request.scope["path"]
    if _PLAIN.fullmatch(path):
        return path
    url_path: str = request.url.path
    return url_path
