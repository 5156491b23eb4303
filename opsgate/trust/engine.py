"""The trust engine: applies score changes in the store and runs the anomaly detectors.

The state database is the truth: a change is one `UPDATE ... SET trust_score =
clamp(trust_score + delta) RETURNING trust_score`, committed in the same
transaction as the audit event that explains it (cause, delta, resulting score,
evidence, operation). Concurrent changes therefore never lose an update. Scores
are cached for at most `cache_refresh_seconds`, so other replicas' changes show.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from opsgate.audit.writer import FEED, Change, Unit
from opsgate.boundary import typed_errors
from opsgate.config import HARD_TTL_CEILING_MINUTES, Config
from opsgate.errors import AgentError, OpsgateError, check_operator, check_reason, scrub, shown
from opsgate.store import Store
from opsgate.store import trust as trust_rows
from opsgate.store.ledger import LedgerSQL
from opsgate.trust.anomalies import Activity, Anomaly, Observation, observe
from opsgate.trust.scoring import MAX_SCORE, MIN_SCORE, Credit, TrustEvent, credit, delta_for

log = structlog.get_logger("opsgate.trust")
_ALREADY_CHARGED = "this credential has been charged as misuse before"
OPERATOR_EVENT = "trust.set"  # an operator's change; actor "operator", `by` names who
MISUSE_PRUNE_EVERY = 60.0
# Resources remembered in memory per agent: only a shortcut (the database decides what
# is new), bounded because an agent chooses its resources (any path under its scope).
SEEN_PER_AGENT = 10_000
# How long after its expiry a credential can still be charged as misuse.
MISUSE_CHARGE_WINDOW = (
    HARD_TTL_CEILING_MINUTES * 60.0
)  # seconds between clean-ups of charged-misuse records


def _trust_record(
    did: str,
    cause: TrustEvent,
    requested: int,
    result: Credit,
    reason: str,
    evidence: dict[str, Any] | None,
    operation: str | None,
) -> dict[str, Any]:
    """The `trust` part of an audit event: what changed, why, and any credit withheld."""
    return {
        "agent": did,
        "cause": cause.value,
        "delta": result.delta,
        "requested_delta": requested if result.delta != requested else None,
        "score": result.ledger.score,
        "reason": reason,
        "evidence": evidence,
        "operation": operation,
        "withheld": [{"rule": r, "reason": why} for r, why in result.withheld] or None,
    }


if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog
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
    requested_delta: int | None = None  # when the rules or the 0/1000 bounds cut it
    withheld: tuple[dict[str, str], ...] = ()  # each {rule, reason}: why credit was cut
    by: str | None = None  # the operator, for a score an operator set

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
            "requested_delta": self.requested_delta,
            "withheld": list(self.withheld),
            "by": self.by,
        }

    @classmethod
    def from_event(cls, t: dict[str, Any], at: float, seq: int | None) -> TrustChange:
        requested = t.get("requested_delta")
        return cls(
            t["agent"],
            t["cause"],
            int(t["delta"]),
            int(t["score"]),
            t.get("reason", ""),
            at,
            t.get("evidence"),
            t.get("operation"),
            seq,
            None if requested is None else int(requested),
            tuple(t.get("withheld") or ()),
            t.get("by"),
        )


@typed_errors
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
        self._ledger_sql = LedgerSQL(store)
        self._next_misuse_prune = 0.0

    def _misuse_prune_due(self) -> bool:
        """At most once per MISUSE_PRUNE_EVERY seconds (monotonic, this process)."""
        mono = time.monotonic()
        with self._score_lock:
            if mono < self._next_misuse_prune:
                return False
            self._next_misuse_prune = mono + MISUSE_PRUNE_EVERY
            return True

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

    def score_change(
        self,
        did: str,
        cause: TrustEvent,
        *,
        reason: str,
        now: float,
        evidence: dict[str, Any] | None = None,
        operation: str | None = None,
        digest: str | None = None,
        misuse: tuple[str, float] | None = None,
    ) -> Change:
        """The score change for one trust event, to commit with its audit event (a `Unit`).

        `digest` is the plan a success was for (the same plan earns once); `misuse`
        is (jti, forget_after) of a credential charged as misuse (charged once).
        """
        delta = delta_for(cause, self._cfg.deltas)
        ledger_sql = self._ledger_sql
        prune = misuse is not None and self._misuse_prune_due()

        def run(cur: Any) -> dict[str, Any]:
            # The row lock (FOR UPDATE; SQLite's write lock) makes read-then-write
            # atomic, so the history records the delta actually applied.
            before = ledger_sql.lock(cur, did)
            if before is None:
                raise AgentError(f"no agent {did[:80]!r}", code="agent_not_found")
            if misuse is not None and not ledger_sql.first_misuse(cur, misuse[0], did, misuse[1]):
                result = Credit(0, before, (("already_charged", _ALREADY_CHARGED),))
            else:
                repeated = (
                    digest is not None
                    and delta > 0
                    and not ledger_sql.first_credit(cur, did, digest, now)
                )
                result = credit(
                    before,
                    delta,
                    now=now,
                    repeated=repeated,
                    rules=self._cfg.credit,
                    approval_below=self._cfg.approval_below,
                )
            if prune:
                ledger_sql.prune_misuse(cur)
            if result.ledger != before:
                ledger_sql.save(cur, did, result.ledger)
            asked = 0 if any(r == "already_charged" for r, _ in result.withheld) else delta
            return {
                "trust": _trust_record(did, cause, delta, result, reason, evidence, operation),
                **self._suspend_in(cur, did, result.ledger.score, asked, now),
            }

        return Change(run, self.lock_order(did))

    def lock_order(self, did: str) -> tuple[int, str]:
        """Where `did`'s row lock sits in the global lock order: (depth, did)."""
        st = self._state.agent(did)
        return (0 if st is None else st.depth, did)

    def _suspend_in(self, cur: Any, did: str, score: int, asked: int, at: float) -> dict[str, Any]:
        """In the score change's transaction: a loss that leaves the agent below
        `suspend_below` suspends it there and then, so no replica can see the score
        without the suspension. Only a loss suspends: after an operator reinstates a
        low-scoring agent its successes must not suspend it again; its next failure
        or violation will (the loss asked for decides: at 0 nothing more is taken).
        """
        floor = self._cfg.suspend_below
        if score >= floor or asked >= 0:
            return {}
        reason = f"trust score {score} fell below {floor}"
        if not self._ledger_sql.suspend(cur, did, reason, at):
            return {}
        return {"suspended": reason, FEED: [("agent", did)]}

    def set_score(
        self, did: str, score: object, *, reason: str, actor: str, now: float
    ) -> TrustChange:
        """An operator sets an agent's score (the one way over `approval_below` without
        the clean-history wait); audited with who and why. A lowered score is a loss."""
        if type(score) is not int or not MIN_SCORE <= score <= MAX_SCORE:
            raise AgentError(
                f"trust score must be an integer 0-1000, got "
                f"{score if type(score) is int else shown(score)}",
                code="trust_score_invalid",
            )
        if not isinstance(reason, str) or not reason.strip():
            raise AgentError("setting a trust score needs a reason", code="reason_required")
        reason = check_reason(reason)
        if not isinstance(actor, str) or not actor.strip():
            raise AgentError("setting a trust score needs who sets it", code="actor_required")
        by = check_operator(actor)
        ledger_sql = self._ledger_sql

        def run(cur: Any) -> dict[str, Any]:
            before = ledger_sql.lock(cur, did)
            if before is None:
                raise AgentError(f"no agent {did[:80]!r}", code="agent_not_found")
            clean = now if score < before.score else before.clean_since
            after = replace(before, score=score, clean_since=clean)
            if after != before:
                ledger_sql.save(cur, did, after)
            result = Credit(score - before.score, after)
            return {
                "trust": _trust_record(
                    did, TrustEvent.OPERATOR, score - before.score, result, reason, None, None
                )
                | {"by": by},
                **self._suspend_in(cur, did, score, score - before.score, now),
            }

        rec = self._audit.commit(
            Unit(
                OPERATOR_EVENT,
                {"agent": did},
                actor="operator",
                at=now,
                change=Change(run, self.lock_order(did)),
            )
        )
        change = self.after_change({**rec.event, "seq": rec.seq}, now)
        assert change is not None
        return change

    def after_change(self, record_event: dict[str, Any], at: float) -> TrustChange | None:
        """Cache the new score; a suspension that committed with it cascades."""
        t = record_event.get("trust")
        if not t:
            return None
        did, score = t["agent"], int(t["score"])
        seq = int(record_event.get("seq") or 0)
        with self._score_lock:
            current = self._scores.get(did)
            if current is None or seq > current[2]:
                self._scores[did] = (score, time.monotonic(), seq)
        change = TrustChange.from_event(t, at, record_event.get("seq"))
        suspended = record_event.get("suspended")
        if suspended:
            self._cascade(did, str(suspended), at)
        return change

    def _cascade(self, did: str, reason: str, at: float) -> None:
        """After a suspension committed with its score change: drop this process's
        view of the agent and suspend its descendants by cascade (audited as
        `agent.suspended`). The agent itself is suspended whatever happens here, and
        its descendants are refused through it; a failure is logged, never hidden."""
        self._state.invalidate_agent(did)
        try:
            self._agents.suspend(
                did, reason=reason, actor="trust-engine", now=at, changed_before=True
            )
        except OpsgateError as exc:
            log.error("suspension cascade not written", agent=did, code=exc.code)

    def record(
        self,
        did: str,
        cause: TrustEvent,
        *,
        reason: str,
        now: float,
        evidence: dict[str, Any] | None = None,
        operation: str | None = None,
        misuse: tuple[str, float] | None = None,
    ) -> TrustChange:
        """Apply one trust event on its own (not tied to an operation outcome); audited.

        `misuse` = (jti, forget_after): charge that credential once, across restarts
        and replicas (the record is written in the charge's transaction).
        """
        score_change = self.score_change(
            did,
            cause,
            reason=reason,
            now=now,
            evidence=evidence,
            operation=operation,
            misuse=misuse,
        )
        rec = self._audit.commit(Unit("trust.changed", actor=did, at=now, change=score_change))
        change = self.after_change({**rec.event, "seq": rec.seq}, now)
        assert change is not None
        return change

    # -- detecting ----------------------------------------------------------------------

    def observe(
        self, agent: AgentState, resource: str, *, refused: bool, now: float
    ) -> list[Anomaly]:
        """Run the detectors on one event; each anomaly becomes an unusual-access change."""
        resource = scrub(resource, long_words=False)  # a token pasted into it is not kept
        seen = self._seen_set(agent.did)
        seen_before = resource in seen
        if not seen_before:
            # This replica's set was loaded once: another may have recorded the resource
            # since. The database decides, so a first access is first on one replica only.
            seen_before = not self._remember_resource(agent.did, resource, now)
            if len(seen) < SEEN_PER_AGENT:
                seen.add(resource)
        with self._lock:
            before = self._activity.get(agent.did)
            if before is None:
                before = self._load_activity(agent.did)
            after, anomalies = observe(
                before, Observation(now, resource, refused, seen_before), self._cfg.anomalies
            )
            self._activity[agent.did] = after
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
                seen = trust_rows.seen_resources(conn, did, limit=SEEN_PER_AGENT)
            self._seen[did] = seen
        return seen

    def _remember_resource(self, did: str, resource: str, now: float) -> bool:
        """Record a first sighting; False when it was recorded before (by any replica)."""
        with self._store.write() as conn:
            return trust_rows.remember_resource(self._store, conn, did, resource, now)

    def _load_activity(self, did: str) -> Activity:
        with self._store.read() as conn:
            stored = trust_rows.activity(conn, did)
        return Activity() if stored is None else Activity.from_dict(orjson.loads(stored))

    def _save_activity(self, did: str, activity: Activity, now: float) -> None:
        body = orjson.dumps(activity.to_dict()).decode("utf-8")
        with self._store.write() as conn:
            trust_rows.save_activity(self._store, conn, did, body, now)

    # -- explaining ---------------------------------------------------------------------

    def history(self, did: str, *, limit: int = 1000) -> list[TrustChange]:
        """Every score change of the agent, oldest first, from the audit log.

        The first line is the score it was registered or delegated with.
        """
        initial, created = self._agents.initial_trust(did)
        out: list[TrustChange] = [
            TrustChange(did, "initial", 0, initial, "score at registration", created)
        ]
        own = self._audit.events(actor=did)  # all of them: every change is explained
        by_operator = self._audit.events(event_type=OPERATOR_EVENT)
        for rec in heapq.merge(own, by_operator, key=lambda r: r.seq):
            t = rec.event.get("trust")
            if t and t.get("agent") == did:
                out.append(TrustChange.from_event(t, rec.at, rec.seq))
        return out if len(out) <= limit else [out[0], *out[-(limit - 1) :]]
