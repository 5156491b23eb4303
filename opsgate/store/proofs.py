"""Used proof-of-possession ids (`used_proofs`): each accepted at most once, kept
until it could no longer be fresh by the database's clock."""

from __future__ import annotations

from sqlalchemy import Connection, delete

from opsgate.store import Store, schema

_u = schema.used_proofs


def insert_new(store: Store, conn: Connection, expiries: dict[str, float]) -> set[str]:
    """Record these proof ids (id -> when it may be forgotten); the ids that were not
    recorded before (safe under races: an id another transaction holds is skipped)."""
    if not expiries:
        return set()
    values = [{"jti": j, "expires_at": e} for j, e in expiries.items()]
    return set(conn.execute(store.insert_ignore(_u, values).returning(_u.c.jti)).scalars())


def forget_before(conn: Connection, horizon: float) -> None:
    conn.execute(delete(_u).where(_u.c.expires_at < horizon))
