"""Agents' rows and their key exports, behind named functions.

Each takes the caller's connection, so the transaction (and what commits with
it: the change feed, the audit event) stays visible where the work is done; only
`stored_score`, a read that belongs to no transaction, takes the store.
Functions that lock take rows in the one global order: level by level, and by
did within a level, as `(depth, did)` says (see `children`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.exc import OperationalError

from opsgate.store import Store, driver_failure, schema, unavailable

_a, _x = schema.agents, schema.agent_key_exports


def did_by_name(conn: Connection, name: str) -> str | None:
    row = conn.execute(select(_a.c.did).where(_a.c.name == name)).first()
    return None if row is None else str(row[0])


def dids(conn: Connection, status: str | None = None) -> list[str]:
    """Every agent's did (of one status), parents before children."""
    q = select(_a.c.did).order_by(_a.c.depth, _a.c.created_at, _a.c.name)
    if status is not None:
        q = q.where(_a.c.status == status)
    return [r[0] for r in conn.execute(q).all()]


def agent(conn: Connection, did: str) -> Row[Any] | None:
    """The whole row of an agent."""
    return conn.execute(select(_a).where(_a.c.did == did)).first()


def credentials_not_before(conn: Connection, did: str) -> float | None:
    """The agent's credential cut-off as committed (None: never cut, or no such agent)."""
    row = conn.execute(select(_a.c.credentials_not_before).where(_a.c.did == did)).first()
    return None if row is None or row[0] is None else float(row[0])


def lock(conn: Connection, did: str) -> None:
    """Lock the agent's row until the transaction ends (PostgreSQL)."""
    conn.execute(select(_a.c.did).where(_a.c.did == did).with_for_update())


def children(conn: Connection, parents: list[str], *, lock: bool = False) -> list[str]:
    """The dids of the agents directly below `parents`, by did; `lock` locks their rows."""
    q = select(_a.c.did).where(_a.c.parent_did.in_(parents)).order_by(_a.c.did)
    return [r[0] for r in conn.execute(q.with_for_update() if lock else q).all()]


def name_or_did_taken(conn: Connection, name: str, did: str) -> bool:
    row = conn.execute(select(_a.c.did).where((_a.c.name == name) | (_a.c.did == did))).first()
    return row is not None


def insert(conn: Connection, **values: Any) -> None:
    """A new agent row (columns as in `schema.agents`)."""
    conn.execute(_a.insert().values(**values))


def status(conn: Connection, did: str) -> str | None:
    row = conn.execute(select(_a.c.status).where(_a.c.did == did)).first()
    return None if row is None else str(row[0])


def set_status(
    conn: Connection,
    dids: list[str],
    status: str,
    reason: str | None,
    at: float,
    *,
    credentials_not_before: float | None = None,
) -> None:
    """Set the status (and its reason) of these agents; with `credentials_not_before`,
    cut their credentials issued so far too."""
    values: dict[str, Any] = {"status": status, "status_reason": reason, "updated_at": at}
    if credentials_not_before is not None:
        values["credentials_not_before"] = credentials_not_before
    conn.execute(update(_a).where(_a.c.did.in_(dids)).values(**values))


def suspended_by(conn: Connection, dids: list[str], reason: str) -> list[tuple[str, int]]:
    """(did, trust score) of those of `dids` suspended with exactly this reason."""
    rows = conn.execute(
        select(_a.c.did, _a.c.trust_score).where(
            _a.c.did.in_(dids), _a.c.status == "suspended", _a.c.status_reason == reason
        )
    ).all()
    return [(r[0], int(r[1])) for r in rows]


def set_status_reason(conn: Connection, dids: list[str], reason: str, at: float) -> None:
    conn.execute(update(_a).where(_a.c.did.in_(dids)).values(status_reason=reason, updated_at=at))


def with_status(conn: Connection, dids: list[str], statuses: list[str]) -> list[str]:
    """Those of `dids` whose status is one of `statuses`."""
    rows = conn.execute(select(_a.c.did).where(_a.c.did.in_(dids), _a.c.status.in_(statuses)))
    return [r[0] for r in rows]


def cascade_status(
    conn: Connection, dids: list[str], statuses: list[str], status: str, reason: str
) -> None:
    """Give those of `dids` whose status is one of `statuses` the new status."""
    conn.execute(
        update(_a)
        .where(_a.c.did.in_(dids), _a.c.status.in_(statuses))
        .values(status=status, status_reason=reason)
    )


