"""Reads of the audit log's rows that other parts of the gate ask, behind named functions."""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, select

from opsgate.store import schema

_e = schema.audit_events


def credential_issued(conn: Connection, jti: str) -> bool:
    """Whether a `credential.issued` event names credential `jti`.

    Issuance keeps no per-token row (verification never needs one), so the audit
    log is the record; the type index bounds the search to issuances.
    """
    needle = orjson.dumps({"jti": jti}).decode()[1:-1]  # "jti":"<jti>", as stored
    row = conn.execute(
        select(_e.c.seq)
        .where(_e.c.type == "credential.issued", _e.c.body.contains(needle, autoescape=True))
        .limit(1)
    ).first()
    return row is not None
