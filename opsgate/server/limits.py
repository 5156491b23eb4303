"""Request limits: body size (413), JSON depth, and a token bucket of refusals.

The refusal bucket is per client address and per agent, in memory per replica:
each refused request takes a token, tokens come back at `rate` per second up to
`burst`, and an empty bucket answers 429 before the database is touched. So a
flood of forged tokens costs the gate a dictionary lookup each, not an audit row
and an fsync each.
"""

from __future__ import annotations

import threading
from typing import Any

from opsgate.cache import BoundedCache
from opsgate.server.errors import HttpRefusal

_MAX_KEYS = 100_000


class RefusalLimiter:
    def __init__(self, *, burst: int, rate: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._buckets: BoundedCache[str, tuple[float, float]] = BoundedCache(_MAX_KEYS)
        self._lock = threading.Lock()

    def _level(self, bucket: tuple[float, float] | None, now: float) -> float:
        tokens, at = bucket or (self._burst, now)
        return min(self._burst, tokens + (now - at) * self._rate)

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until `key` may be refused again, or None while it has tokens.

        Asked of every request (its address, then its agent), so without the lock: a
        bucket is one tuple, read whole (a dict lookup is atomic), and a refusal
        counted meanwhile is seen by the next request."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        level = self._level(bucket, now)
        return None if level >= 1.0 else (1.0 - level) / self._rate

    def charge(self, key: str, now: float) -> None:
        with self._lock:
            level = self._level(self._buckets.get(key), now)
            self._buckets.put(key, (max(0.0, level - 1.0), now))


def json_depth_ok(raw: bytes, max_depth: int) -> bool:
    """Whether JSON text nests at most `max_depth` arrays/objects (strings skipped),
    checked before parsing so a deeply nested body never reaches a parser."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return True  # no deeper than it opens (the agents' bodies: a pass in C)
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` are refused with 413, whether the
    size is announced (Content-Length) or only found while reading (chunked)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await _refuse_413(send, self.max_bytes)
                    return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HttpRefusal(
                        f"request body is larger than {self.max_bytes} bytes",
                        code="body_too_large",
                    )
            return message

        await self.app(scope, limited, send)


async def _refuse_413(send: Any, max_bytes: int) -> None:
    import orjson

    body = orjson.dumps(
        {
            "error": "HttpRefusal",
            "code": "body_too_large",
            "message": f"request body is larger than {max_bytes} bytes",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
