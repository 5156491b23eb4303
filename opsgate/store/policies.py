"""The policies in force, as the gate that loaded them last published them: their
digest and when, in `gate_meta` (one row, key `policy_digest`). Each replica compares
it with its own at start and whenever the change feed names a new publication."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from opsgate.store import schema

_m = schema.gate_meta
KEY = "policy_digest"


@dataclass(frozen=True, slots=True)
class Published:
    digest: str
    at: float


def published(conn: Connection) -> Published | None:
    """The published digest, or None when no gate published one yet (or the row does
    not read as one: then no replica matches it, which fails closed)."""
    row = conn.execute(select(_m.c.value).where(_m.c.key == KEY)).first()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
        return Published(str(value["digest"]), float(value["at"]))
    except (ValueError, TypeError, KeyError):
        return Published("unreadable", 0.0)


def publish(conn: Connection, digest: str, at: float) -> None:
    """Make `digest` the one in force (inside the writer's transaction, which holds the
    audit head: publications are serialised, the last one wins)."""
    value = json.dumps({"digest": digest, "at": at}, separators=(",", ":"))
    if conn.execute(update(_m).where(_m.c.key == KEY).values(value=value)).rowcount == 0:
        conn.execute(_m.insert().values(key=KEY, value=value))
