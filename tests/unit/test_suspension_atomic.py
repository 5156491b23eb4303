"""A loss below `suspend_below` suspends the agent in the score change's own
transaction: no replica ever sees the score without the suspension, and one whose
view still says "active" cannot issue it a credential.

Two gates on one state dir stand for two replicas (each has its own view of the
agents, refreshed at most every `cache_refresh_seconds`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import failing_audit_writes
from sqlalchemy import select

import opsgate
from opsgate.store import schema
from opsgate.trust.scoring import TrustEvent

SCOPE = ["deploy:staging"]


def _status(gate: opsgate.Gate, did: str) -> str:
    with gate.store.read() as conn:
        return str(
            conn.execute(select(schema.agents.c.status).where(schema.agents.c.did == did)).scalar()
        )


def test_the_suspension_commits_with_the_loss_and_a_stale_replica_cannot_issue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = opsgate.Gate.open(tmp_path / "state")
    b = opsgate.Gate.open(tmp_path / "state")
    try:
        did = a.register_agent("edge", SCOPE, sponsor="ops@company.com", trust_score=510).did
        assert b.agents.state(did).status == "active"  # b's view: cached, active
        # b stays within its refresh window however slow the steps below (a refresh
        # would refuse the issuance before it is written, from a fresh view).
        monkeypatch.setattr(b.state, "maybe_refresh", lambda: None)
        change = a.trust.record(did, TrustEvent.POLICY_VIOLATION, reason="x", now=time.time())
        assert change.score == 435
        [event] = [r.event for r in a.audit.events(event_type="trust.changed")]
        assert event["suspended"] == "trust score 435 fell below 500"
        assert _status(a, did) == "suspended"
        # b has not refreshed yet: its view still says active, the store says no.
        stale = b.state.agent(did)
        assert stale is not None and stale.status == "active"
        with pytest.raises(opsgate.CredentialError) as exc:
            b.credential_manager.issue_credential(did, SCOPE)
        assert exc.value.code == "agent_suspended"
        issued = [r.event for r in b.audit.events(event_type="credential.issued")]
        assert [e.get("inactive_on_issue") for e in issued] == ["suspended"]
        assert a.audit.verify().ok
    finally:
        b.close()
        a.close()


def test_a_suspension_that_cannot_be_written_loses_the_score_change_too(
    tmp_path: Path,
) -> None:
    """Fail closed: the score change and the suspension are one write; when it
    fails, neither happened (the agent keeps its score and stays usable)."""
    gate = opsgate.Gate.open(tmp_path / "state")
    try:
        did = gate.register_agent("edge", SCOPE, sponsor="ops@company.com", trust_score=510).did
        with failing_audit_writes(gate.audit), pytest.raises(opsgate.AuditError):
            gate.trust.record(did, TrustEvent.POLICY_VIOLATION, reason="x", now=time.time())
        assert _status(gate, did) == "active"
        assert gate.agents.stored_trust(did) == 510
        gate.trust.record(did, TrustEvent.POLICY_VIOLATION, reason="x", now=time.time())
        assert _status(gate, did) == "suspended"
    finally:
        gate.close()
