"""The trust engine: applies score changes in the store and runs the anomaly detectors.

The state database is the truth: a change is one `UPDATE ... SET trust_score =
clamp(trust_score + delta) RETURNING trust_score`, committed in the same
transaction as the audit event that explains it (cause, delta, resulting score,
evidence, operation). Concurrent changes therefore never lose an update. Scores
are cached for at most `cache_refresh_seconds`, so other replicas' changes show.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select

from opsgate.config import Config
from opsgate.errors import AgentError, OpsgateError
from opsgate.store import Store, schema
from opsgate.trust.anomalies import Activity, Anomaly, Observation, observe
from opsgate.trust.scoring import TrustEvent, clamp, delta_for

if TYPE_CHECKING:
    from opsgate.audit.log import Apply, AuditLog
    from opsgate.identity.registry import AgentRegistry
    from opsgate.state import AgentState, LiveState


@dataclass(frozen=True, slots=True)
class TrustChange:
    agent: str
    cause: str
    delta: int
    score: int
    reason: str
    at: float
    evidence: dict[str, Any] | None = None
    operation: str | None = None
    audit_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "cause": self.cause,
            "delta": self.delta,
            "score": self.score,
            "reason": self.reason,
            "at": self.at,
            "evidence": self.evidence,
            "operation": self.operation,
            "audit_seq": self.audit_seq,
        }


class TrustEngine:
    """`gate.trust`: scores, changes with causes, detectors, thresholds."""

    def __init__(
        self,
        *,
        store: Store,
        state: LiveState,
        config: Config,
        audit: AuditLog,
        agents: AgentRegistry,
    ) -> None:
        self._store = store
        self._state = state
        self._cfg = config.trust
        self._refresh = config.cache_refresh_seconds
        self._audit = audit
        self._agents = agents
        # did -> (score, fetched at (monotonic), audit seq of the change it came from).
        # A newer seq always wins, so concurrent changes never leave an older score behind.
        self._scores: dict[str, tuple[int, float, int]] = {}
        self._score_lock = threading.Lock()
        self._activity: dict[str, Activity] = {}
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------

    def score(self, did: str) -> int:
        hit = self._scores.get(did)
        mono = time.monotonic()
        if hit is not None and mono - hit[1] < self._refresh:
            return hit[0]
        seen = hit[2] if hit is not None else -1
        value = self._agents.stored_trust(did)
        with self._score_lock:
            current = self._scores.get(did)
            if current is None or current[2] == seen:  # no change landed while we read
                self._scores[did] = (value, mono, seen)
        return value

    def effective(self, agent: AgentState) -> int:
        """min(own score, every ancestor's): a low-trust parent caps its children."""
        score = self.score(agent.did)
        for did in agent.ancestors:
            score = min(score, self.score(did))
        return score

    # -- changing ---------------------------------------------------------------------

    def apply_change(
        self,
        did: str,
        cause: TrustEvent,
        *,
        reason: str,
        evidence: dict[str, Any] | None = None,
        operation: str | None = None,
    ) -> Apply:
        """The state change for one trust event, to run inside its audit event's transaction."""
        delta = delta_for(cause, self._cfg.deltas)
        q = self._store.q
        # The row lock (FOR UPDATE; SQLite's write lock) makes read-then-write atomic,
        # so the history can record the delta actually applied at the 0/1000 bounds.
        read = q(
            "SELECT trust_score FROM agents WHERE did = ?"
            if self._store.is_sqlite
            else "SELECT trust_score FROM agents WHERE did = ? FOR UPDATE"
        )
        write = q("UPDATE agents SET trust_score = ? WHERE did = ?")

        def run(cur: Any) -> dict[str, Any]:
            cur.execute(read, (did,))
            row = cur.fetchone()
            if row is None:
                raise AgentError(f"no agent {did[:80]!r}", code="agent_not_found")
            old = int(row[0])
            new = clamp(old + delta)
            if new != old:
                cur.execute(write, (new, did))
            return {
                "trust": {
                    "agent": did,
                    "cause": cause.value,
                    "delta": new - old,
                    "requested_delta": delta if new - old != delta else None,
                    "score": new,
                    "reason": reason,
                    "evidence": evidence,
                    "operation": operation,
                }
            }

        return run

    def after_change(self, record_event: dict[str, Any], at: float) -> TrustChange | None:
        """Cache the new score and apply the suspension threshold."""
        t = record_event.get("trust")
        if not t:
            return None
        did, score = t["agent"], int(t["score"])
        seq = int(record_event.get("seq") or 0)
        with self._score_lock:
            current = self._scores.get(did)
            if current is None or seq > current[2]:
                self._scores[did] = (score, time.monotonic(), seq)
        change = TrustChange(
            did,
            t["cause"],
            int(t["delta"]),
            score,
            t["reason"],
            at,
            t.get("evidence"),
            t.get("operation"),
            record_event.get("seq"),
        )
        # Only a loss suspends: after an operator reinstates a low-scoring agent, its
        # successes must not suspend it again; its next failure or violation will.
        asked = t["delta"] if t.get("requested_delta") is None else t["requested_delta"]
        if score < self._cfg.suspend_below and int(asked) < 0:
            self._suspend(did, score, at)
        return change

    def _suspend(self, did: str, score: int, at: float) -> None:
        st = self._state.agent(did)
        if st is None or st.status != "active":
            return
        # A concurrent change may have suspended or revoked it already: that is fine.
        with contextlib.suppress(OpsgateError):
            self._agents.suspend(
                did,
                reason=f"trust score {score} fell below {self._cfg.suspend_below}",
                actor="trust-engine",
                now=at,
            )

    def record(
        self,
        did: str,
        cause: TrustEvent,
        *,
        reason: str,
        now: float,
        evidence: dict[str, Any] | None = None,
        operation: str | None = None,
    ) -> TrustChange:
        """Apply one trust event on its own (not tied to an operation outcome); audited."""
        rec = self._audit.append(
            "trust.changed",
            actor=did,
            at=now,
            apply=self.apply_change(
                did, cause, reason=reason, evidence=evidence, operation=operation
            ),
        )
        change = self.after_change({**rec.event, "seq": rec.seq}, now)
        assert change is not None
        return change

    # -- detecting ----------------------------------------------------------------------

    def observe(
        self, agent: AgentState, resource: str, *, refused: bool, now: float
    ) -> list[Anomaly]:
        """Run the detectors on one event; each anomaly becomes an unusual-access change."""
        seen = self._seen_set(agent.did)
        seen_before = resource in seen
        with self._lock:
            before = self._activity.get(agent.did)
            if before is None:
                before = self._load_activity(agent.did)
            after, anomalies = observe(
                before, Observation(now, resource, refused, seen_before), self._cfg.anomalies
            )
            self._activity[agent.did] = after
        if not seen_before:
            seen.add(resource)
            self._remember_resource(agent.did, resource, now)
        if after.window_start != before.window_start or anomalies:
            self._save_activity(agent.did, after, now)
        for anomaly in anomalies:
            self.record(
                agent.did,
                TrustEvent.UNUSUAL_ACCESS,
                reason=anomaly.reason,
                now=now,
                evidence={"detector": anomaly.detector, **anomaly.evidence},
                operation=resource,
            )
        return anomalies

    def _seen_set(self, did: str) -> set[str]:
        seen = self._seen.get(did)
        if seen is None:
            with self._store.read() as conn:
                rows = conn.execute(
                    select(schema.trust_resources.c.resource).where(
                        schema.trust_resources.c.agent_did == did
                    )
                ).all()
            seen = {r[0] for r in rows}
            self._seen[did] = seen
        return seen

    def _remember_resource(self, did: str, resource: str, now: float) -> None:
        with self._store.write() as conn:
            conn.execute(
                self._store.insert_ignore(
                    schema.trust_resources,
                    {"agent_did": did, "resource": resource[:256], "first_seen": now},
                )
            )

    def _load_activity(self, did: str) -> Activity:
        with self._store.read() as conn:
            row = conn.execute(
                select(schema.trust_activity.c.state).where(
                    schema.trust_activity.c.agent_did == did
                )
            ).first()
        return Activity() if row is None else Activity.from_dict(orjson.loads(row[0]))

    def _save_activity(self, did: str, activity: Activity, now: float) -> None:
        body = orjson.dumps(activity.to_dict()).decode("utf-8")
        with self._store.write() as conn:
            conn.execute(
                self._store.upsert(
                    schema.trust_activity,
                    {"agent_did": did, "state": body, "updated_at": now},
                    ["agent_did"],
                )
            )

    # -- explaining ---------------------------------------------------------------------

    def history(self, did: str, *, limit: int = 1000) -> list[TrustChange]:
        """Every score change of the agent, oldest first, from the audit log.

        The first line is the score it was registered or delegated with.
        """
        initial, created = self._agents.initial_trust(did)
        out: list[TrustChange] = [
            TrustChange(did, "initial", 0, initial, "score at registration", created)
        ]
        for rec in self._audit.events(actor=did):  # all of them: every change is explained
            t = rec.event.get("trust")
            if t and t.get("agent") == did:
                out.append(
                    TrustChange(
                        did,
                        t["cause"],
                        int(t["delta"]),
                        int(t["score"]),
                        t.get("reason", ""),
                        rec.at,
                        t.get("evidence"),
                        t.get("operation"),
                        rec.seq,
                    )
                )
        return out if len(out) <= limit else [out[0], *out[-(limit - 1) :]]
