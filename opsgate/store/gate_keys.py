"""The gate's signing keys (`gate_keys`): a chain, each key endorsed by the one
before it, behind named functions that take the caller's connection."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, insert, select, update

from opsgate.store import schema

_k = schema.gate_keys


class KeyRow(NamedTuple):
    """A `gate_keys` row as `chain_rows` gives it, read on a DBAPI cursor."""

    kid: Any
    public_key: Any
    created_at: Any
    prev_kid: Any
    endorsement: Any


def chain_rows_on(cur: Any) -> list[KeyRow]:
    """`chain_rows` on a DBAPI cursor (inside a snapshot another read holds)."""
    cur.execute("SELECT kid, public_key, created_at, prev_kid, endorsement FROM gate_keys")
    return [KeyRow(*r) for r in cur.fetchall()]


def chain_rows(conn: Connection) -> list[Row[Any, Any, Any, Any, Any]]:
    """(kid, public_key, created_at, prev_kid, endorsement) of every key."""
    return list(
        conn.execute(
            select(_k.c.kid, _k.c.public_key, _k.c.created_at, _k.c.prev_kid, _k.c.endorsement)
        ).all()
    )


def insert_key(
    conn: Connection,
    kid: str,
    public_key: str,
    created_at: float,
    *,
    prev_kid: str | None = None,
    endorsement: str | None = None,
) -> None:
    values: dict[str, Any] = {
        "kid": kid,
        "public_key": public_key,
        "created_at": created_at,
        "retired_at": None,
    }
    if prev_kid is not None:
        values |= {"prev_kid": prev_kid, "endorsement": endorsement}
    conn.execute(insert(_k).values(**values))


def lock_tip(conn: Connection, kid: str) -> bool:
    """Lock key `kid`'s row; True when it is still the chain's tip (no key names it
    as its predecessor)."""
    conn.execute(select(_k.c.kid).where(_k.c.kid == kid).with_for_update())
    return conn.execute(select(_k.c.kid).where(_k.c.prev_kid == kid)).first() is None


def mark_retired(conn: Connection, kid: str, at: float) -> None:
    conn.execute(update(_k).where(_k.c.kid == kid).values(retired_at=at))
