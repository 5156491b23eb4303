"""Approvals decided and used on two replicas (two gates on one PostgreSQL database).

A status changes only from the state it was read in: an expiry, a deny and a resume
racing on different replicas never overwrite each other, a consumed approval is never
marked expired, and a deny either cancels an approved request or comes too late —
never both, never neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    RecordingExecutor,
    Stall,
    World,
    audit_events,
    deploy,
    open_world,
    policy,
    run_in_thread,
)
from sqlalchemy import event, text

import opsgate
from opsgate.approvals import PendingApproval

pytestmark = pytest.mark.postgres
JOHN, JANE = "john@company.com", "jane@company.com"


@pytest.fixture
def replicas(
    tmp_path: Path, pg_url: str
) -> Iterator[tuple[World, opsgate.Gate, RecordingExecutor]]:
    """Replica A (the world: agent, approvers) and replica B on the same database,
    each with its own executor and the same policies."""
    w = open_world(tmp_path / "state", database_url=pg_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=pg_url, policies=policy("policies.yaml"))
    executor_b = RecordingExecutor()
    b.register_executor("deploy", executor_b)
    try:
        yield w, b, executor_b
    finally:
        b.close()
        w.gate.close()


def _approved(w: World, version: str) -> PendingApproval:
    pending = w.gate.execute(w.token, deploy(version=version))
    assert isinstance(pending, PendingApproval)
    assert w.approve(pending.approval_id, JOHN).status == "approved"
    return pending


def _expired_events(gate: opsgate.Gate, approval_id: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(gate, "approval.expired") if e["approval"] == approval_id]


def test_an_expiry_that_read_the_request_before_a_resume_never_overwrites_it(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    """Replica A (clock past the expiry) reads the request as approved and pauses;
    replica B consumes and runs it; A's expiry must then leave it consumed."""
    w, b, executor_b = replicas
    pending = _approved(w, "1.0")
    expires_at = w.gate.approvals.get(pending.approval_id).expires_at
    with Stall(w.gate, "approval_requests.expires_at <=", "expirer", seconds=1.0) as stall:
        thread, out = run_in_thread(
            "expirer", lambda: w.gate.approvals.expire_due(now=expires_at + 1)
        )
        assert stall.stalled.wait(10)
        fresh = w.credential(now=expires_at - 10)  # valid then: only the approval is at stake
        assert b.resume(pending.approval_id, fresh, now=expires_at - 5).status == "succeeded"
        thread.join(30)
    assert out == [[]], out  # nothing expired: the request was consumed meanwhile
    assert executor_b.count == 1 and w.executor.count == 0
    for gate in (w.gate, b):
        assert gate.approvals.get(pending.approval_id, now=expires_at - 5).status == "consumed"
    assert _expired_events(w.gate, pending.approval_id) == []
    assert w.gate.audit.verify().ok


