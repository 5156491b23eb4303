"""What keeps the web UI's pages safe to render and its forms safe to post.

- Headers on every /ui response (a pure ASGI middleware, so the JSON API's hot path
  pays nothing): a Content-Security-Policy with no inline script or style at all,
  frames refused, no sniffing, no referrer (approval ids are in URLs), no caching.
- The session cookie: HttpOnly, SameSite=Strict, Secure (and `__Host-`) when the
  external URL is https. It carries a random secret; the database keeps its hash.
- CSRF: every form carries a token derived from the session's secret (HMAC), so it
  is never stored and is worthless without the cookie; the sign-in form's token is
  derived the same way from a short-lived pre-session cookie (double submit), host-only
  (`__Host-`) over https like the session's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from opsgate.errors import UiRefusal as UiRefusal  # defined with every code's owner
from opsgate.server.paths import route_path

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000")
_MAX_FIELDS = 8
# A UI page: segments of letters, digits, '_', '-' and '.' (an agent's name may hold
# one), never a '.' or '..' segment.
_NEXT = re.compile(r"/ui(/(?!\.\.?(?:/|\Z))[A-Za-z0-9_.-]+)*/?\Z")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """Adds the UI's headers to every response under /ui (pages, static files, errors)."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers = [*_HEADERS, _HSTS] if https else list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The path the router matches: under a root path (an app mounted at /gate),
        # /gate/ui/... is the UI too.
        path = route_path(scope) if scope["type"] == "http" else ""
        if not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {h[0] for h in self.headers}
                kept = [h for h in message.get("headers", []) if h[0].lower() not in names]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def derive(secret: str, purpose: str) -> str:
    """A token for `purpose` bound to `secret` (HMAC-SHA256, base64url)."""
    mac = hmac.new(secret.encode("utf-8"), purpose.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def csrf_ok(secret: str | None, purpose: str, presented: str | None) -> bool:
    """Constant-time check of a form's token against the cookie it must be bound to."""
    if not secret or not presented:
        return False
    return hmac.compare_digest(derive(secret, purpose).encode(), presented.encode("utf-8"))


def parse_form(raw: bytes, content_type: str | None, allowed: frozenset[str]) -> dict[str, str]:
    """An urlencoded form: only `allowed` fields, each at most once, UTF-8."""
    if not raw:
        return {}  # nothing posted: the form's checks (its CSRF token first) refuse it
    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise UiRefusal("forms are posted urlencoded", code="form_invalid")
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise UiRefusal("the form could not be read", code="form_invalid") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed or key in form:
            raise UiRefusal("the form has an unexpected or repeated field", code="form_invalid")
        form[key] = value
    return form


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a page of the UI, never another site."""
    if value and _NEXT.match(value):
        return value
    return "/ui/approvals"
