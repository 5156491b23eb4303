"""`opsgate.agents`: the supervisor and its four sub-agents on a real gate (local
deploys with a real HTTP health endpoint, SQLite migrations, the embedded secret
backend, the example policy). Each task is planned into steps and every step is
reported; a pending approval is a step that waits (with a timeout), never an error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_world import FAST, HealthServer

import opsgate
from opsgate.agents import SEED_SCOPES, StepEvent, StepLog, Supervisor
from opsgate.operations.base import Operation
from opsgate.operations.deploy import LocalDeployExecutor
from opsgate.operations.migrate import MigrationExecutor
from opsgate.secrets.value import SecretValue

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies.yaml"


@dataclass
class Team:
    gate: opsgate.Gate
    supervisor: Supervisor
    agents: dict[str, opsgate.Agent]
    tokens: dict[str, str]
    health: HealthServer
    work: Path
    seen: list[StepEvent]

    def artifact(self, app: str, version: str) -> str:
        path = self.work / "artifacts" / f"{app}-{version}.tar"
        if not path.exists():
            path.write_bytes(f"{app} release {version}\n".encode())
        return str(path)

    def current(self, env: str, app: str = "app") -> str | None:
        link = self.work / "deployments" / env / app / "current"
        return Path(str(link.readlink())).name if link.is_symlink() else None

    def approve_as(self, who: str) -> Any:
        def approve(approval_id: str) -> None:
            self.gate.approvals.approve(approval_id, approver=who, token=self.tokens[who])

        return approve


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    health = HealthServer()
    (tmp_path / "artifacts").mkdir()
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "V1__create_orders.sql").write_text(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);\n"
    )
    (migrations / "V2__drop_legacy.sql").write_text(
        "CREATE TABLE legacy (id INTEGER);\nDROP TABLE orders;\n"
    )
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=POLICIES,
        databases={
            "orders": {"url": f"sqlite:///{tmp_path / 'orders.db'}", "migrations": str(migrations)}
        },
    )
    check = {"url": health.url, **FAST}
    deployer = LocalDeployExecutor(
        tmp_path / "deployments",
        artifact_roots=[tmp_path / "artifacts"],
        apps={"app": {"health": {"staging": check, "production": check}}},
    )
    gate.register_executor("deploy", deployer)
    gate.register_executor("rollback", deployer.rollback)
    gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
    sup = gate.register_agent(
        "devops-supervisor",
        capabilities=[c for scope in SEED_SCOPES.values() for c in scope],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    agents = {
        name: sup.delegate(name=name, capabilities=scope) for name, scope in SEED_SCOPES.items()
    }
    tokens = {
        who: gate.approvals.add_approver(who) for who in ("john@company.com", "dana@company.com")
    }
    seen: list[StepEvent] = []
    team = Team(gate, None, agents, tokens, health, tmp_path, seen)  # type: ignore[arg-type]
    team.supervisor = Supervisor.in_process(
        gate,
        agents,
        artifact_for=team.artifact,
        approval_timeout=5,
        log=StepLog([seen.append]),
    )
    try:
        yield team
    finally:
        gate.close()
        health.close()


def _steps(result: Any) -> list[tuple[str, str]]:
    return [(s.step, s.status) for s in result.steps]


def test_the_deploy_task_runs_step_by_step(team: Team) -> None:
    before = team.agents["deploy-agent"].trust_score
    result = team.supervisor.run(
        "Deploy app-v2.0 to production", on_waiting=team.approve_as("john@company.com")
    )
    assert result.status == "succeeded", result.to_dict()
    assert _steps(result) == [
        ("credential", "done"),
        ("staging", "done"),
        ("approval", "requested"),
        ("approval", "waiting"),
        ("approval", "approved"),
        ("production", "done"),
        ("health", "done"),
        ("trust", "done"),
    ]
    by = {(s.step, s.status): s for s in result.steps}
    assert by[("credential", "done")].message == "credentials issued (TTL 15 min)"
    assert by[("approval", "requested")].data["approvers"] == [
        "jane@company.com",
        "john@company.com",
    ]
    assert by[("approval", "approved")].data["approved_by"] == ["john@company.com"]
    assert by[("health", "done")].message == "deployment successful, health checked"
    assert by[("health", "done")].data["health"]["status"] == "passed"
    after = team.agents["deploy-agent"].trust_score
    assert by[("trust", "done")].data == {"before": before, "after": after}
    assert after == before + 10  # two successful deploys
    # What the steps say is what happened.
    assert team.current("staging") == team.current("production") == "2.0"
    approval = team.gate.approvals.get(by[("approval", "requested")].data["approval_id"])
    assert approval.status == "consumed"
    assert team.seen == list(result.steps)  # the listener saw each step as it happened
    json.dumps(result.to_dict())  # structured, JSON-ready


def test_a_pending_approval_waits_then_times_out_without_an_error(team: Team) -> None:
    result = team.supervisor.run("Deploy app-v2.0 to production", wait=0.3)
    assert result.status == "pending"
    assert _steps(result)[-3:] == [
        ("approval", "waiting"),
        ("approval", "timeout"),
        ("trust", "done"),
    ]
    assert team.gate.approvals.get(result.approval_id).status == "pending"
    assert team.current("staging") == "2.0" and team.current("production") is None
    # The request stays: an approver decides later, and the agent resumes it.
    team.approve_as("john@company.com")(result.approval_id)
    agent = team.supervisor.deploy
    outcome = team.gate.resume(result.approval_id, agent.credential.token)
    assert outcome.status == "succeeded" and team.current("production") == "2.0"


def test_a_denied_approval_ends_the_task_and_deploys_nothing(team: Team) -> None:
    def deny(approval_id: str) -> None:
        team.gate.approvals.deny(
            approval_id, approver="john@company.com", token=team.tokens["john@company.com"]
        )

    result = team.supervisor.run("Deploy app-v2.0 to production", on_waiting=deny)
    assert result.status == "denied"
    assert ("approval", "denied") in _steps(result)
    assert ("production", "done") not in _steps(result)
    assert team.current("production") is None


def test_a_failed_health_check_rolls_the_release_back(team: Team) -> None:
    approve = team.approve_as("john@company.com")
    assert team.supervisor.run("Deploy app-v1.0 to production", on_waiting=approve).ok
    before = team.agents["deploy-agent"].trust_score
    team.health.script(200, 500)  # staging passes; production's probes fail
    result = team.supervisor.run("Deploy app-v1.1 to production", on_waiting=approve)
    assert result.status == "failed"
    health = [s for s in result.steps if s.step == "health"]
    assert [s.status for s in health] == ["failed"]
    assert health[0].message.startswith("health check failed: rolled back to 1.0")
    assert team.current("production") == "1.0"  # switched back
    trust = result.steps[-1]
    assert trust.step == "trust" and trust.data["after"] < before  # failed deployment


def test_each_agent_holds_its_own_self_renewing_credential(team: Team) -> None:
    sup = team.supervisor
    jtis = {name: agent.credential.jti for name, agent in sup.agents.items()}
    assert len(set(jtis.values())) == 4
    claims = {
        name: team.gate.credential_manager.verify(agent.credential.token)
        for name, agent in sup.agents.items()
    }
    for name, c in claims.items():
        assert c.sub == team.agents[name].did
        assert sorted(c.scope) == sorted(SEED_SCOPES[name])
        assert c.exp - c.iat == 15 * 60
    # Revoked under it: the next step runs on a fresh credential, no one asks for one.
    deploy = sup.deploy
    team.gate.credential_manager.revoke(jtis["deploy-agent"])
    result = sup.run("Deploy app-v3.0 to staging")
    assert result.ok, result.to_dict()
    assert deploy.credential.jti != jtis["deploy-agent"] and deploy.credential.renewals == 1


def test_the_monitoring_agent_reports_health_and_is_refused_a_deploy(team: Team) -> None:
    assert team.supervisor.run("Deploy app-v1.0 to staging").ok
    health = team.supervisor.run("Check health of app in staging")
    assert health.ok and health.result["health"]["status"] == "passed"
    assert health.result["current"] == "1.0"
    monitor = team.supervisor.monitoring
    before = team.agents["monitoring-agent"].trust_score
    op = Operation(
        "deploy", "staging/app", {"version": "6.6", "artifact": team.artifact("app", "6.6")}
    )
    refused = monitor.attempt("monitoring-agent tries to deploy", "deploy", op)
    assert refused.status == "refused"
    [step] = refused.steps
    assert (step.status, step.data["code"]) == ("refused", "operation_denied")
    assert team.agents["monitoring-agent"].trust_score == before - 75
    assert team.current("staging") == "1.0"
    status = team.supervisor.run("Show gate status")
    assert status.ok and status.result["agent_count"] == 5


def test_the_database_agent_applies_the_safe_and_leaves_the_destructive_waiting(
    team: Team,
) -> None:
    result = team.supervisor.run("Migrate database orders", wait=0.2)
    assert result.status == "pending"
    assert _steps(result) == [
        ("credential", "done"),
        ("plan", "done"),
        ("plan", "done"),
        ("plan", "done"),
        ("apply-safe", "done"),
        ("approval", "requested"),
        ("approval", "waiting"),
        ("approval", "timeout"),
    ]
    planned = [s.data for s in result.steps[2:4]]
    assert [(p["version"], p["destructive"], p["findings"]) for p in planned] == [
        (1, False, []),
        (2, True, ["DS102"]),
    ]
    requested = result.steps[5]
    assert requested.data["approvers"] == ["dana@company.com"]
    import sqlite3

    with sqlite3.connect(team.work / "orders.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "orders" in tables and "legacy" not in tables  # V1 applied, V2 not
    # The DBA approves; the same task now finishes the destructive one.
    team.approve_as("dana@company.com")(result.approval_id)
    outcome = team.gate.resume(result.approval_id, team.supervisor.database.credential.token)
    assert outcome.status == "succeeded"


def test_the_secret_manager_writes_and_rotates_and_never_shows_a_value(team: Team) -> None:
    value = "pw-ZQ8-distinctive-4471"
    result = team.supervisor.secrets.rotate_password(
        "staging/app/database-password", SecretValue(value)
    )
    assert result.ok, result.to_dict()
    assert result.result == {
        "path": "secrets/staging/app/database-password",
        "written_version": 1,
        "version": 2,
    }
    assert value not in json.dumps(result.to_dict())
    assert value not in json.dumps([e.to_dict() for e in team.seen])
    # The rotated value is a new one, readable through the gate by whoever may read.
    reader = team.agents["secret-manager"].credential(["read:secrets"])
    read = team.gate.execute(
        reader.token, Operation("read", "secrets/staging/app/database-password")
    )
    assert read.detail["version"] == 2 and read.detail["value"].reveal() != value


def test_planning(team: Team) -> None:
    sup = team.supervisor
    plan = sup.plan("Deploy  app-v2.0 to production.")
    assert (plan.kind, plan.agent, plan.args) == (
        "deploy",
        "deploy-agent",
        {"app": "app", "version": "2.0", "env": "production"},
    )
    assert plan.steps == (
        "credential",
        "deploy to staging",
        "approval for production (if policy asks)",
        "deploy to production",
        "health",
        "trust",
    )
    assert sup.plan("deploy web-api-v1.2.3 to staging").args == {
        "app": "web-api",
        "version": "1.2.3",
        "env": "staging",
    }
    assert sup.plan("Check health of app in production").agent == "monitoring-agent"
    for text in ("Deploy app to production", "rm -rf /", "Deploy app-v../.. to production", ""):
        with pytest.raises(opsgate.OperationError) as info:
            sup.plan(text)
        assert info.value.code == "task_unknown"


def test_a_task_outside_the_agents_grants_is_refused_and_charged(team: Team) -> None:
    before = team.agents["deploy-agent"].trust_score
    # An environment outside its grants: the gate refuses it like any escalation.
    result = team.supervisor.deploy.attempt(
        "deploy-agent reads a secret", "read", Operation("read", "secrets/production/x")
    )
    assert result.status == "refused"
    assert team.agents["deploy-agent"].trust_score == before - 75


def test_a_production_secret_write_waits_and_resumes_with_its_value(team: Team) -> None:
    value = "prod-pw-5530-distinctive"
    result = team.supervisor.secrets.rotate_password(
        "production/app/database-password",
        SecretValue(value),
        on_waiting=team.approve_as("john@company.com"),
    )
    assert result.ok, result.to_dict()
    # Two approvals (the write, then the rotation's write), each bound to its own value.
    assert [s.status for s in result.steps if s.step == "approval"].count("approved") == 2
    backend = team.gate.secrets.backend
    assert backend.get("secrets/production/app/database-password", 1).value.reveal() == value
    assert backend.get("secrets/production/app/database-password").version == 2
    assert value not in json.dumps(result.to_dict())


def test_agents_sign_a_proof_per_request_where_the_gate_requires_one(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    gate = opsgate.Gate.open(tmp_path / "state", require_proof=True)
    try:
        deployer = LocalDeployExecutor(
            tmp_path / "deployments", artifact_roots=[tmp_path / "artifacts"]
        )
        gate.register_executor("deploy", deployer)
        sup = gate.register_agent(
            "devops-supervisor",
            [c for scope in SEED_SCOPES.values() for c in scope],
            "platform-team@company.com",
            920,
        )
        agents = {n: sup.delegate(name=n, capabilities=s) for n, s in SEED_SCOPES.items()}
        artifact = tmp_path / "artifacts" / "app-1.0.tar"
        artifact.write_bytes(b"app 1.0")
        team = Supervisor.in_process(gate, agents, artifact_for=lambda a, v: str(artifact))
        result = team.run("Deploy app-v1.0 to staging")
        assert result.ok, result.to_dict()
        # The same request without a proof is refused: the agent's proofs did the work.
        op = Operation("deploy", "staging/app", {"version": "1.0", "artifact": str(artifact)})
        with pytest.raises(opsgate.InvalidCredential) as info:
            gate.execute(team.deploy.credential.token, op)
        assert info.value.code == "missing_proof"
    finally:
        gate.close()


def test_a_remote_secret_manager_resumes_an_approved_write_with_its_value(team: Team) -> None:
    """Over HTTP as in-process: the approved production write is sent again with its
    value (the remote SDK's resume takes none), and the value the approval bound is
    written."""
    from fastapi.testclient import TestClient

    from opsgate.agents.workers import SecretManager
    from opsgate.client import RemoteGate
    from opsgate.config import ServerConfig
    from opsgate.server import create_app

    base = "http://gate.test"
    client = TestClient(create_app(team.gate, ServerConfig(external_url=base)))
    key = team.gate.agents.private_key(team.agents["secret-manager"].did)
    value = "remote-prod-pw-8841-distinctive"
    with RemoteGate(base, key, transport=client._transport) as remote:
        handle = remote.credential(SEED_SCOPES["secret-manager"])
        agent = SecretManager("secret-manager", remote, handle, approval_timeout=5)
        result = agent.rotate_password(
            "production/app/remote-password",
            SecretValue(value),
            on_waiting=team.approve_as("john@company.com"),
        )
    assert result.ok, result.to_dict()
    backend = team.gate.secrets.backend
    assert backend.get("secrets/production/app/remote-password", 1).value.reveal() == value
    assert backend.get("secrets/production/app/remote-password").version == 2
    assert value not in json.dumps(result.to_dict())