def cut_credentials(conn: Connection, dids: list[str], not_before: float, at: float) -> None:
    """Revoke every credential of these agents issued at or before `not_before`."""
    conn.execute(
        update(_a)
        .where(_a.c.did.in_(dids))
        .values(credentials_not_before=not_before, updated_at=at)
    )


def latest_issued(conn: Connection, dids: list[str]) -> list[float]:
    """The latest iat issued to each of these agents (that has one), rows locked."""
    rows = conn.execute(
        select(_a.c.last_issued_at).where(_a.c.did.in_(dids)).with_for_update()
    ).all()
    return [float(r[0]) for r in rows if r[0] is not None]


def initial_trust(conn: Connection, did: str) -> tuple[int, float] | None:
    """(the score it was created with, when it was created)."""
    row = conn.execute(select(_a.c.initial_trust, _a.c.created_at).where(_a.c.did == did)).first()
    return None if row is None else (int(row[0]), float(row[1]))


def stored_score(store: Store, did: str) -> int | None:
    """An agent's trust score as stored, on a raw cursor of its own (outside any
    transaction of the caller's): the trust cache reads each active agent's score
    again twice a second on every replica, and a pooled SQLAlchemy connection cost
    ~10x the statement (~0.13 ms against ~0.014 ms here)."""
    sql = store.q("SELECT trust_score FROM agents WHERE did = ?")
    try:
        with store.raw_reader() as raw:
            cur = raw.cursor()
            cur.execute(sql, (did,))
            row = cur.fetchone()
    except OperationalError as exc:  # the checkout's, wrapped by SQLAlchemy
        raise unavailable(exc) from exc
    except store.driver_errors as exc:
        raise driver_failure(exc) from exc
    return None if row is None else int(row[0])


# -- key exports -------------------------------------------------------------------


def key_exports(conn: Connection, did: str) -> int | None:
    """How often the agent's key was exported (None: never)."""
    row = conn.execute(select(_x.c.exports).where(_x.c.did == did)).first()
    return None if row is None else int(row[0])


def record_key_export(conn: Connection, did: str, exports: int, at: float, *, first: bool) -> None:
    """Store the export count; `first` creates the row."""
    if first:
        conn.execute(_x.insert().values(did=did, exported_at=at, exports=exports))
    else:
        conn.execute(update(_x).where(_x.c.did == did).values(exported_at=at, exports=exports))


_NOTE_ISSUED = (
    "UPDATE agents SET last_issued_at = CASE WHEN last_issued_at IS NULL "
    "OR last_issued_at < ? THEN ? ELSE last_issued_at END "
    "WHERE did = ? RETURNING credentials_not_before, status"
)
_NOTE_ISSUED_FORMAT = _NOTE_ISSUED.replace("?", "%s")  # psycopg


def note_issued_on_cursor(
    cur: Any, did: str, iat: int, *, paramstyle: str = "qmark"
) -> tuple[float | None, str] | None:
    """Record the agent's latest iat (never moving it back), on an audit batch's DBAPI
    cursor; returns the agent's (credentials_not_before, status) as they are now, or
    None when there is no such agent."""
    cur.execute(_NOTE_ISSUED if paramstyle == "qmark" else _NOTE_ISSUED_FORMAT, (iat, iat, did))
    row = cur.fetchone()
    if row is None:
        return None
    return (None if row[0] is None else float(row[0])), str(row[1])


def root_records(conn: Connection) -> list[Row[Any, Any, Any, Any]]:
    """(did, record, signature, signer) of every root agent, rows locked (PostgreSQL)."""
    q = (
        select(_a.c.did, _a.c.record, _a.c.signature, _a.c.signer)
        .where(_a.c.parent_did.is_(None))
        .order_by(_a.c.did)
    )
    return list(conn.execute(q.with_for_update()).all())


def sign_root_again(conn: Connection, did: str, signature: str, signer: str) -> None:
    """A root agent's record, unchanged, under a new gate key's signature."""
    conn.execute(update(_a).where(_a.c.did == did).values(signature=signature, signer=signer))


def delegation_records(conn: Connection) -> list[Row[Any, Any, Any, Any, Any, Any]]:
    """(did, name, parent_did, record, signature, signer) of every agent."""
    return list(
        conn.execute(
            select(_a.c.did, _a.c.name, _a.c.parent_did, _a.c.record, _a.c.signature, _a.c.signer)
        ).all()
    )
