"""Credential misuse is charged once per credential: across restarts and replicas.

The record of the charge is written in the charge's own transaction (neither lands
without the other) and is forgotten only when no replica could charge it again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import DEPLOY_SCOPE, audit_events, stored_trust
from sqlalchemy import func, select, text, update

import opsgate
from opsgate.store import schema
from opsgate.store.ledger import SKEW_MARGIN_SECONDS
from opsgate.trust.engine import MISUSE_CHARGE_WINDOW

TTL = 15 * 60


def _cast(gate: opsgate.Gate, t: float) -> opsgate.Agent:
    sup = gate.register_agent(
        "supervisor", DEPLOY_SCOPE, sponsor="lead@company.com", trust_score=920, now=t
    )
    return sup.delegate(name="agent", capabilities=DEPLOY_SCOPE, trust_score=900, now=t)


def _present(gate: opsgate.Gate, token: str, t: float, code: str = "expired") -> None:
    with pytest.raises(opsgate.InvalidCredential) as exc:
        gate.authorize(token, "deploy:staging/app-web", now=t)
    assert exc.value.code == code


def _misuse_changes(gate: opsgate.Gate, did: str) -> list[tuple[int, str | None]]:
    """(delta, withheld rule) of each misuse line in the agent's history."""
    return [
        (c.delta, c.withheld[0]["rule"] if c.withheld else None)
        for c in gate.trust.history(did)
        if c.cause == "credential_misuse"
    ]


def _charged_rows(gate: opsgate.Gate) -> int:
    with gate.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.misuse_charges)).scalar())


def test_a_leaked_expired_token_is_charged_once_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = time.time()
    gate = opsgate.Gate.open(state)
    agent = _cast(gate, t - 3 * TTL)
    token = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=DEPLOY_SCOPE, now=t - 3 * TTL
    ).token
    gate.close()
    for attempt in range(4):  # presented again after each of three restarts
        gate = opsgate.Gate.open(state)
        try:
            for _ in range(3):
                _present(gate, token, t + attempt)
            assert stored_trust(gate, agent.did) == 750, f"after restart {attempt}"
            assert gate.agents.get("agent").status == "active"
        finally:
            gate.close()
    gate = opsgate.Gate.open(state)
    try:
        assert _misuse_changes(gate, agent.did) == [
            (-150, None),
            *[(0, "already_charged")] * 3,  # explained, once per process
        ]
        assert len(audit_events(gate, "credential.rejected")) == 12  # every refusal audited
        assert _charged_rows(gate) == 1
        assert gate.audit.verify().ok
    finally:
        gate.close()


def test_misuse_is_charged_once_across_two_replicas(tmp_path: Path, pg_url: str) -> None:
    t = time.time()
    # Two replicas: one database, one state dir (its pin and keys).
    one = opsgate.Gate.open(tmp_path / "state", database_url=pg_url)
    two = opsgate.Gate.open(tmp_path / "state", database_url=pg_url)
    try:
        agent = _cast(one, t - 60)
        creds = [
            one.credential_manager.issue_credential(agent_id=agent.did, scope=DEPLOY_SCOPE, now=t)
            for _ in range(3)
        ]
        # One after the other on each replica.
        one.credential_manager.revoke(creds[0].jti, now=t)
        two.state.refresh(force=True)
        _present(one, creds[0].token, t + 1, "revoked")
        _present(two, creds[0].token, t + 2, "revoked")
        assert stored_trust(one, agent.did) == 750
        # Both replicas at once, many threads each, for two more credentials.
        for cred in creds[1:]:
            one.credential_manager.revoke(cred.jti, now=t)
        two.state.refresh(force=True)
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            gate = one if n % 2 else two
            barrier.wait()
            try:
                for cred in creds[1:]:
                    _present(gate, cred.token, t + 3, "revoked")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert errors == []
        # 900 - 3 x 150 = 450: below 500, so the agent is suspended, once.
        assert stored_trust(one, agent.did) == 450
        charged = [d for d, _ in _misuse_changes(one, agent.did)]
        assert charged.count(-150) == 3 and set(charged) <= {-150, 0}
        assert _charged_rows(one) == 3
        assert len(audit_events(one, "agent.suspended")) == 1
    finally:
        two.close()
        one.close()


