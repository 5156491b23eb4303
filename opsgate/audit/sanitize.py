"""The audit processor that runs right after `redact`: every event can be hashed and
stored, and no free-text field keeps a secret-shaped substring.

A refusal must be recorded whatever the caller sent: params holding `2**64`, a NaN,
a lone surrogate or a structure nested past any sane depth cannot become canonical
JSON, and failing to hash the record would lose the refusal. Those parts (only
those) are replaced by a marker, `[not encodable: ...]`; a lone surrogate inside a
string becomes its escape. Strings pass through `errors.scrub` (tokens, JWTs, PEM,
long mixed base64url runs), except the fields the gate itself writes with key
material that verification reads back (`STRUCTURAL`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import orjson

from opsgate.errors import encodable, scrub

MAX_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what canonical JSON (orjson) encodes
# Public key material the gate writes and `audit verify` reads back: never altered.
STRUCTURAL = frozenset(
    {"kid", "retired", "public_key", "endorsement", "signature", "jkt", "hash", "prev_hash"}
)


def marker(what: str) -> str:
    return f"[not encodable: {what}]"


def clean(value: Any, depth: int = 0, structural: bool = False) -> Any:
    """`value` as canonical JSON can carry it, with secret-shaped text scrubbed."""
    t = type(value)
    if t is str:
        return encodable(value) if structural else scrub(value, long_words=False)
    if t is int:
        return value if _INT_MIN <= value <= _INT_MAX else marker("integer out of range")
    if t is float:
        return value if math.isfinite(value) else marker(repr(value))
    if value is None or t is bool:
        return value
    if isinstance(value, enum.Enum):
        return clean(value.value, depth, structural)
    if depth >= MAX_DEPTH:
        return marker("nested too deep")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = scrub(k, long_words=False) if type(k) is str else _key(k)
            out[key] = clean(v, depth + 1, structural or key in STRUCTURAL)
        return out
    if isinstance(value, (list, tuple)):
        return [clean(v, depth + 1, structural) for v in value]
    if isinstance(value, str):  # a str subclass: its text
        return clean(str.__str__(value), depth, structural)
    if isinstance(value, int):
        return clean(int(value), depth, structural)
    try:  # what orjson encodes natively (datetime, UUID, dataclasses) stays as it is
        orjson.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return marker(type(value).__name__)
    return value


def _key(key: object) -> str:
    if isinstance(key, str):
        return scrub(str.__str__(key), long_words=False)
    if type(key) in (int, float, bool) or key is None:
        return repr(key)
    return marker(f"{type(key).__name__} key")


def clean_event(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An event's fields, cleaned (see the module docstring)."""
    return clean(fields)  # type: ignore[no-any-return]


def scrub_log_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: log lines get the same cleaning as audit events."""
    return clean_event(event_dict)


__all__ = ["MAX_DEPTH", "STRUCTURAL", "clean", "clean_event", "marker", "scrub_log_event"]
