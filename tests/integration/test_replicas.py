"""Replicas: two `opsgate serve` processes on one PostgreSQL, behind one external URL.

What one replica decides, the other enforces within a second (suspension,
revocation); an approval decided on one resumes on the other; concurrent remote
agents spread over both leave one gap-free audit chain that verifies, run no
approval twice and accept no proof twice (the same proof sent to both replicas at
the same moment: exactly one accepts it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from replica_helpers import DEPLOY_SCOPE, EXTERNAL, Replicas, run_replicas
from server_helpers import basic
from sqlalchemy import select

from opsgate import Operation, OpsgateError
from opsgate.client import RemoteGate, RemotePendingApproval
from opsgate.store import schema

pytestmark = pytest.mark.postgres
LOAD = Path(__file__).with_name("replica_load.py")
CAP = "deploy:staging/app-web"
RELEASE = {"version": "3.0.0", "artifact_digest": "sha256:" + "cd" * 32}
# 2 replicas x 8 agents x 200 operations (about 15 s on 2 cores); OPSGATE_REPLICA_OPS
# makes the run shorter or longer (a multiple of 10).
LOAD_AGENTS = 8
LOAD_OPS = int(os.environ.get("OPSGATE_REPLICA_OPS", "200"))
SINGLE = ["suspended-agent", "revoked-agent", "approval-agent"]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url_module: str) -> Iterator[Replicas]:
    agents = SINGLE + [f"load-{i}" for i in range(LOAD_AGENTS)]
    # Every agent shares 127.0.0.1: the refusal bucket must not throttle the run.
    root = tmp_path_factory.mktemp("replicas")
    with run_replicas(root, pg_url_module, agents, refusal_burst=10_000) as r:
        yield r


def _agent(r: Replicas, name: str) -> tuple[RemoteGate, Any]:
    balancer = r.balancer()
    return RemoteGate(EXTERNAL, r.agent_keys[name], transport=balancer), balancer


def _refused_within(call: Any, codes: set[str], limit: float) -> float:
    """Seconds until `call` raises one of `codes` (polled), failing past `limit`."""
    started = time.monotonic()
    while True:
        try:
            call()
        except OpsgateError as exc:
            assert exc.code in codes, exc
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < limit, f"still accepted after {elapsed:.2f} s"
        time.sleep(0.02)


def test_a_suspension_through_one_replica_is_refused_by_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    gate, balancer = _agent(replicas, "suspended-agent")
    with gate:
        cred = gate.credential(DEPLOY_SCOPE)
        with balancer.pinned(1):
            assert gate.authorize(cred, CAP).effect == "allow"  # replica 1 has it cached
        r = httpx.post(
            f"{replicas.urls[0]}/v1/agents/suspended-agent/suspend",
            json={"reason": "incident 7"},
            headers={"Authorization": basic("ops", replicas.operator_token)},
        )
        assert r.status_code == 200, r.text
        with balancer.pinned(1):
            waited = _refused_within(
                lambda: gate.authorize(cred, CAP), {"agent_suspended", "revoked"}, 1.0
            )
            with pytest.raises(OpsgateError) as new:
                gate.credential(DEPLOY_SCOPE)
            assert new.value.code == "agent_suspended"
    assert waited < 1.0


def test_a_revocation_through_one_replica_is_refused_by_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    gate, balancer = _agent(replicas, "revoked-agent")
    with gate:
        cred = gate.credential(DEPLOY_SCOPE)
        token = cred.token
        with balancer.pinned(1):
            assert gate.authorize(token, CAP).effect == "allow"
        with balancer.pinned(0):
            gate._send("POST", "/v1/credentials/revoke", token, None, {})
        with balancer.pinned(1):
            waited = _refused_within(lambda: gate.authorize(token, CAP), {"revoked"}, 1.0)
    assert waited < 1.0


def test_an_approval_decided_on_one_replica_resumes_on_the_other(replicas: Replicas) -> None:
    gate, balancer = _agent(replicas, "approval-agent")
    approver = {"Authorization": basic("john@company.com", replicas.approver_token)}
    with gate:
        cred = gate.credential(DEPLOY_SCOPE)
        with balancer.pinned(0):
            pending = gate.execute(cred, Operation("deploy", "production/app-web", RELEASE))
        assert isinstance(pending, RemotePendingApproval)
        r = httpx.post(
            f"{replicas.urls[1]}/v1/approvals/{pending.approval_id}/approve",
            json={"comment": "ship it"},
            headers=approver,
        )
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        with balancer.pinned(0):
            assert gate.approval(pending.approval_id, cred).status == "approved"
        with balancer.pinned(1):
            done = gate.resume(pending.approval_id, cred)
        assert done.status == "succeeded"
        with balancer.pinned(0), pytest.raises(OpsgateError) as again:
            gate.resume(pending.approval_id, cred)
        assert again.value.code == "approval_consumed"


def test_concurrent_agents_on_two_replicas_leave_one_verified_audit(replicas: Replicas) -> None:
    agents = {f"load-{i}": str(replicas.agent_keys[f"load-{i}"]) for i in range(LOAD_AGENTS)}
    plan = {
        "backends": replicas.backends,
        "agents": agents,
        "ops": LOAD_OPS,
        "approver": "john@company.com",
        "approver_token": replicas.approver_token,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    proc = subprocess.run(
        [sys.executable, str(LOAD)],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["violations"] == [], result["violations"][:10]
    per_agent = LOAD_OPS // 10
    counts = result["counts"]
    assert counts.get("approval") == LOAD_AGENTS * per_agent, counts
    assert counts.get("proof_pair") == LOAD_AGENTS * per_agent, counts
    assert sum(counts.values()) == LOAD_AGENTS * LOAD_OPS, counts

    gate = replicas.open_gate()
    try:
        assert gate.audit.verify().ok
        with gate.store.read() as conn:
            seqs = [s for (s,) in conn.execute(select(schema.audit_events.c.seq).order_by("seq"))]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        attempts = [
            r.event.get("approval")
            for r in gate.audit.tail(100_000, event_type="operation.attempt")
        ]
        ran = [a for a in attempts if a is not None]
        assert sorted(ran) == sorted(set(ran)), "an approval ran twice"
        assert set(result["approvals"]) <= set(ran)
        for approval_id in result["approvals"]:
            assert gate.approvals.get(approval_id).status == "consumed"
    finally:
        gate.close()