def test_the_record_and_the_charge_commit_together(tmp_path: Path) -> None:
    """A storage failure after both statements ran rolls back both: the next
    presentation charges (once), never zero or twice."""
    gate = opsgate.Gate.open(tmp_path / "state")
    try:
        t = time.time()
        agent = _cast(gate, t - 3 * TTL)
        token = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=DEPLOY_SCOPE, now=t - 3 * TTL
        ).token
        with gate.store.write() as conn:  # the database refuses the charge's audit row
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_charge BEFORE INSERT ON audit_events "
                    "WHEN NEW.type = 'trust.changed' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        _present(gate, token, t)
        assert stored_trust(gate, agent.did) == 900
        assert _charged_rows(gate) == 0
        with gate.store.write() as conn:
            conn.execute(text("DROP TRIGGER refuse_charge"))
        for _ in range(3):
            _present(gate, token, t + 1)
        assert stored_trust(gate, agent.did) == 750
        assert _charged_rows(gate) == 1
    finally:
        gate.close()


def test_charged_records_are_pruned_by_the_database_clock_and_never_recharged(
    tmp_path: Path, database_url: str | None
) -> None:
    state = tmp_path / "state"
    t = time.time()
    gate = opsgate.Gate.open(state, database_url=database_url)
    agent = _cast(gate, t - 3 * TTL)
    old = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=DEPLOY_SCOPE, now=t - 3 * TTL
    )
    _present(gate, old.token, t)
    assert (stored_trust(gate, agent.did), _charged_rows(gate)) == (750, 1)
    # A caller's clock far in the future prunes nothing: only the database's clock does.
    fresh = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=DEPLOY_SCOPE, now=t - 2 * TTL
    )
    gate.close()
    gate = opsgate.Gate.open(state, database_url=database_url)
    try:
        _present(gate, fresh.token, t + 1)  # a new process: this charge also prunes
        assert (stored_trust(gate, agent.did), _charged_rows(gate)) == (600, 2)
        # Still inside the skew margin after the window: kept.
        edge = time.time() - SKEW_MARGIN_SECONDS + 60
        with gate.store.write() as conn:
            conn.execute(
                update(schema.misuse_charges)
                .where(schema.misuse_charges.c.jti == old.jti)
                .values(forget_after=edge)
            )
            conn.execute(
                update(schema.misuse_charges)
                .where(schema.misuse_charges.c.jti == fresh.jti)
                .values(forget_after=time.time() - SKEW_MARGIN_SECONDS - 60)
            )
    finally:
        gate.close()
    gate = opsgate.Gate.open(state, database_url=database_url)
    try:
        third = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=DEPLOY_SCOPE, now=t - 2 * TTL
        )
        gate.trust.set_score(agent.did, 900, reason="test reset", actor="tester", now=t)
        _present(gate, third.token, t + 2)
        with gate.store.read() as conn:
            left = set(conn.execute(select(schema.misuse_charges.c.jti)).scalars())
        assert left == {old.jti, third.jti}  # the one past window + margin is gone
    finally:
        gate.close()


def test_a_credential_past_its_charge_window_is_refused_but_not_charged(
    tmp_path: Path,
) -> None:
    """After its expiry plus the window, a credential is refused and audited but can
    no longer be charged, which is what lets its record be forgotten."""
    gate = opsgate.Gate.open(tmp_path / "state")
    try:
        t = time.time()
        agent = _cast(gate, t)
        cred = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=DEPLOY_SCOPE, now=t
        )
        late = cred.expires_at.timestamp() + MISUSE_CHARGE_WINDOW
        _present(gate, cred.token, late)
        _present(gate, cred.token, late + 86_400)
        assert stored_trust(gate, agent.did) == 900
        assert _charged_rows(gate) == 0
        assert [e["code"] for e in audit_events(gate, "credential.rejected")] == ["expired"] * 2
        _present(gate, cred.token, late - 1)  # the last moment it is chargeable
        assert stored_trust(gate, agent.did) == 750
    finally:
        gate.close()
