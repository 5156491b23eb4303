"""Operators' rows (named operator tokens, stored only hashed), behind named functions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select, update

from opsgate.store import schema

_o = schema.operators


def exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(_o.c.name).where(_o.c.name == name)).first() is not None


def insert(conn: Connection, name: str, token_hash: str, at: float, expires_at: float) -> None:
    conn.execute(
        _o.insert().values(
            name=name,
            token_hash=token_hash,
            created_at=at,
            token_issued_at=at,
            token_expires_at=expires_at,
        )
    )


def replace_token(
    conn: Connection, name: str, token_hash: str, at: float, expires_at: float
) -> bool:
    """Store a new token hash (and re-enable the operator); False when there is none."""
    res = conn.execute(
        update(_o)
        .where(_o.c.name == name)
        .values(
            token_hash=token_hash, token_issued_at=at, token_expires_at=expires_at, disabled_at=None
        )
    )
    return bool(res.rowcount)


def disable(conn: Connection, name: str, at: float) -> bool:
    """Disable the operator's token; False when there is no such operator."""
    return bool(conn.execute(update(_o).where(_o.c.name == name).values(disabled_at=at)).rowcount)


def operator(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(_o).where(_o.c.name == name)).first()


def operators(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(_o).order_by(_o.c.name)).all())


def credentials(conn: Connection, name: str) -> Row[Any, Any, Any] | None:
    """(token_hash, disabled_at, token_expires_at) of an operator."""
    return conn.execute(
        select(_o.c.token_hash, _o.c.disabled_at, _o.c.token_expires_at).where(_o.c.name == name)
    ).first()
