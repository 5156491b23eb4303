"""Races between replicas (and threads of one) on the real PostgreSQL.

Each test holds one side of a race at the exact point where it used to go wrong
(events, no sleeps), lets the other side finish, then checks that what the
database says is what every replica enforces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import opsgate
from opsgate.state import LiveState
from opsgate.store import state_changes as feed
from opsgate.trust.scoring import TrustEvent

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[opsgate.Gate, opsgate.Gate]]:
    """Two gates (two replicas) on one PostgreSQL database: one state dir opened twice."""
    a = opsgate.Gate.open(tmp_path / "state", database_url=pg_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=pg_url)
    yield a, b
    a.close()
    b.close()


def _refusal(gate: opsgate.Gate, token: str) -> str | None:
    try:
        gate.credential_manager.verify(token)
    except opsgate.InvalidCredential as exc:
        return exc.code
    return None


def _started(fn: Callable[[], object]) -> tuple[threading.Thread, list[opsgate.OpsgateError]]:
    """`fn` running on a thread of its own, and the typed errors it raised (once joined)."""
    errors: list[opsgate.OpsgateError] = []

    def run() -> None:
        try:
            fn()
        except opsgate.OpsgateError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, errors


def test_a_suspension_seen_while_the_agent_loads_is_not_forgotten(
    pair: tuple[opsgate.Gate, opsgate.Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica b loads an agent's row (active) for a request; before it caches what it
    read, a suspends the agent and b's refresh applies the change feed (nothing cached
    to drop yet). The stale 'active' then went into b's cache and stayed there: no
    later feed entry names the agent, so b honoured its credentials indefinitely."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    token = a.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token

    read, release = threading.Event(), threading.Event()
    real = LiveState._load_agent

    def held(self: LiveState, conn: Any, did: str) -> Any:
        st = real(self, conn, did)
        if self is b.state and did == agent.did and not release.is_set():
            read.set()
            assert release.wait(10)
        return st

    monkeypatch.setattr(LiveState, "_load_agent", held)
    first: list[str | None] = []
    worker = threading.Thread(target=lambda: first.append(_refusal(b, token)))
    worker.start()
    assert read.wait(10)
    a.agents.suspend(agent.did, reason="compromised")
    b.state.refresh(force=True)  # b applies the feed while its load is in flight
    release.set()
    worker.join(10)
    assert len(first) == 1  # that request raced the suspension: either answer is fair

    deadline = time.monotonic() + 2.0
    while (code := _refusal(b, token)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code == "revoked"  # a suspension cuts its credentials


class _CommitLostAfterLanding:
    """The audit writer's connection, whose next COMMIT lands in the database but whose
    answer is lost (the connection drops): `meanwhile` runs between the two."""

    def __init__(self, real: Any, meanwhile: Any) -> None:
        self._real = real
        self._meanwhile = meanwhile
        self.fired = False

    def commit(self) -> None:
        self._real.commit()
        if not self.fired:
            self.fired = True
            self._meanwhile()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_batch_whose_commit_landed_is_not_written_again_after_another_replica_appended(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    """A batch's COMMIT reaches the database but the connection drops before its answer;
    meanwhile another replica appends. The writer recognised its own commit only when
    its last hash was still the head, so here it wrote the batch again: the event twice
    in the log and its change applied twice (one failed deployment charged -80)."""
    a, b = pair
    agent = a.register_agent(
        "deployer", ["deploy:staging"], sponsor="ops@company.com", trust_score=900
    )
    writer = a.audit._writer.connection
    a.audit.append("test.warmup")  # the writer's connection is open
    lost = _CommitLostAfterLanding(writer._conn, lambda: b.audit.append("test.other_replica"))
    writer._conn = lost

    change = a.trust.record(
        agent.did, TrustEvent.FAILED_DEPLOYMENT, reason="health check failed", now=time.time()
    )

    assert lost.fired
    assert change.delta == -40
    assert a.agents.stored_trust(agent.did) == 860  # charged once
    charges = [e for e in a.audit.events(event_type="trust.changed") if e.actor == agent.did]
    assert [e.seq for e in charges] == [change.audit_seq]
    assert a.audit.verify().ok


@pytest.mark.parametrize("act", ["reinstate", "suspend"])
def test_an_agent_revoked_on_one_replica_stays_revoked_whatever_another_does_meanwhile(
    pair: tuple[opsgate.Gate, opsgate.Gate], monkeypatch: pytest.MonkeyPatch, act: str
) -> None:
    """Replica b starts to reinstate (or suspend) an agent it knows as suspended; a
    revokes it before b's transaction locks the row. b checked 'revoked for good'
    against its view only, so the agent came back active (or merely suspended, and a
    reinstatement away from working again)."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    a.agents.suspend(agent.did, reason="under review")
    b.state.refresh(force=True)
    assert b.agents.get(agent.did).status == "suspended"

    reached, release = threading.Event(), threading.Event()
    real = b.agents.descendants

    def held(conn: Any, did: str, *, lock: bool = False) -> list[str]:
        if not release.is_set():
            reached.set()
            assert release.wait(10)
        return real(conn, did, lock=lock)

    monkeypatch.setattr(b.agents, "descendants", held)

    def change() -> None:
        if act == "reinstate":
            b.agents.reinstate(agent.did, reason="looked fine")
        else:
            b.agents.suspend(agent.did, reason="again")

    worker, errors = _started(change)
    assert reached.wait(10)
    a.agents.revoke(agent.did, reason="key leaked")
    release.set()
    worker.join(10)

    assert [getattr(e, "code", None) for e in errors] == ["agent_revoked"]
    for gate in (a, b):
        gate.state.refresh(force=True)
        assert gate.agents.get(agent.did).status == "revoked"
    with pytest.raises(opsgate.OpsgateError) as again:
        b.agents.reinstate(agent.did, reason="try again")
    assert again.value.code == "agent_revoked"


