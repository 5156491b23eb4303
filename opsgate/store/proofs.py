"""Used proof-of-possession ids (`used_proofs`): each accepted at most once, kept
until it could no longer be fresh by the database's clock.

Every request with a proof writes here, so the statements run on a raw DBAPI
cursor (a `DedicatedWriter`'s), rendered once for the driver: no pool checkout and
no statement compilation per request.
"""

from __future__ import annotations

import time
from typing import Any

from opsgate.store import Store

# Rows per INSERT statement: the batches of one group commit are rarely larger, and
# a bounded set of statement texts is rendered once each.
_CHUNK = 64


class ProofSQL:
    """The replay store's statements for one store's driver."""

    def __init__(self, store: Store) -> None:
        self._q = store.q
        # SQLite's clock is the one SQLite reads in this process (its `julianday('now')`
        # is this machine's time of day, as every process on the file sees it): read
        # here without a statement, one fewer in every batch's transaction.
        self._now = (
            None
            if store.is_sqlite
            else "SELECT CAST(extract(epoch FROM clock_timestamp()) AS double precision)"
        )
        self._forget = self._q("DELETE FROM used_proofs WHERE expires_at < ?")
        self._inserts: dict[int, str] = {}

    def db_time(self, cur: Any) -> float:
        """The database's own clock in epoch seconds (every replica agrees on it)."""
        if self._now is None:
            return time.time()
        cur.execute(self._now)
        return float(cur.fetchone()[0])

    def insert_new(self, cur: Any, expiries: dict[str, float]) -> set[str]:
        """Record these proof ids (id -> when it may be forgotten); the ids that were not
        recorded before (safe under races: an id another transaction holds is skipped).

        In id order: replicas racing on the same ids (one proof sent to both) then wait
        for each other in one order and never deadlock (PostgreSQL broke such a cycle
        by failing one batch, answered 503)."""
        items = sorted(expiries.items())
        new: set[str] = set()
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            cur.execute(self._insert(len(chunk)), [v for row in chunk for v in row])
            new.update(str(r[0]) for r in cur.fetchall())
        return new

    def forget_before(self, cur: Any, horizon: float) -> None:
        cur.execute(self._forget, (horizon,))

    def _insert(self, n: int) -> str:
        sql = self._inserts.get(n)
        if sql is None:
            rows = ", ".join(["(?, ?)"] * n)
            sql = self._q(
                f"INSERT INTO used_proofs (jti, expires_at) VALUES {rows} "  # noqa: S608 - placeholders only
                "ON CONFLICT DO NOTHING RETURNING jti"
            )
            self._inserts[n] = sql
        return sql