def test_expiries_racing_resumes_never_mark_a_consumed_approval_expired(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    w, b, executor_b = replicas
    for round_ in range(8):
        pending = _approved(w, f"2.{round_}")
        expires_at = w.gate.approvals.get(pending.approval_id).expires_at
        fresh = w.credential(now=expires_at - 10)
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def expire(ex: float = expires_at) -> None:
            barrier.wait()
            results["expired"] = w.gate.approvals.expire_due(now=ex + 1)

        def resume(
            pid: str = pending.approval_id, ex: float = expires_at, tok: str = fresh
        ) -> None:
            barrier.wait()
            try:
                results["resume"] = b.resume(pid, tok, now=ex - 5)
            except opsgate.OpsgateError as exc:
                results["resume"] = exc

        threads = [threading.Thread(target=expire), threading.Thread(target=resume)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        status = b.approvals.get(pending.approval_id, now=expires_at - 5).status
        if isinstance(results["resume"], opsgate.Outcome):
            assert status == "consumed", f"round {round_}: an executed approval ended {status}"
            assert pending.approval_id not in results["expired"]
            assert _expired_events(w.gate, pending.approval_id) == []
        else:
            assert results["resume"].code == "approval_expired", results
            assert status == "expired"
            assert len(_expired_events(w.gate, pending.approval_id)) == 1
    assert executor_b.count == len([e for e in audit_events(w.gate, "approval.consumed")])
    assert w.gate.audit.verify().ok


def test_a_deny_on_one_replica_racing_a_resume_on_another_has_one_winner(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    w, b, executor_b = replicas
    wins = {"executed": 0, "denied": 0}
    for round_ in range(8):
        pending = _approved(w, f"3.{round_}")
        runs = executor_b.count
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def deny(pid: str = pending.approval_id) -> None:
            barrier.wait()
            try:
                results["deny"] = w.deny(pid, JANE)
            except opsgate.OpsgateError as exc:
                results["deny"] = exc

        def resume(pid: str = pending.approval_id) -> None:
            barrier.wait()
            try:
                results["resume"] = b.resume(pid, w.token)
            except opsgate.OpsgateError as exc:
                results["resume"] = exc

        threads = [threading.Thread(target=deny), threading.Thread(target=resume)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        status = w.gate.approvals.get(pending.approval_id).status
        ran = executor_b.count - runs
        if isinstance(results["resume"], opsgate.Outcome):
            assert (ran, status) == (1, "consumed"), results
            assert results["deny"].code == "approval_consumed", results
            wins["executed"] += 1
        else:
            assert (ran, status) == (0, "denied"), results
            assert results["resume"].code == "approval_denied", results
            assert results["deny"].status == "denied"
            wins["denied"] += 1
    assert w.executor.count == 0
    assert sum(wins.values()) == 8
    assert w.gate.audit.verify().ok


def test_a_deny_that_holds_the_request_wins_over_a_resume_on_another_replica(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    w, b, executor_b = replicas
    pending = _approved(w, "4.0")
    with Stall(w.gate, "FROM approval_decisions", "approver-jane", seconds=1.0) as stall:
        thread, out = run_in_thread("approver-jane", lambda: w.deny(pending.approval_id, JANE))
        assert stall.stalled.wait(10)
        with pytest.raises(opsgate.ApprovalError) as exc:
            b.resume(pending.approval_id, w.token)
        thread.join(30)
    assert exc.value.code == "approval_denied"
    assert out[0].status == "denied"
    assert executor_b.count == 0
    assert b.approvals.get(pending.approval_id).status == "denied"


def test_an_expiry_sweep_and_a_resume_on_another_replica_never_deadlock(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    """Replica B holds a request it is consuming (its row locked, the audit head next);
    replica A sweeps expired requests with a later clock. The sweep took the audit head
    after expiring the first request and then waited for B's row, while B waited for
    the head: PostgreSQL broke the cycle by failing one of them (a 503)."""
    w, b, executor_b = replicas
    first, second = _approved(w, "5.0"), _approved(w, "5.1")
    expires_at = w.gate.approvals.get(second.approval_id).expires_at
    fresh = w.credential(now=expires_at - 10)

    locked, release = threading.Event(), threading.Event()

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        name = threading.current_thread().name
        if name == "resumer" and "FOR UPDATE" in statement and not locked.is_set():
            locked.set()
            assert release.wait(10)

    engine = b.store._write_engine
    event.listen(engine, "after_cursor_execute", hold)
    try:
        resumer, resumed = run_in_thread(
            "resumer", lambda: b.resume(second.approval_id, fresh, now=expires_at - 5)
        )
        assert locked.wait(10)
        sweeper, swept = run_in_thread(
            "sweeper", lambda: w.gate.approvals.expire_due(now=expires_at + 1)
        )
        _until_a_session_waits_for_a_lock(w.gate)
        release.set()
        resumer.join(30)
        sweeper.join(30)
    finally:
        event.remove(engine, "after_cursor_execute", hold)
    assert isinstance(resumed[0], opsgate.Outcome), resumed
    assert swept == [[first.approval_id]], swept
    assert executor_b.count == 1
    assert b.approvals.get(second.approval_id).status == "consumed"
    assert w.gate.audit.verify().ok


def _until_a_session_waits_for_a_lock(gate: opsgate.Gate) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with gate.store.read() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the sweep never waited for the request's lock")


def test_an_approval_requested_before_a_revocation_on_another_replica_is_not_consumed(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica A revokes every credential of the agent (its cut-off) after it requested
    and was granted an approval; the agent takes a new credential and resumes through B
    before B's view has refreshed. B checked the cut-off from that view (none yet), so
    the approval of a request made before the cut was consumed and run; the cut-off is
    read from the database in the consuming transaction."""
    w, b, executor_b = replicas
    pending = b.execute(w.token, deploy(version="1.0"))  # B now holds the agent's state
    assert isinstance(pending, PendingApproval)
    assert w.approve(pending.approval_id, JOHN).status == "approved"
    monkeypatch.setattr(b.state, "maybe_refresh", lambda: None)  # within B's refresh window
    w.gate.credential_manager.revoke_agent(w.agent.did, reason="key leaked")
    fresh = w.credential()  # issued after the cut: valid everywhere

    with pytest.raises(opsgate.ApprovalError) as refused:
        b.resume(pending.approval_id, fresh)
    assert refused.value.code == "approval_outlived"
    assert executor_b.runs == [] and w.executor.runs == []
    assert w.status(pending.approval_id) == "approved"  # refused, not used


def test_an_approval_stored_by_a_replica_whose_clock_runs_ahead_is_cut_with_its_credential(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    """Replica B's clock runs 30 s ahead: a request it stores is dated after a revocation
    of the agent's credentials made on A a moment later. Compared by date alone, the
    request outlived the cut although the credential that asked was revoked by it; the
    request records that credential's issue time, and the cut outlives it."""
    w, b, executor_b = replicas
    ahead = time.time() + 30
    asking = w.credential()
    pending = b.execute(asking, deploy(version="3.0"), now=ahead)
    assert isinstance(pending, PendingApproval)
    stored = w.gate.approvals.get(pending.approval_id)
    assert stored.created_at >= ahead - 1 and stored.asked_with_iat is not None
    assert stored.asked_with_iat <= time.time()
    assert w.approve(pending.approval_id, JOHN).status == "approved"
    w.gate.credential_manager.revoke_agent(w.agent.did, reason="key leaked")
    time.sleep(1.1)  # the next credential is issued a second after the cut
    fresh = w.credential()
    for gate in (w.gate, b):
        with pytest.raises(opsgate.ApprovalError) as refused:
            gate.resume(pending.approval_id, fresh)
        assert refused.value.code == "approval_outlived"
    assert executor_b.runs == [] and w.executor.runs == []
    # A request asked with the fresh credential (after the cut) is honoured as ever.
    again = b.execute(fresh, deploy(version="3.1"))
    assert isinstance(again, PendingApproval)
    assert w.approve(again.approval_id, JOHN).status == "approved"
    assert b.resume(again.approval_id, fresh).status == "succeeded"


def test_requests_at_once_on_two_replicas_stay_within_the_pending_limit(
    replicas: tuple[World, opsgate.Gate, RecordingExecutor],
) -> None:
    """approvals.max_pending_per_agent (10) holds for requests racing on both replicas:
    each counts the waiting ones and inserts its own as one step."""
    w, b, _ = replicas
    start = threading.Barrier(20)
    results: list[str] = []
    lock = threading.Lock()

    def request(gate: opsgate.Gate, i: int) -> None:
        start.wait()
        try:
            got = gate.execute(w.token, deploy(noise=f"race {i}"))
            outcome = "pending" if isinstance(got, PendingApproval) else type(got).__name__
        except opsgate.OpsgateError as exc:
            outcome = exc.code
        with lock:
            results.append(outcome)

    threads = [
        threading.Thread(target=request, args=(w.gate if i % 2 else b, i)) for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["approval_limit"] * 10 + ["pending"] * 10
    assert len(w.gate.approvals.list(status="pending")) == 10
    assert w.gate.audit.verify().ok
