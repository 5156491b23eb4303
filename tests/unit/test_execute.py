"""Gate.execute, the one path: deny stops before the executor, dry runs run nothing,
the attempt is durably audited before anything runs (fail closed), and whatever an
executor does wrong ends as an audited failed outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    RELEASE,
    RecordingExecutor,
    World,
    audit_events,
    audit_types,
    deploy,
    failing_audit_writes,
    open_world,
    policy,
)

import opsgate
from opsgate.approvals import PendingApproval


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = open_world(tmp_path / "state", "deny_legacy.yaml")
    yield w
    w.gate.close()


def test_allowed_operation_runs_once_and_is_audited_before_and_after(world: World) -> None:
    w = world
    outcome = w.gate.execute(w.token, deploy("staging/app-web"))
    assert isinstance(outcome, opsgate.Outcome)
    assert outcome.status == "succeeded" and outcome.ok
    assert w.executor.count == 1
    plan = w.executor.runs[0]
    assert plan.environment == "staging"
    assert plan.content == RELEASE
    attempt = audit_events(w.gate, "operation.attempt")[-1]
    result = audit_events(w.gate, "operation.outcome")[-1]
    assert attempt["capability"] == "deploy:staging/app-web"
    assert attempt["digest"] == plan.digest
    assert attempt["decision"] == "allow"
    assert result["attempt_seq"] == attempt["seq"] < result["seq"] == outcome.audit_seq
    assert result["outcome"] == "succeeded"
    assert w.gate.audit.verify().ok


def test_deny_rule_refuses_and_the_executor_never_runs(world: World) -> None:
    w = world
    before = w.agent.trust_score
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(w.token, deploy("production/legacy"))
    assert exc.value.code == "operation_denied"
    decision = exc.value.detail["decision"]
    assert decision.effect == "deny"
    assert any("legacy-is-frozen" in m.policy for m in decision.matched)
    assert w.executor.count == 0
    assert w.gate.approvals.list() == []  # deny beats require_approval: nothing to approve
    types = audit_types(w.gate)
    assert "operation.denied" in types and "operation.attempt" not in types
    assert audit_events(w.gate, "operation.denied")[-1]["capability"] == "deploy:production/legacy"
    assert w.agent.trust_score == before - 75


def test_capability_outside_the_credential_scope_is_denied(world: World) -> None:
    w = world
    staging_only = w.credential(scope=["deploy:staging"])
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(staging_only, deploy("production/app-web"))
    assert exc.value.code == "operation_denied"
    assert exc.value.detail["decision"].violation == "out_of_scope"
    assert w.executor.count == 0
    assert w.gate.approvals.list() == []  # an out-of-scope request never reaches a human


def test_capability_outside_the_agents_grants_is_denied(world: World) -> None:
    w = world
    w.gate.register_executor("migrate", RecordingExecutor())
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(w.token, opsgate.Operation("migrate", "database/orders"))
    assert exc.value.code == "operation_denied"
    assert w.executor.count == 0


def test_dry_run_returns_the_plan_and_runs_nothing(world: World) -> None:
    w = world
    op = opsgate.Operation("deploy", "production/app-web", dict(RELEASE), dry_run=True)
    outcome = w.gate.execute(w.token, op)
    assert isinstance(outcome, opsgate.Outcome)
    assert outcome.status == "dry_run"
    plan = outcome.detail["plan"]
    assert plan["capability"] == "deploy:production/app-web"
    assert plan["environment"] == "production"
    assert plan["content"] == RELEASE
    assert plan["digest"] == w.executor.plan(deploy()).digest
    assert outcome.detail["decision"]["effect"] == "require_approval"
    assert w.executor.count == 0
    assert w.gate.approvals.list() == []  # a dry run asks nobody
    types = audit_types(w.gate)
    assert "operation.dry_run" in types and "operation.attempt" not in types


def test_dry_run_of_a_denied_operation_is_still_refused(world: World) -> None:
    w = world
    op = opsgate.Operation("deploy", "production/legacy", dict(RELEASE), dry_run=True)
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(w.token, op)
    assert exc.value.code == "operation_denied"
    assert w.executor.count == 0


def test_production_needs_approval_and_nothing_runs_meanwhile(world: World) -> None:
    w = world
    pending = w.gate.execute(w.token, deploy())
    assert isinstance(pending, PendingApproval)
    assert w.executor.count == 0
    assert "operation.attempt" not in audit_types(w.gate)


def test_unregistered_action_is_refused(world: World) -> None:
    # (rotate:secrets/... has an executor now: the secret operations are built in.)
    for op in (
        opsgate.Operation("scale", "staging/app-web"),
        opsgate.Operation("rotate", "staging/app-web"),  # not the secrets namespace
    ):
        with pytest.raises(opsgate.OperationError) as exc:
            world.gate.execute(world.token, op)
        assert exc.value.code == "executor_missing"


def test_something_that_is_not_an_operation_is_refused(world: World) -> None:
    with pytest.raises(opsgate.OperationError) as exc:
        world.gate.plan({"action": "deploy", "resource": "staging/app"})  # type: ignore[arg-type]
    assert exc.value.code == "operation_invalid"
    assert world.executor.count == 0


def test_unverifiable_credential_stops_before_planning(world: World) -> None:
    w = world
    with pytest.raises(opsgate.InvalidCredential):
        w.gate.execute(w.token + "x", deploy("staging/app-web"))
    assert w.executor.count == 0
    assert "operation.attempt" not in audit_types(w.gate)


def test_attempt_that_cannot_be_audited_does_not_run(world: World) -> None:
    """Fail closed: no durable attempt record, no execution."""
    w = world
    with failing_audit_writes(w.gate.audit), pytest.raises(opsgate.AuditError) as exc:
        w.gate.execute(w.token, deploy("staging/app-web"))
    assert exc.value.code == "audit_write_failed"
    assert w.executor.count == 0
    assert "operation.attempt" not in audit_types(w.gate)
    assert w.gate.audit.verify().ok
    # The gate is not wedged: the next attempt is recorded and runs.
    assert w.gate.execute(w.token, deploy("staging/app-web")).status == "succeeded"
    assert w.executor.count == 1


def test_failed_deployment_is_an_audited_failed_outcome(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", executor=RecordingExecutor(fail_kind="deployment"))
    try:
        outcome = w.gate.execute(w.token, deploy("staging/app-web"))
        assert outcome.status == "failed" and not outcome.ok
        assert outcome.failure_kind == "deployment"
        assert audit_events(w.gate, "operation.outcome")[-1]["outcome"] == "failed"
    finally:
        w.gate.close()


def test_executor_exception_is_a_failed_outcome_without_its_message(tmp_path: Path) -> None:
    secret = "hunter2-db-password"
    executor = RecordingExecutor(raises=RuntimeError(f"connect failed: password={secret}"))
    w = open_world(tmp_path / "state", executor=executor)
    try:
        outcome = w.gate.execute(w.token, deploy("staging/app-web"))
        assert outcome.status == "failed"
        assert outcome.summary == "executor raised RuntimeError"
        assert executor.count == 1
        for record in w.gate.audit.tail(10_000):
            assert secret not in str(record.event)
    finally:
        w.gate.close()


@pytest.mark.parametrize("returned", [{"status": "succeeded"}, "succeeded", 0])
def test_executor_returning_something_else_than_an_outcome_is_a_failed_outcome(
    tmp_path: Path, returned: object
) -> None:
    """An executor bug is a failed operation, audited; it never escapes the one path."""
    w = open_world(tmp_path / "state", executor=RecordingExecutor(returns=returned))
    try:
        try:
            outcome = w.gate.execute(w.token, deploy("staging/app-web"))
        except opsgate.OpsgateError as exc:  # a typed refusal would also be acceptable
            outcome = opsgate.Outcome("failed", exc.code)
        assert isinstance(outcome, opsgate.Outcome), outcome
        assert outcome.status == "failed"
        assert audit_events(w.gate, "operation.outcome"), "no outcome record for the attempt"
        assert audit_events(w.gate, "operation.outcome")[-1]["outcome"] == "failed"
    finally:
        w.gate.close()


def test_approval_id_for_another_operation_is_refused_on_an_allowed_one(world: World) -> None:
    """Even where no approval is needed, a stale approval id is never silently ignored."""
    w = world
    pending = w.gate.execute(w.token, deploy())
    assert isinstance(pending, PendingApproval)
    w.approve(pending.approval_id, "john@company.com")
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.execute(w.token, deploy("staging/app-web"), approval_id=pending.approval_id)
    assert exc.value.code == "digest_mismatch"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"


def test_policy_reload_takes_effect_on_the_next_execute(world: World) -> None:
    w = world
    assert w.gate.execute(w.token, deploy("staging/app-web")).status == "succeeded"
    w.gate.load_policies(policy("production_frozen.yaml"))
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(w.token, deploy("production/app-web"))
    assert exc.value.code == "operation_denied"
    assert w.executor.count == 1
