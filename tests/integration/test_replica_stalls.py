"""A stalled replica or a locked table must not stall the others, nor let a revoked
credential through (PostgreSQL, real replica processes).

Sessions run with lock, statement and idle-in-transaction timeouts; a revocation
commits without waiting for the audit head (its audit event is deferred in the same
transaction and chained right after); a replica whose view of other replicas'
changes cannot be brought up to date within its bound refuses.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from test_replica_locks import Replica

import opsgate
from opsgate.store import schema

pytestmark = pytest.mark.postgres
CAP = "deploy:staging/app-web"
FAST = {"lock_seconds": 1.0, "idle_in_transaction_seconds": 3.0}


@pytest.fixture
def gate(tmp_path: Path, pg_url: str) -> Iterator[opsgate.Gate]:
    g = opsgate.Gate.open(tmp_path / "state", database_url=pg_url, database_timeouts=FAST)
    yield g
    g.close()


def _token(gate: opsgate.Gate) -> opsgate.Credential:
    agent = gate.register_agent(
        "worker", ["deploy:staging"], sponsor="ops@company.com", trust_score=1000
    )
    return gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])


def test_sessions_carry_the_configured_timeouts(gate: opsgate.Gate) -> None:
    with gate.store.read() as conn:
        got = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
        }
    assert got == {
        "lock_timeout": "1s",
        "statement_timeout": "30s",
        "idle_in_transaction_session_timeout": "3s",
    }


def test_a_replica_stopped_while_holding_the_audit_head_blocks_no_revocation(
    gate: opsgate.Gate, tmp_path: Path, pg_url: str
) -> None:
    """Replica S stops (SIGSTOP) in the middle of an audit batch, holding the head.
    revoke() on this replica returns within 2 s, replica V refuses the token from a
    second after it on, and once the server ends S's session the revocation's event
    is in the log, which verifies."""
    cred = _token(gate)
    state = tmp_path / "state"
    verifier = Replica(
        state, pg_url, "verify", token=cred.token, seconds=4.0, config={"database_timeouts": FAST}
    )
    stalled = Replica(state, pg_url, "stall", config={"database_timeouts": FAST})
    stalled.go()
    assert stalled.proc.stdout is not None
    assert json.loads(stalled.proc.stdout.readline()) == {"holding": True}
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        verifier.go()
        time.sleep(1.0)
        started = time.monotonic()
        gate.credential_manager.revoke(cred.jti, reason="leaked")
        took = time.monotonic() - started
        revoked_at = time.time()
        calls = verifier.result()["calls"]
    finally:
        stalled.proc.send_signal(signal.SIGKILL)
        stalled.proc.wait(timeout=30)
    assert took < 2.0, f"revoke() took {took:.1f} s behind a stalled replica"
    assert any(r == "ok" for s, _e, r in calls if s < revoked_at), "the token worked before"
    late = [(s, e, r) for s, e, r in calls if s > revoked_at + 1.0]
    assert late, "the verifier kept checking after the revocation"
    assert all(r == "revoked" for _s, _e, r in late), late
    assert max(e - s for s, e, _r in calls) < 2.5, "a check waited behind the stalled replica"

    assert gate.audit.flush_deferred(wait=15.0)
    revoked = [r.event for r in gate.audit.events(event_type="credential.revoked")]
    assert [e["jti"] for e in revoked] == [cred.jti]
    with gate.store.read() as conn:
        assert conn.execute(select(schema.audit_outbox)).all() == []
    report = gate.audit.verify()
    assert report.ok, report.reason


def _hold_lock(
    pg_url: str, table: str, seconds: float, taken: threading.Event, released: list[float]
) -> None:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            taken.set()
            time.sleep(seconds)
            released.append(time.monotonic())  # nothing can pass before this
            conn.rollback()
    finally:
        engine.dispose()


def _calls_while_locked(
    gate: opsgate.Gate, pg_url: str, table: str, fn: Any, seconds: float = 3.0
) -> tuple[float, float, list[tuple[float, float, str]]]:
    """Calls of `fn` while `table` is locked: (locked at, released at, calls)."""
    taken = threading.Event()
    released: list[float] = []
    holder = threading.Thread(target=_hold_lock, args=(pg_url, table, seconds, taken, released))
    holder.start()
    assert taken.wait(10)
    locked_at = time.monotonic()
    calls: list[tuple[float, float, str]] = []
    while time.monotonic() < locked_at + seconds - 0.3:
        start = time.monotonic()
        try:
            result = fn()
        except opsgate.OpsgateError as exc:
            result = exc.code
        calls.append((start, time.monotonic(), result))
        time.sleep(0.02)
    holder.join()
    return locked_at, released[0], calls


@pytest.mark.parametrize("call", ["verify", "authorize"])
def test_a_locked_change_feed_makes_checks_refuse_quickly(
    gate: opsgate.Gate, pg_url: str, call: str
) -> None:
    cred = _token(gate)

    def check() -> str:
        if call == "verify":
            gate.credential_manager.verify(cred.token)
            return "allow"
        return gate.authorize(cred.token, CAP).effect

    assert check() == "allow"
    # Held 4 s: each refused check takes about the bound (1 s), so several are made
    # after the view went stale and before the lock goes.
    locked_at, released_at, calls = _calls_while_locked(
        gate, pg_url, "state_changes", check, seconds=4.0
    )
    bound = gate.state.max_age
    # Once the view is older than its bound, nothing is allowed until the lock goes.
    stale = [c for c in calls if locked_at + bound + 0.1 < c[0] and c[1] < released_at]
    assert stale and all(r in ("store_timeout", "store_unavailable") for _s, _e, r in stale), stale
    assert max(e - s for s, e, _r in calls) < bound + 1.0, "a check waited behind the lock"
    time.sleep(bound)
    assert check() == "allow"  # the lock is gone: the replica recovers by itself


def test_a_locked_audit_head_makes_authorize_refuse_quickly(
    gate: opsgate.Gate, pg_url: str
) -> None:
    cred = _token(gate)
    assert gate.authorize(cred.token, CAP).effect == "allow"
    _locked_at, released_at, calls = _calls_while_locked(
        gate, pg_url, "audit_head", lambda: gate.authorize(cred.token, CAP).effect
    )
    during = [c for c in calls if c[1] < released_at]
    assert during and all(r == "audit_write_failed" for _s, _e, r in during), calls
    assert max(e - s for s, e, _r in calls) < 2.0, "authorize waited behind the lock"
    assert gate.authorize(cred.token, CAP).effect == "allow"
    assert gate.audit.verify().ok