def test_a_first_access_is_charged_once_whichever_replicas_see_it(
    tmp_path: Path, pg_url: str
) -> None:
    """Each replica loaded an agent's used resources once and then trusted its own
    memory: a resource first used through a was new again to b, so one first access
    cost the agent the unusual-access charge on every replica it went through."""
    trust = {"anomalies": {"new_resource_warmup_events": 1}}
    a = opsgate.Gate.open(tmp_path / "state", database_url=pg_url, trust=trust)
    b = opsgate.Gate.open(tmp_path / "state", database_url=pg_url, trust=trust)
    try:
        agent = a.register_agent(
            "deployer", ["deploy:staging"], sponsor="ops@company.com", trust_score=1000
        )
        token = a.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
        t = time.time()
        for gate in (a, b):  # warm-up: both replicas know the agent's one resource
            assert gate.authorize(token, "deploy:staging/app-web", now=t).effect == "allow"
        for gate in (a, b):  # then a first access, through a and through b
            assert gate.authorize(token, "deploy:staging/payments", now=t + 1).effect == "allow"
        unusual = [c for c in a.trust.history(agent.did) if c.cause == "unusual_access"]
        assert [c.evidence["detector"] for c in unusual if c.evidence] == ["new_resource"]
        assert a.agents.stored_trust(agent.did) == 950
    finally:
        a.close()
        b.close()


def test_one_credential_revoked_on_two_replicas_at_once_is_revoked_once_without_error(
    pair: tuple[opsgate.Gate, opsgate.Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both replicas found the credential not revoked yet and inserted its row: the
    second failed on the primary key (an internal_error), though revoking is
    idempotent and the credential was revoked."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    cred = a.credential_manager.issue_credential(agent.did, ["deploy:staging"])

    checked, release = threading.Event(), threading.Event()
    real = feed.is_revoked

    def held(conn: Any, jti: str) -> bool:
        answer = real(conn, jti)
        if threading.current_thread() is not threading.main_thread():
            checked.set()
            assert release.wait(10)
        return answer

    monkeypatch.setattr(feed, "is_revoked", held)
    worker, errors = _started(lambda: b.credential_manager.revoke(cred.jti, reason="leaked"))
    assert checked.wait(10)
    a.credential_manager.revoke(cred.jti, reason="leaked too")
    release.set()
    worker.join(10)

    assert errors == []
    for gate in (a, b):
        assert _refusal(gate, cred.token) == "revoked"
    revoked = list(a.audit.events(event_type="credential.revoked"))
    assert a.audit.verify().ok and len(revoked) == 2  # each act recorded


def test_a_replica_with_a_stale_view_cannot_delegate_from_a_parent_suspended_elsewhere(
    pair: tuple[opsgate.Gate, opsgate.Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B's view still shows the parent active (no refresh yet, or none at all:
    nothing on B calls for one); A suspends the parent's parent. B's delegation is
    checked against the database in its own transaction: refused as the parent's
    status says, recorded, no child row, no key file left behind."""
    a, b = pair
    root = a.register_agent("root-x", ["deploy:staging"], "owner@company.com", 900)
    mid = root.delegate(name="mid-x", capabilities=["deploy:staging"])
    b.agents.state(mid.did)  # B holds the parent's (active) state
    monkeypatch.setattr(b.state, "maybe_refresh", lambda: None)
    monkeypatch.setattr(b.state, "refresh", lambda **_: None)
    a.agents.suspend(root.did, reason="investigating")
    assert b.agents.state(mid.did).effective_status == "active"  # stale, as intended
    keys_before = set((b.state_dir / "agent-keys").iterdir())
    with pytest.raises(opsgate.DelegationError) as refused:
        b.agents.delegate(mid.did, "leaf-x", ["deploy:staging"])
    assert refused.value.code == "agent_suspended"
    with a.store.read() as conn:
        from opsgate.store import agents as agent_rows

        assert agent_rows.did_by_name(conn, "leaf-x") is None
    assert set((b.state_dir / "agent-keys").iterdir()) == keys_before
    refusals = [r.event for r in a.audit.events(event_type="delegation.refused")]
    assert refusals and refusals[-1]["code"] == "agent_suspended"
