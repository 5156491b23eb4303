"""What the anomaly detectors remember per agent: the resources it has touched
(`trust_resources`) and its activity window (`trust_activity`). The score itself
lives on the agent's row (see `ledger`)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from opsgate.store import Store, schema

_res, _act = schema.trust_resources, schema.trust_activity


def seen_resources(conn: Connection, did: str, *, limit: int) -> set[str]:
    """At most `limit` of the resources the agent has touched (its first ones)."""
    q = select(_res.c.resource).where(_res.c.agent_did == did)
    rows = conn.execute(q.order_by(_res.c.first_seen).limit(limit)).all()
    return {r[0] for r in rows}


def remember_resource(store: Store, conn: Connection, did: str, resource: str, at: float) -> bool:
    """Record a first sighting; False when the resource was recorded already (it is
    left as it is)."""
    values = {"agent_did": did, "resource": resource[:256], "first_seen": at}
    inserted = conn.execute(store.insert_ignore(_res, values).returning(_res.c.agent_did))
    return inserted.first() is not None


def activity(conn: Connection, did: str) -> str | None:
    """The agent's activity window as stored (JSON), if any."""
    row = conn.execute(select(_act.c.state).where(_act.c.agent_did == did)).first()
    return None if row is None else str(row[0])


def save_activity(store: Store, conn: Connection, did: str, state: str, at: float) -> None:
    conn.execute(
        store.upsert(_act, {"agent_did": did, "state": state, "updated_at": at}, ["agent_did"])
    )
