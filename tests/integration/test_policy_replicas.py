"""Replicas on one PostgreSQL enforce one set of policies, or refuse to decide.

Each replica loads its policies from its own files at start. The last one to load
publishes their digest; a replica whose own digest differs refuses every decision
(`policy_mismatch`, 503, audited, charged to no one) and reports not ready, from its
next refresh of the change feed until its digest matches again. Refreshes are called
explicitly: no sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import (
    RecordingExecutor,
    World,
    audit_events,
    deploy,
    open_world,
    policy,
    stored_trust,
)
from server_helpers import basic

import opsgate
from opsgate.approvals import PendingApproval
from opsgate.config import ServerConfig
from opsgate.policy import load_policies
from opsgate.server import create_app
from opsgate.server.errors import status_of

pytestmark = pytest.mark.postgres

LAX = policy("policies.yaml")  # production deploys need an approval
STRICT = policy("production_frozen.yaml")  # production deploys are denied
STAGING = "deploy:staging/app-web"


class Replicas:
    """Replica a (the world: agents, approvers, a credential) and replica b, each with
    its own policy files on one database; `restart` reopens one with other files."""

    def __init__(self, state_dir: Path, pg_url: str) -> None:
        self.state_dir, self.pg_url = state_dir, pg_url
        self.world: World = open_world(state_dir, database_url=pg_url)
        self.a = self.world.gate
        self.b = self.open(LAX)

    def open(self, files: Path, **kw: Any) -> opsgate.Gate:
        gate = opsgate.Gate.open(self.state_dir, database_url=self.pg_url, policies=files, **kw)
        gate.register_executor("deploy", RecordingExecutor())
        return gate

    def restart_a(self, files: Path) -> None:
        self.a.close()
        self.a = self.open(files)

    def restart_b(self, files: Path) -> None:
        self.b.close()
        self.b = self.open(files)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    r = Replicas(tmp_path / "state", pg_url)
    yield r
    r.close()


def readiness(gate: opsgate.Gate) -> tuple[int, dict[str, Any]]:
    client = TestClient(create_app(gate, ServerConfig(external_url="http://testserver")))
    answer = client.get("/readyz")
    return answer.status_code, answer.json()


def explain(gate: opsgate.Gate, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/policy/explain on `gate`, as a new operator."""
    auth = {"Authorization": basic("ops", gate.operators.add("ops"))}
    client = TestClient(create_app(gate, ServerConfig(external_url="http://testserver")))
    answer = client.post("/v1/policy/explain", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def refusal(call: Any) -> opsgate.OpsgateError:
    with pytest.raises(opsgate.OpsgateError) as caught:
        call()
    return caught.value


def mismatch_refusals(gate: opsgate.Gate) -> list[dict[str, Any]]:
    events = audit_events(gate, "authorize.refused") + audit_events(gate, "operation.refused")
    return [e for e in events if e["code"] == "policy_mismatch"]


def test_a_replica_left_on_other_policies_refuses_every_decision_until_they_match(
    replicas: Replicas,
) -> None:
    """a and b serve the same files; b is restarted with stricter ones (a rollout has
    begun). a, still on the laxer files, used to go on deciding with them: an agent held
    for approval (now denied) by b retried on a. From its next refresh a refuses
    authorize, execute and resume with policy_mismatch (503, audited, uncharged) and is
    not ready; once restarted with the new files it serves again."""
    w = replicas.world
    for gate in (replicas.a, replicas.b):
        assert readiness(gate) == (200, {"status": "ready"})
        decision = gate.authorize(w.token, "deploy:production/app-web")
        assert decision.effect == "require_approval"
    pending = replicas.a.execute(w.token, deploy(version="1.0"))
    assert isinstance(pending, PendingApproval)
    assert w.approve(pending.approval_id, "john@company.com").status == "approved"

    replicas.restart_b(STRICT)
    replicas.a.state.refresh(force=True)  # a's next refresh of the change feed

    trust = stored_trust(replicas.a, w.agent.did)
    refused = [
        refusal(lambda: replicas.a.authorize(w.token, "deploy:production/app-web")),
        refusal(lambda: replicas.a.authorize(w.token, STAGING)),
        refusal(lambda: replicas.a.execute(w.token, deploy("staging/app-web"))),
        refusal(lambda: replicas.a.execute(w.token, deploy(version="1.0"))),
        refusal(lambda: replicas.a.resume(pending.approval_id, w.token)),
    ]
    for exc in refused:
        assert isinstance(exc, opsgate.PolicyError)
        assert exc.code == "policy_mismatch", exc
        assert status_of(exc) == 503
    assert stored_trust(replicas.a, w.agent.did) == trust  # not the agent's fault
    assert replicas.a.trust_score(w.agent.did) == trust
    assert len(mismatch_refusals(replicas.a)) == len(refused)
    assert w.status(pending.approval_id) == "approved"  # not consumed: nothing ran
    assert w.executor.runs == []
    status, body = readiness(replicas.a)
    assert status == 503
    # An operator's explain on a says its rules are not the ones enforced.
    explained = explain(replicas.a, {"action": "deploy", "resource": "production/app-web"})
    assert explained["decision"]["effect"] == "require_approval"
    assert explained["note"].startswith("this replica refuses every decision (policy_mismatch)")
    assert body["message"].startswith("policy_mismatch: "), body
    strict_digest = replicas.b.state.policy_digest
    assert strict_digest is not None and strict_digest[:12] in body["message"]
    # b, whose policies are in force, decides with them.
    assert readiness(replicas.b) == (200, {"status": "ready"})
    assert replicas.b.authorize(w.token, STAGING).effect == "allow"

    # a is restarted with the new files: both serve (b's view is unchanged).
    replicas.restart_a(STRICT)
    replicas.b.state.refresh(force=True)
    for gate in (replicas.a, replicas.b):
        assert readiness(gate) == (200, {"status": "ready"})
        assert gate.authorize(w.token, STAGING).effect == "allow"

    loaded = audit_events(replicas.a, "policy.loaded")
    lax, strict = (replicas.a.decisions_digest(load_policies(p).digest) for p in (LAX, STRICT))
    assert [(e["digest"], e["files"], e.get("replaced")) for e in loaded] == [
        (lax, ["policies.yaml"], None),
        (strict, ["production_frozen.yaml"], lax),
    ]  # a restart with the files in force records nothing
    assert all("sre-team" not in str(e) for e in loaded)  # names, never contents
    assert replicas.a.audit.verify().ok


def test_a_replica_serves_again_when_the_rollout_is_rolled_back(replicas: Replicas) -> None:
    """b is restarted with other files, then with a's again: a, never restarted,
    refuses in between and serves again from its next refresh (last writer wins)."""
    w = replicas.world
    replicas.restart_b(STRICT)
    replicas.a.state.refresh(force=True)
    assert refusal(lambda: replicas.a.authorize(w.token, STAGING)).code == "policy_mismatch"
    assert readiness(replicas.a)[0] == 503

    replicas.restart_b(LAX)
    replicas.a.state.refresh(force=True)
    assert readiness(replicas.a) == (200, {"status": "ready"})
    assert replicas.a.authorize(w.token, STAGING).effect == "allow"
    assert replicas.b.authorize(w.token, STAGING).effect == "allow"
    assert len(audit_events(replicas.a, "policy.loaded")) == 3


def test_a_gate_that_does_not_publish_never_takes_the_replicas_out(replicas: Replicas) -> None:
    """A CLI command opens the gate with an operator's edited copy of the files: it
    compares and refuses its own decisions, and the replicas go on serving."""
    w = replicas.world
    cli = replicas.open(STRICT, publish_policies=False)
    try:
        assert cli.state.policy_mismatch
        assert refusal(lambda: cli.authorize(w.token, STAGING)).code == "policy_mismatch"
        assert refusal(lambda: cli.execute(w.token, deploy("staging/app-web"))).code == (
            "policy_mismatch"
        )
        for gate in (replicas.a, replicas.b):
            gate.state.refresh(force=True)
            assert readiness(gate) == (200, {"status": "ready"})
            assert gate.authorize(w.token, STAGING).effect == "allow"
        assert len(audit_events(replicas.a, "policy.loaded")) == 1
    finally:
        cli.close()
    # The same command with the files in force decides.
    cli = replicas.open(LAX, publish_policies=False)
    try:
        assert cli.authorize(w.token, STAGING).effect == "allow"
    finally:
        cli.close()


def test_an_mcp_server_on_a_state_dir_copy_never_takes_the_replicas_out(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`opsgate mcp` with a state dir opens a gate in its own process for one agent,
    with that copy's files (here: none): it compares, it does not publish."""
    from opsgate.mcp_server.backend import LocalBackend

    monkeypatch.setenv("OPSGATE_DATABASE_URL", replicas.pg_url)
    backend = LocalBackend.open(str(replicas.state_dir), "deploy-agent", operator="operator:t")
    try:
        assert refusal(lambda: backend.authorize(STAGING, {})).code == "policy_mismatch"
    finally:
        backend.close()
    replicas.a.state.refresh(force=True)
    assert replicas.a.authorize(replicas.world.token, STAGING).effect == "allow"
    assert len(audit_events(replicas.a, "policy.loaded")) == 1
