"""Audit events as values: redaction, canonical JSON and the hash chain (pure).

An event passes through small processors before it is stored: redact (values of
secret-bearing keys) → sanitize (`clean_event`: what cannot be hashed or shown)
→ number and chain. Each stored event is the exact canonical JSON that was
hashed: hash = SHA-256(prev_hash ‖ body).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from opsgate.audit.sanitize import REDACT_KEYS as _REDACT_KEYS
from opsgate.audit.sanitize import clean, clean_event, flat_event
from opsgate.errors import AuditError

GENESIS_HASH = "0" * 64

REDACTED = "[redacted]"


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise AuditError(f"audit event is not serialisable: {exc}", code="audit_invalid") from exc


_SCALARS = frozenset({str, int, float, bool, type(None)})


def redact(value: Any) -> Any:
    """Replace the values of secret-bearing keys, recursively.

    Exact-type checks come first: events are flat dicts of scalars and short
    lists, and this runs on every append.
    """
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict and _REDACT_KEYS.isdisjoint([str(k).lower() for k in value]):
        return {k: (v if type(v) in _SCALARS else redact(v)) for k, v in value.items()}
    if t is list or t is tuple:
        return [v if type(v) in _SCALARS else redact(v) for v in value]
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if str(k).lower() in _REDACT_KEYS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def prepare(event_type: str, actor: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """An event as it will be hashed, before it is numbered: fields redacted and
    sanitised, None values left out."""
    event = flat_event(fields) if type(fields) is dict else None
    if event is None:
        event = {k: v for k, v in clean_event(redact(fields)).items() if v is not None}
    event["type"] = event_type
    if actor is not None:
        event["actor"] = clean(actor)
    return event


def merge(event: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add what a state change committed with the event reports (redacted, sanitised)."""
    event.update(clean_event(redact(extra)))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: float
    type: str
    actor: str | None
    event: dict[str, Any]
    prev_hash: str
    hash: str


def number(
    events: list[tuple[dict[str, Any], float]], seq: int, prev: str
) -> tuple[list[AuditRecord], list[tuple[Any, ...]]]:
    """Number and chain (event, at) pairs after the head (seq, prev): their records
    and the rows to store, (seq, at, type, actor, body, prev_hash, hash) each.
    Each event gets its `seq` and `at` set in place."""
    records: list[AuditRecord] = []
    rows: list[tuple[Any, ...]] = []
    for event, at in events:
        seq += 1
        event["seq"] = seq
        event["at"] = at
        body = canonical(event)
        digest = chain_hash(prev, body)
        actor = event.get("actor")
        records.append(AuditRecord(seq, at, event["type"], actor, event, prev, digest))
        rows.append((seq, at, event["type"], actor, body.decode("utf-8"), prev, digest))
        prev = digest
    return records, rows
