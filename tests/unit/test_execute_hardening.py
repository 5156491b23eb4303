"""The one path against executors that plan loosely or fail badly, and against
refusals that must not be charged: production is never downgraded, every failure is
scored, an interrupted run still leaves its outcome, bad input is a typed error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import RecordingExecutor, deploy, open_world

import opsgate
from opsgate.operations.base import Operation, Outcome, Plan


class LoosePlanner(RecordingExecutor):
    """Plans without an environment, or with the one given."""

    def __init__(self, environment: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.environment = environment

    def plan(self, operation: Operation) -> Plan:
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=self.environment,
            summary="helm upgrade",
        )


def test_a_plan_without_environment_still_needs_production_approval(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", executor=LoosePlanner())
    try:
        result = w.gate.execute(w.token, deploy("production/app-web"))
        assert isinstance(result, opsgate.PendingApproval)
        assert w.executor.count == 0
    finally:
        w.gate.close()


def test_a_plan_naming_another_environment_is_refused(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", executor=LoosePlanner(environment="staging"))
    try:
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(w.token, deploy("production/app-web"))
        assert info.value.code == "plan_failed"
        assert w.executor.count == 0
    finally:
        w.gate.close()


def test_a_trust_gate_refusal_is_not_charged(tmp_path: Path) -> None:
    """Trust 700 < 800 and no trust approvers: production is refused, not punished."""
    w = open_world(tmp_path / "state", policies=None, supervisor_trust=700)
    try:
        before = w.agent.trust_score
        for _ in range(4):
            with pytest.raises(opsgate.OperationError) as info:
                w.gate.execute(w.token, deploy("production/app-web"))
            assert info.value.code == "operation_denied"
        assert w.agent.trust_score == before and w.agent.status == "active"
        assert w.executor.count == 0
    finally:
        w.gate.close()


@pytest.mark.parametrize(
    "executor",
    [
        RecordingExecutor(raises=OSError("disk full")),
        RecordingExecutor(returns=Outcome("error", "half done")),  # type: ignore[arg-type]
        RecordingExecutor(returns="ok"),
        RecordingExecutor(returns=Outcome("failed", "rollout stuck")),  # unclassified
    ],
    ids=["raises", "unknown-status", "not-an-outcome", "unclassified-failure"],
)
def test_every_failed_deploy_is_scored_as_one(tmp_path: Path, executor: Any) -> None:
    w = open_world(tmp_path / "state", executor=executor)
    try:
        before = w.agent.trust_score
        outcome = w.gate.execute(w.token, deploy("staging/app-web"))
        assert isinstance(outcome, Outcome) and outcome.status == "failed"
        assert outcome.failure_kind == "deployment"
        assert w.agent.trust_score == before - 40
    finally:
        w.gate.close()


def test_an_interrupted_run_leaves_its_outcome_and_is_re_raised(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", executor=RecordingExecutor(raises=KeyboardInterrupt()))
    try:
        before = w.agent.trust_score
        with pytest.raises(KeyboardInterrupt):
            w.gate.execute(w.token, deploy("staging/app-web"))
        last = w.gate.audit.tail(1)[0]
        assert last.type == "operation.outcome" and last.event["outcome"] == "failed"
        assert w.agent.trust_score == before - 40
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


@pytest.mark.parametrize(
    "operation",
    [
        Operation("deploy", None, {}),  # type: ignore[arg-type]
        Operation("deploy", "staging/app-web", None),  # type: ignore[arg-type]
        Operation("deploy", "staging/app-web", [1]),  # type: ignore[arg-type]
        Operation(None, "staging/app-web", {}),  # type: ignore[arg-type]
    ],
    ids=["resource-none", "params-none", "params-list", "action-none"],
)
def test_malformed_operations_are_typed_errors(tmp_path: Path, operation: Operation) -> None:
    w = open_world(tmp_path / "state")
    try:
        before = w.agent.trust_score
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(w.token, operation)
        assert info.value.code == "operation_invalid"
        assert w.executor.count == 0
        last = w.gate.audit.tail(1)[0]  # refused, audited, not charged
        assert last.type == "operation.refused" and last.event["code"] == "operation_invalid"
        assert last.actor == w.agent.did and w.agent.trust_score == before
        with pytest.raises(opsgate.CapabilityError):
            w.gate.authorize(w.token, "deploy:Production/../x")
        assert w.gate.audit.tail(1)[0].type == "authorize.refused"
    finally:
        w.gate.close()


class BrokenPlanner(RecordingExecutor):
    def plan(self, operation: Operation) -> Plan:
        raise PermissionError("/proc/self/root")


def test_an_executor_that_cannot_plan_is_a_typed_error(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", executor=BrokenPlanner())
    try:
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(w.token, deploy("staging/app-web"))
        assert info.value.code == "plan_failed"
        assert "/proc" not in str(info.value)
    finally:
        w.gate.close()


def test_agents_cannot_start_below_the_suspension_threshold(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        with pytest.raises(opsgate.AgentError) as info:
            gate.register_agent(
                "low", ["deploy:staging"], sponsor="ops@company.com", trust_score=100
            )
        assert info.value.code == "trust_score_invalid"
        parent = gate.register_agent("p", ["deploy:staging"], sponsor="ops@company.com")
        with pytest.raises(opsgate.OpsgateError) as info:
            parent.delegate(name="c", capabilities=["deploy:staging"], trust_score=50)
        assert info.value.code == "trust_score_invalid"
        assert [a.name for a in gate.agents.list()] == ["p"]


# -- params, policy files, artifacts, approvals ------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), {1: "x"}, {"s": {1}}])
def test_params_that_are_not_plain_json_are_refused(tmp_path: Path, bad: Any) -> None:
    """A NaN would slip past `params.replicas > 10` and hash like null in the digest."""
    w = open_world(tmp_path / "state")
    try:
        with pytest.raises(opsgate.OpsgateError) as info:
            w.gate.execute(w.token, deploy("staging/app-web", replicas=bad))
        assert info.value.code == "params_invalid"
        with pytest.raises(opsgate.OpsgateError) as info:
            w.gate.authorize(w.token, "deploy:staging/app-web", params={"replicas": bad})
        assert info.value.code == "params_invalid"
        assert w.executor.count == 0
    finally:
        w.gate.close()


def test_yaml_aliases_in_a_policy_file_are_refused_at_once(tmp_path: Path) -> None:
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "x:\n"
        + "".join(f"  {line}\n" for line in levels)
        + "policies:\n  - name: p\n    rules:\n      - {condition: 'true', action: *i}\n"
    )
    with pytest.raises(opsgate.PolicyError) as info:
        opsgate.Gate.open(tmp_path / "state", policies=bomb)
    assert info.value.code == "policy_syntax"
    assert "alias" in str(info.value)


def test_an_artifact_with_a_symlink_is_refused(tmp_path: Path) -> None:
    from opsgate.operations.deploy import LocalDeployExecutor

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.py").write_text("print('approved?')")
    artifact = tmp_path / "artifacts" / "release"
    artifact.mkdir(parents=True)
    (artifact / "README").write_text("release")
    (artifact / "lib").symlink_to(outside)
    executor = LocalDeployExecutor(
        tmp_path / "deployments", artifact_roots=[tmp_path / "artifacts"]
    )
    w = open_world(tmp_path / "state", executor=executor)  # type: ignore[arg-type]
    try:
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(
                w.token,
                Operation(
                    "deploy", "staging/app-web", {"version": "1.0", "artifact": str(artifact)}
                ),
            )
        assert info.value.code == "artifact_invalid"
        assert not (tmp_path / "deployments").exists()
    finally:
        w.gate.close()


def test_members_of_a_sponsor_group_cannot_approve_its_agents_requests(tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "policies:\n"
        "  - name: prod\n"
        "    rules:\n"
        "      - condition: \"action == 'deploy' and environment == 'production'\"\n"
        "        action: require_approval\n"
        "        approvers: [sre-team@company.com]\n"
        "groups:\n"
        "  sre-team@company.com: [john@company.com, jane@company.com]\n"
        "  platform-lead@company.com: [john@company.com]\n"  # the supervisor's sponsor
    )
    w = open_world(tmp_path / "state", policies=policies)
    try:
        pending = w.gate.execute(w.token, deploy("production/app-web"))
        assert isinstance(pending, opsgate.PendingApproval)
        with pytest.raises(opsgate.ApprovalError) as info:
            w.approve(pending.approval_id, "john@company.com")
        assert info.value.code == "self_approval"
        assert w.approve(pending.approval_id, "jane@company.com").status == "approved"
    finally:
        w.gate.close()


def test_a_token_pasted_into_an_approval_comment_is_not_kept(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state")
    try:
        pending = w.gate.execute(w.token, deploy("production/app-web"))
        john = w.approver_tokens["john@company.com"]
        req = w.approve(pending.approval_id, "jane@company.com", comment=f"see {john}")
        assert john not in str(req.to_dict())
        for record in w.gate.audit.events():
            assert john[9:] not in str(record.event)
    finally:
        w.gate.close()


def test_replaying_a_leaked_expired_token_costs_its_agent_once(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state")
    try:
        t = 1_900_000_000.0
        token = w.credential(now=t)
        before = w.agent.trust_score
        for i in range(4):
            with pytest.raises(opsgate.InvalidCredential) as info:
                w.gate.authorize(token, "deploy:staging/app-web", now=t + 3600 + i)
            assert info.value.code == "expired"
        assert w.agent.trust_score == before - 150
        rejected = [r for r in w.gate.audit.events() if r.type == "credential.rejected"]
        assert len(rejected) == 4  # every attempt is still on record
    finally:
        w.gate.close()
