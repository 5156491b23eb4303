"""Monitoring through the gate: `read:monitoring/<env>/<app>` (health, deploy status and
history) and `read:monitoring/gate` (agents and trust, pending approvals, audit head,
open leases, locks). Real deploys into a local root, a real HTTP health endpoint. The
monitoring agent reads and does nothing else: every other operation it tries is
refused before any executor runs and charged as an escalation."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_world import FAST, World, closed_port_url, deploy_world
from helpers import policy
from sqlalchemy import select

import opsgate
from opsgate.operations.base import Operation, Outcome
from opsgate.operations.deploy.executor import STATUS_RELEASES
from opsgate.operations.monitor import monitor_operation
from opsgate.operations.monitor.executor import HEALTH_VIEWS_AT_ONCE
from opsgate.secrets.value import SecretValue
from opsgate.store import schema
from opsgate.store.deployments import LockRecord
from opsgate.store.processes import host_name, process_start


@dataclass
class Watch:
    world: World
    monitor: opsgate.Agent
    token: str

    @property
    def gate(self) -> opsgate.Gate:
        return self.world.gate

    def read(self, target: str, view: str = "status", **params: Any) -> Outcome:
        out = self.gate.execute(self.token, monitor_operation(target, view, **params))  # type: ignore[arg-type]
        assert isinstance(out, Outcome), out
        return out


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Watch]:
    with deploy_world(tmp_path, health={}) as w:
        sup = w.gate.register_agent(
            "devops-supervisor",
            ["read:monitoring", "read:secrets", "write:secrets", "deploy:staging"],
            sponsor="lead@company.com",
            trust_score=920,
        )
        monitor = sup.delegate(name="monitoring-agent", capabilities=["read:monitoring"])
        token = w.gate.credential_manager.issue_credential(monitor.did, ["read:monitoring"]).token
        yield Watch(w, monitor, token)


def _deploy_rows(gate: opsgate.Gate) -> list[tuple[Any, ...]]:
    with gate.store.read() as conn:
        out = []
        for table in (schema.deployments, schema.deploy_releases, schema.deploy_locks):
            out.extend(tuple(r) for r in conn.execute(select(table)).all())
    return out


def test_the_app_views_report_what_the_deploys_did(watch: Watch) -> None:
    w = watch.world
    w.promote("1.0")
    assert w.deploy("staging", "1.1").status == "succeeded"
    status = watch.read("staging/web")
    assert status.detail["current"] == "1.1" == w.current("staging")
    assert status.detail["backend"] == "local" and status.detail["lock"] is None
    assert status.detail["last"]["version"] == "1.1"
    assert set(status.detail["releases"]) == {"1.0", "1.1"}
    assert "1.1 live" in status.summary

    history = watch.read("staging/web", "history", limit=5)
    assert [r["version"] for r in history.detail["history"]] == ["1.1", "1.0"]
    assert all(r["status"] == "succeeded" for r in history.detail["history"])
    assert [
        r["version"] for r in watch.read("staging/web", "history", limit=1).detail["history"]
    ] == ["1.1"]

    before = w.health.requests
    health = watch.read("production/web", "health")
    assert health.detail["current"] == "1.0"
    assert health.detail["health"]["status"] == "passed"
    assert w.health.requests > before  # the configured probe really ran


def test_a_failing_app_is_reported_not_charged_to_the_monitor(watch: Watch) -> None:
    w = watch.world
    assert w.deploy("staging", "1.0").status == "succeeded"
    w.health.script(500)
    score = watch.monitor.trust_score
    health = watch.read("staging/web", "health")
    assert health.status == "succeeded"  # the read worked; the app did not
    assert health.detail["health"]["status"] == "failed"
    assert "health failed" in health.summary
    assert watch.monitor.trust_score >= score
    assert all(c.cause != "failed_deployment" for c in w.gate.trust.history(watch.monitor.did))
    outcome = w.gate.audit.tail(1, event_type="operation.outcome")[0].event
    assert outcome["capability"] == "read:monitoring/staging/web"
    assert outcome["detail"] == {"view": "health", "health": "failed", "current": "1.0"}


def test_reads_change_nothing(watch: Watch) -> None:
    w = watch.world
    w.promote("1.0")
    rows = _deploy_rows(w.gate)
    on_disk = (w.on_disk("staging"), w.on_disk("production"))
    for view in ("status", "history", "health"):
        for env in ("staging", "production"):
            watch.read(f"{env}/web", view)
    watch.read("gate")
    assert _deploy_rows(w.gate) == rows
    assert (w.on_disk("staging"), w.on_disk("production")) == on_disk
    assert w.current("production") == "1.0"


def test_the_gate_status(watch: Watch) -> None:
    w = watch.world
    gate = w.gate
    # A pending production deploy, a held deploy lock, and leases (one open, one revoked).
    staged = w.deploy("staging", "2.0")
    assert staged.status == "succeeded"
    gate.load_policies(policy("policies.yaml"))  # production deploys need an SRE
    pending = w.deploy("production", "2.0", str(w.artifacts / "web-2.0.tar"))
    assert isinstance(pending, opsgate.PendingApproval)
    now = time.time()
    lock = LockRecord(
        env="staging",
        app="web",
        token="t-1",
        holder_did=w.agent.did,
        holder_name=w.agent.name,
        capability="deploy:staging/web",
        message="hotfix",
        deployment_id=None,
        host=host_name(),
        pid=os.getpid(),
        process_start=process_start(os.getpid()),
        started_at=now,
        expires_at=now + 600,
    )
    assert w.executor.ledger.take_lock(lock, now).acquired
    for lease, ttl in (("lease/open", 300), ("lease/revoked", 300), ("lease/old", 1)):
        gate.audit.append(
            "secrets.lease_issued",
            actor="gate",
            at=now - (10 if lease == "lease/old" else 0),
            database="orders",
            role="migrator",
            lease_id=lease,
            username=f"v-{lease[6:]}",
            ttl=ttl,
            purpose="migrate",
            agent="database-agent",
        )
    gate.audit.append(
        "secrets.lease_revoked", actor="gate", at=now, database="orders", lease_id="lease/revoked"
    )
    head_before = gate.audit.head()[0]

    status = watch.read("gate").detail
    assert status["gate"] == gate.gate_id
    by_name = {a["name"]: a for a in status["agents"]}
    assert set(by_name) == {"deployer", "devops-supervisor", "monitoring-agent"}
    assert status["agent_count"] == 3
    assert by_name["deployer"]["trust_score"] == w.agent.trust_score
    assert by_name["monitoring-agent"]["effective_trust"] == watch.monitor.effective_trust
    assert by_name["monitoring-agent"]["depth"] == 1
    assert status["approvals"]["pending_count"] == 1
    [req] = status["approvals"]["pending"]
    assert req["id"] == pending.approval_id and req["capability"] == "deploy:production/web"
    assert req["approvers"] == ["jane@company.com", "john@company.com"]
    # The head as the read found it: a read's own records (attempt and outcome) are
    # written after it ran, together; both land right after that head.
    assert status["audit"]["head_seq"] == head_before
    assert [r.type for r in gate.audit.events(after_seq=head_before)] == [
        "operation.attempt",
        "operation.outcome",
    ]
    assert [x["lease_id"] for x in status["leases"]] == ["lease/open"]
    assert status["leases"][0]["username"] == "v-open"
    [held] = status["locks"]
    assert (held["app"], held["holder_name"], held["message"]) == ("web", "deployer", "hotfix")
    assert held["stale"] is False and "token" not in held
    # The app's own view names the lock too.
    assert watch.read("staging/web").detail["lock"]["message"] == "hotfix"


@pytest.mark.parametrize(
    ("operation", "secret"),
    [
        (Operation("deploy", "staging/web", {"version": "9.9", "artifact": "/x"}), None),
        (Operation("read", "secrets/production/db-password"), None),
        (Operation("write", "secrets/staging/db-password"), SecretValue("hunter2-hunter2")),
        (Operation("rollback", "production/web"), None),
        (Operation("deploy", "staging/web", {"version": "9.9"}, dry_run=True), None),
    ],
    ids=["deploy", "secret-read", "secret-write", "rollback", "dry-run"],
)
def test_the_monitoring_agent_can_do_nothing_else(
    watch: Watch, operation: Operation, secret: SecretValue | None
) -> None:
    w = watch.world
    gate = w.gate
    if secret is not None:
        operation = Operation(operation.action, operation.resource, secret=secret)
    plans_before = len(w.events)
    before = watch.monitor.trust_score
    with pytest.raises(opsgate.OperationError) as info:
        gate.execute(watch.token, operation)
    assert info.value.code == "operation_denied"
    assert watch.monitor.trust_score == before - 75
    last = gate.trust.history(watch.monitor.did)[-1]
    assert (last.cause, last.delta) == ("policy_violation", -75)
    assert len(w.events) == plans_before  # no executor ran
    assert w.on_disk("staging") == [] and w.current("staging") is None
    denied = gate.audit.tail(1, event_type="operation.denied")[0]
    assert denied.actor == watch.monitor.did
    assert "hunter2" not in str(denied.event)


def test_the_monitoring_agent_gets_no_wider_credential_or_grant(watch: Watch) -> None:
    gate = watch.gate
    before = watch.monitor.trust_score
    for scope in (["deploy:staging"], ["read:secrets"], ["read:monitoring", "write:secrets"]):
        with pytest.raises(opsgate.CredentialError) as info:
            gate.credential_manager.issue_credential(watch.monitor.did, scope)
        assert info.value.code == "scope_not_covered"
    assert watch.monitor.trust_score == before - 3 * 75
    with pytest.raises(opsgate.OpsgateError) as refused:
        watch.monitor.delegate(name="sneaky", capabilities=["read:secrets"])
    assert refused.value.code == "delegation_not_covered"
    assert watch.monitor.trust_score == before - 4 * 75


@pytest.mark.parametrize(
    ("target", "params", "code"),
    [
        ("prd-eu/web", {}, "environment_undeclared"),
        ("staging", {}, "operation_invalid"),
        ("staging/web/extra", {}, "operation_invalid"),
        ("staging/..", {}, "capability_malformed"),
        ("gate", {"view": "health"}, "params_invalid"),
        ("staging/web", {"view": "shell"}, "params_invalid"),
        ("staging/web", {"limit": "5"}, "params_invalid"),
        ("staging/web", {"command": "rm -rf /"}, "params_invalid"),
    ],
)
def test_malformed_reads_are_refused_uncharged(
    watch: Watch, target: str, params: dict[str, Any], code: str
) -> None:
    before = watch.monitor.trust_score
    op = Operation("read", f"monitoring/{target}", params)
    with pytest.raises(opsgate.OpsgateError) as info:
        watch.gate.execute(watch.token, op)
    assert info.value.code == code
    assert watch.monitor.trust_score == before


def test_production_reads_get_the_trust_gate(watch: Watch) -> None:
    gate = watch.gate
    sup = gate.agents.get("devops-supervisor")
    junior = sup.delegate(name="junior", capabilities=["read:monitoring"], trust_score=750)
    token = gate.credential_manager.issue_credential(junior.did, ["read:monitoring"]).token
    assert isinstance(gate.execute(token, monitor_operation("staging/web")), Outcome)
    score = junior.trust_score
    with pytest.raises(opsgate.OperationError) as info:  # no trust approvers configured
        gate.execute(token, monitor_operation("production/web"))
    assert info.value.code == "operation_denied" and "below 800" in info.value.message
    assert junior.trust_score == score  # low trust is not an offence


def test_without_a_deploy_executor_app_views_are_unavailable(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        agent = gate.register_agent("watcher", ["read:monitoring"], "lead@company.com", 900)
        token = gate.credential_manager.issue_credential(agent.did, ["read:monitoring"]).token
        with pytest.raises(opsgate.OperationError) as info:
            gate.execute(token, monitor_operation("staging/web"))
        assert info.value.code == "monitoring_unavailable"
        status = gate.execute(token, monitor_operation("gate"))
        assert isinstance(status, Outcome) and status.detail["locks"] == []
        assert [a["name"] for a in status.detail["agents"]] == ["watcher"]


def test_reads_earn_no_trust_credit(watch: Watch) -> None:
    """A read changes nothing and risks nothing: distinct views, secret paths or
    versions must not farm credit towards the approval line (like dry runs)."""
    w = watch.world
    assert w.deploy("staging", "1.0").status == "succeeded"
    before = watch.monitor.trust_score
    for limit in range(1, 31):
        watch.read("staging/web", "history", limit=limit)
    watch.read("staging/web", "health")
    watch.read("gate")
    assert watch.monitor.trust_score == before
    assert all(c.cause != "success" for c in w.gate.trust.history(watch.monitor.did))

    scope = ["read:secrets/staging", "list:secrets/staging", "write:secrets/staging"]
    reader = w.gate.register_agent(
        "secret-reader", scope, sponsor="lead@company.com", trust_score=700
    )
    token = w.gate.credential_manager.issue_credential(reader.did, scope).token
    for i in range(3):
        write = Operation("write", "secrets/staging/app/db", {}, secret=SecretValue(f"v{i}"))
        assert w.gate.execute(token, write).status == "succeeded"  # type: ignore[union-attr]
    written = reader.trust_score
    for i in range(1, 4):
        read = Operation("read", "secrets/staging/app/db", {"version": i})
        assert w.gate.execute(token, read).status == "succeeded"  # type: ignore[union-attr]
    assert w.gate.execute(token, Operation("list", "secrets/staging/app", {})).status == "succeeded"  # type: ignore[union-attr]
    assert reader.trust_score == written


def _concurrent_health_reads(
    gate: opsgate.Gate, token: str, targets: list[str]
) -> tuple[list[Outcome], list[opsgate.OpsgateError], float]:
    """Every target's health view at once; (outcomes, refusals, slowest refusal's seconds)."""
    barrier = threading.Barrier(len(targets))
    outcomes: list[Outcome] = []
    refusals: list[opsgate.OpsgateError] = []
    slowest = [0.0]

    def read(target: str) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            out = gate.execute(token, monitor_operation(target, "health"))
            assert isinstance(out, Outcome)
            outcomes.append(out)
        except opsgate.OpsgateError as exc:
            refusals.append(exc)
            slowest[0] = max(slowest[0], time.monotonic() - started)

    threads = [threading.Thread(target=read, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes, refusals, slowest[0]


def test_health_views_run_one_per_app_and_few_at_once(tmp_path: Path) -> None:
    """A health view runs the app's whole health gate (up to its deadline when the app is
    down), on a thread of the gate's: a monitoring agent asking for many at once must
    not tie up the gate's workers (and the app's probe target) with one run per request."""
    down = {"url": closed_port_url(), **FAST, "deadline_seconds": 1.5}
    names = [f"app{i}" for i in range(HEALTH_VIEWS_AT_ONCE + 3)]
    apps = {name: {"health": {"staging": down}} for name in ["web", *names]}
    with deploy_world(tmp_path, apps=apps) as w:
        agent = w.gate.register_agent(
            "monitoring-agent", ["read:monitoring"], sponsor="lead@company.com", trust_score=900
        )
        token = w.gate.credential_manager.issue_credential(agent.did, ["read:monitoring"]).token

        outcomes, refusals, slowest = _concurrent_health_reads(w.gate, token, ["staging/web"] * 8)
        assert len(outcomes) == 1 and outcomes[0].detail["health"]["status"] == "inconclusive"
        assert len(refusals) == 7 and {e.code for e in refusals} == {"monitoring_busy"}
        assert slowest < 1.0  # refused at once, not after waiting for the running check
        refused = w.gate.audit.tail(8, event_type="operation.outcome")
        assert sum(r.event["outcome"] == "refused" for r in refused) == 7
        assert agent.trust_score == 900  # contention is not an offence

        outcomes, refusals, _ = _concurrent_health_reads(
            w.gate, token, [f"staging/{n}" for n in names]
        )
        assert len(outcomes) == HEALTH_VIEWS_AT_ONCE
        assert len(refusals) == 3 and {e.code for e in refusals} == {"monitoring_busy"}
        # Once they have ended, a health view runs again.
        assert w.gate.execute(token, monitor_operation("staging/web", "health")).status == (  # type: ignore[union-attr]
            "succeeded"
        )


def test_a_deploy_message_reaches_monitoring_without_the_secrets_pasted_into_it(
    watch: Watch,
) -> None:
    """A deploy's message is stored in the deploy tables and read back by every agent
    holding read:monitoring (and `opsgate status`): a token pasted into it must not be."""
    w = watch.world
    apr = "opsg_apr_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    assert w.deploy("staging", "1.0", message=f"first, with {apr}").status == "succeeded"
    assert w.deploy("staging", "1.1", message=f"second {jwt}").status == "succeeded"
    back = w.rollback("staging", to="1.0", message=f"undo, token {apr}")
    assert back.status == "succeeded"
    status = watch.read("staging/web")
    history = watch.read("staging/web", "history")
    messages = [r["message"] for r in history.detail["history"]]
    assert [m.split()[0] for m in messages] == ["undo,", "second", "first,"]  # kept, cut
    with w.gate.store.read() as conn:
        stored = [tuple(r) for r in conn.execute(select(schema.deployments)).all()]
    for text in (str(status.detail), str(history.detail), str(stored)):
        assert "opsg_apr_A1b2" not in text and "eyJhbGciOiJFZERTQSJ9" not in text


def test_a_plan_shows_the_health_url_without_its_query(tmp_path: Path) -> None:
    """A health URL may carry a key in its query (userinfo is refused for that reason:
    plans are shown): a monitoring agent's dry run must not hand it out."""
    url = f"{closed_port_url()}?api_key=k3y-s3cr3t&full=1"
    apps = {"web": {"health": {"staging": {"url": url, **FAST}}}}
    with deploy_world(tmp_path, apps=apps) as w:
        agent = w.gate.register_agent(
            "monitoring-agent", ["read:monitoring"], sponsor="lead@company.com", trust_score=900
        )
        token = w.gate.credential_manager.issue_credential(agent.did, ["read:monitoring"]).token
        op = Operation("read", "monitoring/staging/web", {"view": "health"}, dry_run=True)
        out = w.gate.execute(token, op)
        assert isinstance(out, Outcome) and out.status == "dry_run"
        (step,) = out.detail["plan"]["steps"]
        assert "k3y-s3cr3t" not in step and "api_key" not in step
        assert step.startswith(f"health: GET {url.split('?')[0]}?")
        assert not any("k3y-s3cr3t" in str(r.event) for r in w.gate.audit.tail(50))


def test_the_status_view_lists_a_bounded_number_of_releases(watch: Watch) -> None:
    """A command backend never prunes, so an app deployed for years has thousands of
    recorded releases: the status view lists the newest, and counts them all."""
    w = watch.world
    assert w.deploy("staging", "1.0").status == "succeeded"
    ledger = w.executor.ledger
    for i in range(STATUS_RELEASES + 200):
        assert ledger.claim_release("staging", "web", f"0.{i}", None, None, 1_000.0 + i) is None
    status = watch.read("staging/web")
    releases = status.detail["releases"]
    assert len(releases) == STATUS_RELEASES
    assert status.detail["release_count"] == STATUS_RELEASES + 201
    assert releases[0] == "1.0" and releases[1] == f"0.{STATUS_RELEASES + 199}"
