"""The trust ledger's statements, in one place: they run on the DBAPI cursor of an
audit event's transaction, so a score change, the rows that justify it and the
event that explains it commit together or not at all.

Lock order: the audit head (the batch holds it), the agent's row (FOR UPDATE;
SQLite's write lock), then the rows keyed by that agent (plan digests, charged
credentials). Every conflict on those rows therefore happens under the agent's
lock and cannot deadlock.
"""

from __future__ import annotations

import math
from typing import Any

from opsgate.store import Store
from opsgate.trust.scoring import Ledger

# Seconds a charged credential's record outlives the last moment it could be
# charged, so no replica whose clock lags the database's charges it twice.
SKEW_MARGIN_SECONDS = 600.0


class LedgerSQL:
    """The statements, rendered once for the store's driver."""

    def __init__(self, store: Store) -> None:
        q = store.q
        lock = "" if store.is_sqlite else " FOR UPDATE"
        cols = (
            "trust_score, created_at, trust_clean_since, trust_credit_window, trust_credit_points"
        )
        self._read = q(f"SELECT {cols} FROM agents WHERE did = ?{lock}")  # noqa: S608
        self._write = q(
            "UPDATE agents SET trust_score = ?, trust_clean_since = ?, trust_credit_window = ?, "
            "trust_credit_points = ? WHERE did = ?"
        )
        self._credit = q(
            "INSERT INTO trust_credits (agent_did, digest, at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING"
        )
        self._misuse = q(
            "INSERT INTO misuse_charges (jti, agent_did, forget_after) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING"
        )
        # The database's clock, never a caller's: a skewed replica or an injected
        # `now` cannot forget a charge another replica could still repeat.
        db_now = (
            "(julianday('now') - 2440587.5) * 86400.0"
            if store.is_sqlite
            else "EXTRACT(EPOCH FROM clock_timestamp())"
        )
        self._status = q(
            f"SELECT status, last_issued_at, credentials_not_before FROM agents WHERE did = ?{lock}"  # noqa: S608
        )
        self._suspend = q(
            "UPDATE agents SET status = 'suspended', status_reason = ?, updated_at = ?, "
            "credentials_not_before = ? WHERE did = ? AND status = 'active'"
        )
        self._prune = q(f"DELETE FROM misuse_charges WHERE forget_after < {db_now} - ?")  # noqa: S608

    def lock(self, cur: Any, did: str) -> Ledger | None:
        """The agent's score and ledger, under its row lock; None if there is no agent."""
        cur.execute(self._read, (did,))
        row = cur.fetchone()
        if row is None:
            return None
        score, created, clean, window, points = row
        return Ledger(
            int(score),
            float(created if clean is None else clean),
            None if window is None else float(window),
            int(points or 0),
        )

    def save(self, cur: Any, did: str, ledger: Ledger) -> None:
        cur.execute(
            self._write,
            (ledger.score, ledger.clean_since, ledger.window_start, ledger.credited, did),
        )

    def suspend(self, cur: Any, did: str, reason: str, at: float) -> bool:
        """Suspend an active agent in the score change's transaction (its row is locked):
        its status, and a cut-off revoking every credential issued to it so far.
        False when it was not active (already suspended or revoked)."""
        cur.execute(self._status, (did,))
        row = cur.fetchone()
        if row is None or row[0] != "active":
            return False
        _, last_issued, not_before = row
        cutoff = max([at, *(float(v) for v in (last_issued, not_before) if v is not None)])
        cur.execute(self._suspend, (reason, at, math.floor(cutoff * 1000) / 1000, did))
        return bool(cur.rowcount == 1)

    def first_credit(self, cur: Any, did: str, digest: str, at: float) -> bool:
        """Record that `digest` earned `did` credit; False if it had before."""
        cur.execute(self._credit, (did, digest, at))
        return bool(cur.rowcount == 1)

    def first_misuse(self, cur: Any, jti: str, did: str, forget_after: float) -> bool:
        """Record that credential `jti` was charged; False if it had been before."""
        cur.execute(self._misuse, (jti, did, forget_after))
        return bool(cur.rowcount == 1)

    def prune_misuse(self, cur: Any) -> None:
        """Forget charges no replica could repeat any more (by the database's clock)."""
        cur.execute(self._prune, (SKEW_MARGIN_SECONDS,))
