"""The change feed (`state_changes`, numbered by the `state_changes` counter) and the
revoked credentials every replica holds in memory, behind named functions.

Each takes the caller's connection (or, inside an audit batch, its DBAPI cursor):
a change and its feed entry commit together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from opsgate.errors import StoreError
from opsgate.store import schema

_c, _n, _rv = schema.state_changes, schema.counters, schema.revoked_credentials
FEED = "state_changes"  # the counter that numbers the feed


def position(conn: Connection) -> int:
    """The id of the newest feed entry."""
    return int(conn.execute(select(_n.c.value).where(_n.c.name == FEED)).scalar_one())


def record(conn: Connection, kind: str, subject: str, at: float) -> None:
    """Append one entry (kind: agent | jti | key | policy) inside the writer's transaction."""
    row = conn.execute(
        update(_n).where(_n.c.name == FEED).values(value=_n.c.value + 1).returning(_n.c.value)
    ).first()
    if row is None:
        raise StoreError(f"counter {FEED!r} is missing; run migrations")
    conn.execute(insert(_c).values(id=int(row[0]), kind=kind, subject=subject, at=at))


_BUMP = "UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value"
_APPEND = "INSERT INTO state_changes (id, kind, subject, at) VALUES (?, ?, ?, ?)"
_FORMAT = (_BUMP.replace("?", "%s"), _APPEND.replace("?", "%s"))  # psycopg


def record_on_cursor(
    cur: Any, changes: list[tuple[str, str, float]], *, paramstyle: str = "qmark"
) -> None:
    """`record` for (kind, subject, at) entries on a DBAPI cursor (an audit batch's
    transaction); `paramstyle` is the driver's: qmark (sqlite3) or format (psycopg)."""
    bump, append = (_BUMP, _APPEND) if paramstyle == "qmark" else _FORMAT
    for kind, subject, at in changes:
        cur.execute(bump, (FEED,))
        change_id = int(cur.fetchone()[0])
        cur.execute(append, (change_id, kind, subject, at))


def changes_after(conn: Connection, after: int) -> list[Row[Any, Any, Any]]:
    """(id, kind, subject) of the entries after `after`, oldest first."""
    return list(
        conn.execute(
            select(_c.c.id, _c.c.kind, _c.c.subject).where(_c.c.id > after).order_by(_c.c.id)
        ).all()
    )


# -- revoked credentials ---------------------------------------------------------------


def revoked_since(conn: Connection, horizon: float) -> dict[str, float]:
    """jti -> expiry of every revocation still in force after `horizon`."""
    rows = conn.execute(select(_rv.c.jti, _rv.c.expires_at).where(_rv.c.expires_at > horizon))
    return {r[0]: float(r[1]) for r in rows.all()}


def revoked_expiry(conn: Connection, jtis: list[str]) -> dict[str, float]:
    """jti -> expiry of those of `jtis` that are revoked (asked 500 at a time)."""
    out: dict[str, float] = {}
    for i in range(0, len(jtis), 500):
        part = jtis[i : i + 500]
        for jti, exp in conn.execute(
            select(_rv.c.jti, _rv.c.expires_at).where(_rv.c.jti.in_(part))
        ).all():
            out[jti] = float(exp)
    return out


def is_revoked(conn: Connection, jti: str) -> bool:
    return conn.execute(select(_rv.c.jti).where(_rv.c.jti == jti)).first() is not None


def insert_revoked(
    conn: Connection, jti: str, expires_at: float, at: float, reason: str | None
) -> bool:
    """Record a revocation; False when the credential is revoked already (another
    replica's revocation that committed meanwhile is waited for, not an error)."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    row = conn.execute(
        insert(_rv)
        .values(jti=jti, expires_at=expires_at, revoked_at=at, reason=reason)
        .on_conflict_do_nothing()
        .returning(_rv.c.jti)
    ).first()
    return row is not None


def forget_revoked_before(conn: Connection, horizon: float) -> None:
    """Drop revocations of credentials that expired before `horizon`."""
    conn.execute(delete(_rv).where(_rv.c.expires_at < horizon))
