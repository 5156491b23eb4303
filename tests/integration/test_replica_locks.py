"""Replica processes on one PostgreSQL: lock order, lost outcomes, lost suspensions.

Group-commit batches from different replicas lock agents' rows; taken in queue
order they deadlocked each other, every caller of the losing batch was told the
audit write failed, and operations that had run were left without an outcome. A
suspension that deadlocked with issuance was dropped silently, and the agent kept
working below the line. Each test runs real replica processes against the real
server (tests/integration/replica_worker.py) for a couple of seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

import opsgate
from opsgate.store import schema

pytestmark = pytest.mark.postgres
WORKER = Path(__file__).with_name("replica_worker.py")
ROOT = Path(__file__).resolve().parent.parent.parent


class Replica:
    """A worker process, started and waiting for "go"."""

    def __init__(self, state_dir: Path, url: str, mode: str, **args: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(state_dir), url, mode, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "no output"

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return dict(json.loads(out.strip().splitlines()[-1]))


def run_all(replicas: list[Replica]) -> list[dict[str, Any]]:
    for r in replicas:
        r.go()
    return [r.result() for r in replicas]


@pytest.fixture
def gate(tmp_path: Path, pg_url: str) -> Iterator[opsgate.Gate]:
    g = opsgate.Gate.open(tmp_path / "state", database_url=pg_url)
    yield g
    g.close()


def _roots(gate: opsgate.Gate, n: int, trust: int = 900) -> list[str]:
    return [
        gate.register_agent(
            f"root-{i}", ["deploy:staging"], sponsor="ops@company.com", trust_score=trust
        ).did
        for i in range(n)
    ]


def _events(gate: opsgate.Gate, event_type: str) -> list[Any]:
    return list(gate.audit.events(event_type=event_type))


def _assert_every_run_has_its_outcome(gate: opsgate.Gate, runs: int) -> None:
    attempts = _events(gate, "operation.attempt")
    outcomes = _events(gate, "operation.outcome")
    by_attempt = Counter(o.event["attempt_seq"] for o in outcomes)
    assert len(attempts) == runs, "every run has exactly one attempt record"
    missing = [a.seq for a in attempts if by_attempt[a.seq] != 1]
    assert not missing, f"attempts without exactly one outcome: {missing[:10]}"
    with gate.store.read() as conn:
        left = conn.execute(select(schema.operation_runs)).all()
    assert left == [], "a finished run left its row behind"
    report = gate.audit.verify()
    assert report.ok, report.reason
    assert report.events == report.head_seq  # gap-free


def test_batches_from_two_replicas_over_many_agents_never_deadlock(
    gate: opsgate.Gate, tmp_path: Path, pg_url: str
) -> None:
    """2 processes x 4 threads executing for 8 agents (issuance, attempts, outcomes
    with trust changes): no caller sees an audit failure, every run has its outcome."""
    dids = _roots(gate, 8)
    replicas = [
        Replica(tmp_path / "state", pg_url, "execute", dids=dids, threads=4, seconds=2.5)
        for _ in range(2)
    ]
    results = run_all(replicas)
    errors = Counter[str]()
    for r in results:
        errors.update(r["errors"])
    assert errors == Counter(), errors
    runs = sum(r["runs"] for r in results)
    assert runs == sum(r["ok"] for r in results) > 50
    _assert_every_run_has_its_outcome(gate, runs)


def _terminate_backends(pg_url: str, stop: threading.Event) -> None:
    """Terminate every other backend of the test database, every 0.3 s."""
    name = make_url(pg_url).database
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            while not stop.wait(0.3):
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
    finally:
        admin.dispose()


def test_terminated_backends_never_leave_a_run_without_its_outcome(
    gate: opsgate.Gate, tmp_path: Path, pg_url: str
) -> None:
    """Backends killed under the replicas' feet: a call may fail (the database went
    away), but no operation that ran is left without its outcome record."""
    dids = _roots(gate, 4)
    replicas = [
        Replica(tmp_path / "state", pg_url, "execute", dids=dids, threads=4, seconds=2.5)
        for _ in range(2)
    ]
    stop = threading.Event()
    killer = threading.Thread(target=_terminate_backends, args=(pg_url, stop))
    killer.start()
    try:
        results = run_all(replicas)
    finally:
        stop.set()
        killer.join()
    runs = sum(r["runs"] for r in results)
    assert runs > 20
    errors = Counter[str]()
    for r in results:
        errors.update(r["errors"])
    # The database going away is the only failure a caller may see.
    assert set(errors) <= {"store_unavailable", "audit_write_failed"}, errors
    gate.store.dispose()  # the fixture's pooled connections were terminated too
    _assert_every_run_has_its_outcome(gate, runs)


def test_a_run_whose_process_died_gets_its_outcome_on_the_next_start(
    gate: opsgate.Gate, tmp_path: Path, pg_url: str
) -> None:
    dids = _roots(gate, 1)
    hung = Replica(tmp_path / "state", pg_url, "hang", dids=dids)
    hung.go()
    assert hung.proc.stdout is not None
    assert json.loads(hung.proc.stdout.readline()) == {"running": True}
    [attempt] = _events(gate, "operation.attempt")
    hung.proc.send_signal(signal.SIGKILL)
    hung.proc.wait(timeout=30)
    assert _events(gate, "operation.outcome") == []

    with opsgate.Gate.open(tmp_path / "state", database_url=pg_url) as again:
        [outcome] = _events(again, "operation.outcome")
        assert outcome.event["attempt_seq"] == attempt.seq
        assert outcome.event["outcome"] == "unknown"
        assert outcome.event["recovered"] is True
        assert outcome.actor == dids[0]
        trust_before = again.trust_score(dids[0])
    # Repaired once: another start finds nothing to do.
    with opsgate.Gate.open(tmp_path / "state", database_url=pg_url) as third:
        assert len(_events(third, "operation.outcome")) == 1
        assert third.trust_score(dids[0]) == trust_before == 900
        assert third.audit.verify().ok


def test_an_agent_charged_below_the_line_while_another_replica_issues_is_suspended(
    gate: opsgate.Gate, tmp_path: Path, pg_url: str
) -> None:
    """24 roots at 510, one replica issuing credentials for all of them while another
    charges each one violation (-75): every one ends suspended, with the suspension
    in the same audit event as the loss, and no credential it was issued still works."""
    dids = _roots(gate, 24, trust=510)
    issuer = Replica(tmp_path / "state", pg_url, "issue", dids=dids, seconds=3.0)
    charger = Replica(tmp_path / "state", pg_url, "charge", dids=dids, threads=4)
    issued, charged = run_all([issuer, charger])
    assert charged["errors"] == {} and charged["ok"] == 24
    assert set(issued["errors"]) <= {"agent_suspended", "revoked"}, issued["errors"]

    changes = {e.event["trust"]["agent"]: e for e in _events(gate, "trust.changed")}
    with gate.store.read() as conn:
        rows = {
            r.did: r
            for r in conn.execute(
                select(schema.agents.c.did, schema.agents.c.status, schema.agents.c.trust_score)
            ).all()
        }
    for did in dids:
        assert rows[did].trust_score == 435
        assert rows[did].status == "suspended", f"{did} is below the line and active"
        assert changes[did].event["suspended"] == "trust score 435 fell below 500"
    gate.state.refresh(force=True)
    refused = Counter[str]()
    for did, token in issued["tokens"]:
        with pytest.raises(opsgate.InvalidCredential) as exc:
            gate.authorize(token, "deploy:staging/app")
        refused[exc.value.code] += 1
    assert set(refused) <= {"agent_suspended", "revoked"}
    # A fresh replica sees every one suspended, and issues nothing to them.
    with opsgate.Gate.open(tmp_path / "state", database_url=pg_url) as other:
        for did in dids:
            assert other.agents.state(did).status == "suspended"
            with pytest.raises(opsgate.CredentialError) as issue_exc:
                other.credential_manager.issue_credential(did, ["deploy:staging"])
            assert issue_exc.value.code == "agent_suspended"
        assert other.audit.verify().ok
