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
# Values the gate itself writes that look random by design and are not secrets: key
# material `audit verify` reads back, and a dynamic database user's name and lease id
# (the password is never recorded). Never altered.
STRUCTURAL = frozenset(
    {
        "kid",
        "retired",
        "public_key",
        "endorsement",
        "signature",
        "jkt",
        "hash",
        "prev_hash",
        "username",
        "lease_id",
    }
)

# Keys whose values are never written, whatever a caller passes in (`events.redact`).
REDACT_KEYS = frozenset(
    {
        "token",
        "credential_token",
        "approver_token",
        "password",
        "secret",
        "secret_value",
        "value",
        "private_key",
        "proof",
        "authorization",
    }
)


def marker(what: str) -> str:
    return f"[not encodable: {what}]"


def _text(value: str) -> str:
    """A string as an event may carry it: scrubbed, and encodable."""
    return scrub(value, long_words=False)


def clean(value: Any, depth: int = 0, structural: bool = False) -> Any:
    """`value` as canonical JSON can carry it, with secret-shaped text scrubbed."""
    t = type(value)
    if t is str:
        return encodable(value) if structural else _text(value)
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
    if t is dict or isinstance(value, Mapping):
        return _clean_mapping(value, depth, structural)
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


def _clean_mapping(value: Mapping[Any, Any], depth: int, structural: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = k if type(k) is str and k in _KEYS_SEEN else _key(k)
        sub = structural or key in STRUCTURAL
        # Scalars inline: this runs on every audit event.
        tv = type(v)
        if tv is str and not sub:
            out[key] = _text(v)
        elif v is None or tv is bool:
            out[key] = v
        else:
            out[key] = clean(v, depth + 1, sub)
    return out


# Field names seen to need no change (the gate's own few dozen): a bounded set.
_KEYS_SEEN: dict[str, None] = {}


def _key(key: object) -> str:
    if isinstance(key, str):
        text = scrub(str.__str__(key), long_words=False)
        if text == key and type(key) is str and len(_KEYS_SEEN) < 1024:
            _KEYS_SEEN[key] = None
        return text
    if type(key) in (int, float, bool) or key is None:
        return repr(key)
    return marker(f"{type(key).__name__} key")


# Field names that are plain: neither redacted (`REDACT_KEYS`, any case), nor
# structural, nor changed by the scrubber. A bounded set of the gate's own names.
_PLAIN_KEYS: dict[str, None] = {}


def _plain_key(key: str) -> bool:
    if key in _PLAIN_KEYS:
        return True
    if key.lower() in REDACT_KEYS or key in STRUCTURAL or _key(key) != key:
        return False
    if len(_PLAIN_KEYS) < 1024:
        _PLAIN_KEYS[key] = None
    return True


def flat_event(fields: dict[str, Any]) -> dict[str, Any] | None:
    """Redact + clean_event in one pass for the common event (plain field names,
    scalar values and lists of strings), None values left out; None for any other
    event, which takes the general path. The result is the general path's."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if type(k) is not str or not _plain_key(k):
            return None
        t = type(v)
        if t is str:
            out[k] = _text(v)
        elif v is None:
            continue
        elif t is bool:
            out[k] = v
        elif t is int:
            out[k] = v if _INT_MIN <= v <= _INT_MAX else marker("integer out of range")
        elif t is float:
            out[k] = v if math.isfinite(v) else marker(repr(v))
        elif t is list and all(type(x) is str for x in v):
            out[k] = [_text(x) for x in v]
        else:
            return None
    return out


def clean_event(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An event's fields, cleaned (see the module docstring)."""
    return _clean_mapping(fields, 0, False)


def scrub_log_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: log lines get the same cleaning as audit events."""
    return clean_event(event_dict)


def log_to_stderr() -> None:
    """Log lines go to stderr (stdout carries only results: tables, JSON, tokens), each
    scrubbed of secret-shaped text first, as audit events are. For every process the
    gate runs in: the CLI, and each worker `serve --workers N` spawns."""
    import sys

    import structlog

    processors = list(structlog.get_config()["processors"])
    if scrub_log_event not in processors:
        processors.insert(0, scrub_log_event)
    structlog.configure(
        processors=processors, logger_factory=structlog.PrintLoggerFactory(file=sys.stderr)
    )


__all__ = [
    "MAX_DEPTH",
    "REDACT_KEYS",
    "STRUCTURAL",
    "clean",
    "clean_event",
    "flat_event",
    "marker",
    "scrub_log_event",
]
