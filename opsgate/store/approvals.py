"""Approvers, their web UI sessions, approval requests and their decisions, behind
named functions. Each takes the caller's connection: the transaction (and the
audit event that commits with it) stays visible where the work is done."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from opsgate.store import schema

_a, _s = schema.approvers, schema.approver_sessions
_r, _d = schema.approval_requests, schema.approval_decisions

# -- approvers ---------------------------------------------------------------------


def approver_exists(conn: Connection, email: str) -> bool:
    return conn.execute(select(_a.c.email).where(_a.c.email == email)).first() is not None


def insert_approver(
    conn: Connection, email: str, token_hash: str, at: float, expires_at: float
) -> None:
    conn.execute(
        _a.insert().values(
            email=email,
            token_hash=token_hash,
            created_at=at,
            token_issued_at=at,
            token_expires_at=expires_at,
        )
    )


def replace_approver_token(
    conn: Connection, email: str, token_hash: str, at: float, expires_at: float
) -> bool:
    """Store a new token hash (and re-enable the approver); False when there is none."""
    res = conn.execute(
        update(_a)
        .where(_a.c.email == email)
        .values(
            token_hash=token_hash, disabled_at=None, token_issued_at=at, token_expires_at=expires_at
        )
    )
    return bool(res.rowcount)


def approvers(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(_a).order_by(_a.c.email)).all())


def approver(conn: Connection, email: str) -> Row[Any] | None:
    return conn.execute(select(_a).where(_a.c.email == email)).first()


def approver_credentials(conn: Connection, email: str) -> Row[Any, Any, Any] | None:
    """(token_hash, disabled_at, token_expires_at) of an approver."""
    return conn.execute(
        select(_a.c.token_hash, _a.c.disabled_at, _a.c.token_expires_at).where(_a.c.email == email)
    ).first()


def approver_token_state(conn: Connection, email: str) -> Row[Any, Any, Any] | None:
    """(token_issued_at, token_expires_at, disabled_at) of an approver."""
    return conn.execute(
        select(_a.c.token_issued_at, _a.c.token_expires_at, _a.c.disabled_at).where(
            _a.c.email == email
        )
    ).first()


def token_issued_at(conn: Connection, email: str) -> float:
    return float(conn.execute(select(_a.c.token_issued_at).where(_a.c.email == email)).scalar_one())


# -- web UI sessions -----------------------------------------------------------------


def drop_expired_sessions(conn: Connection, now: float) -> None:
    conn.execute(_s.delete().where(_s.c.expires_at <= now))


def insert_session(
    conn: Connection,
    session_hash: str,
    approver: str,
    token_issued_at: float,
    at: float,
    expires_at: float,
) -> None:
    conn.execute(
        _s.insert().values(
            id=session_hash,
            approver=approver,
            token_issued_at=token_issued_at,
            created_at=at,
            expires_at=expires_at,
        )
    )


def session(conn: Connection, session_hash: str) -> Row[Any] | None:
    return conn.execute(select(_s).where(_s.c.id == session_hash)).first()


def delete_session(conn: Connection, session_hash: str) -> None:
    conn.execute(_s.delete().where(_s.c.id == session_hash))


# -- requests and decisions ------------------------------------------------------------


def insert_request(conn: Connection, **values: Any) -> None:
    """A new request row (columns as in `schema.approval_requests`)."""
    conn.execute(_r.insert().values(**values))


def request(conn: Connection, approval_id: str, *, lock: bool = False) -> Row[Any] | None:
    """A request row; `lock` holds it until the transaction ends (FOR UPDATE)."""
    q = select(_r).where(_r.c.id == approval_id)
    return conn.execute(q.with_for_update() if lock else q).first()


def decisions(conn: Connection, approval_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(select(_d).where(_d.c.request_id == approval_id).order_by(_d.c.at)).all()
    )


def request_ids(conn: Connection, status: str | None = None) -> list[str]:
    q = select(_r.c.id).order_by(_r.c.created_at)
    if status is not None:
        q = q.where(_r.c.status == status)
    return [r[0] for r in conn.execute(q).all()]


def pending_count(
    conn: Connection, requester_did: str, now: float, since: float | None = None
) -> int:
    """How many of this agent's requests wait for a decision (pending, not yet expired,
    asked for after `since` when given)."""
    q = select(func.count()).where(
        _r.c.requester_did == requester_did, _r.c.status == "pending", _r.c.expires_at > now
    )
    if since is not None:
        q = q.where(_r.c.created_at > since)
    return int(conn.execute(q).scalar_one())


def due_requests(conn: Connection, now: float) -> list[tuple[str, str]]:
    """(id, status) of every pending or approved request past its expiry, in id order
    (sweeps on two replicas lock them in one order)."""
    rows = conn.execute(
        select(_r.c.id, _r.c.status)
        .where(_r.c.status.in_(["pending", "approved"]), _r.c.expires_at <= now)
        .order_by(_r.c.id)
    ).all()
    return [(r[0], r[1]) for r in rows]


def expire_request(conn: Connection, approval_id: str, status: str, now: float) -> bool:
    """Mark it expired, only from the status it was read in; False when it changed."""
    res = conn.execute(
        update(_r)
        .where(_r.c.id == approval_id, _r.c.status == status, _r.c.expires_at <= now)
        .values(status="expired", decided_at=now)
    )
    return bool(res.rowcount == 1)


def insert_decision(
    conn: Connection, approval_id: str, approver: str, decision: str, comment: str | None, at: float
) -> None:
    conn.execute(
        _d.insert().values(
            request_id=approval_id, approver=approver, decision=decision, comment=comment, at=at
        )
    )


def change_status(conn: Connection, approval_id: str, was: str, status: str, at: float) -> bool:
    """Move a request from `was` to `status`; False when it changed since it was read."""
    res = conn.execute(
        update(_r)
        .where(_r.c.id == approval_id, _r.c.status == was)
        .values(status=status, decided_at=at)
    )
    return bool(res.rowcount == 1)


def consume_request(conn: Connection, approval_id: str, now: float) -> bool:
    """Mark an approved, unexpired request consumed; False when it is not."""
    res = conn.execute(
        update(_r)
        .where(_r.c.id == approval_id, _r.c.status == "approved", _r.c.expires_at > now)
        .values(status="consumed", consumed_at=now)
    )
    return bool(res.rowcount == 1)
