"""run_executor: every way an executor's run can end becomes an Outcome the gate can
record (or, for RunRefused, the refusal itself), tested without a gate."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from opsgate.errors import MigrationContended, OperationError, RunRefused
from opsgate.operations.base import (
    NoParams,
    Operation,
    Outcome,
    Plan,
    RunContext,
    plan_digest,
    run_executor,
)

PLAN = Plan(Operation("deploy", "staging/web"), "deploy:staging/web", summary="deploy web")
CONTEXT = RunContext("did:key:z6MkAgent", "deployer", "approval-1", 300.0, "token")


class Runs:
    """An executor whose run does what it is told: return `result` or raise `error`."""

    params_model: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.calls: list[tuple[Plan, RunContext | None]] = []

    def plan(self, operation: Operation) -> Plan:
        return PLAN

    def run(self, plan: Plan) -> Outcome:
        self.calls.append((plan, None))
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


class RunsWithContext(Runs):
    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        self.calls.append((plan, context))
        return self.result  # type: ignore[no-any-return]


def test_a_succeeded_outcome_is_returned_as_it_is() -> None:
    done = Outcome("succeeded", "deployed web", {"release": "r1"}, audit_fields={"release": "r1"})
    executor = Runs(done)
    assert run_executor(executor, PLAN, CONTEXT) == (done, None)
    assert executor.calls == [(PLAN, None)]


def test_an_executor_that_takes_the_context_is_given_it() -> None:
    done = Outcome("failed", "health check failed", failure_kind="deployment")
    executor = RunsWithContext(done)
    assert run_executor(executor, PLAN, CONTEXT) == (done, None)
    assert executor.calls == [(PLAN, CONTEXT)]


def test_an_opsgate_error_fails_the_outcome_with_its_code() -> None:
    error = OperationError("the artifact is refused", code="artifact_refused")
    outcome, interrupted = run_executor(Runs(error=error), PLAN, CONTEXT)
    assert outcome == Outcome("failed", "the artifact is refused", {"code": "artifact_refused"})
    assert interrupted is None


def test_any_other_exception_is_named_by_its_class_only() -> None:
    error = ValueError("password=hunter2 in the connection string")
    outcome, interrupted = run_executor(Runs(error=error), PLAN, CONTEXT)
    assert outcome == Outcome("failed", "executor raised ValueError")
    assert "hunter2" not in repr(outcome)
    assert interrupted is None


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_an_interruption_fails_the_outcome_and_comes_back_to_be_raised(
    error: BaseException,
) -> None:
    outcome, interrupted = run_executor(Runs(error=error), PLAN, CONTEXT)
    assert outcome == Outcome("failed", f"interrupted by {type(error).__name__}")
    assert interrupted is error


@pytest.mark.parametrize(
    "error",
    [
        RunRefused("the deploy lock is held", code="deploy_locked"),
        MigrationContended("another run holds the lock", code="migration_locked"),
    ],
)
def test_a_run_refused_before_changing_anything_is_raised_as_it_is(error: RunRefused) -> None:
    with pytest.raises(RunRefused) as raised:
        run_executor(Runs(error=error), PLAN, CONTEXT)
    assert raised.value is error


@pytest.mark.parametrize(
    ("result", "summary"),
    [
        ({"status": "succeeded"}, "executor returned dict, not an Outcome"),
        (None, "executor returned NoneType, not an Outcome"),
        (Outcome("dry_run", "only a plan"), "executor returned status 'dry_run'"),
        (Outcome("done", "typo"), "executor returned status 'done'"),  # type: ignore[arg-type]
    ],
)
def test_a_result_that_is_not_a_finished_outcome_is_a_failure(result: Any, summary: str) -> None:
    assert run_executor(Runs(result), PLAN, CONTEXT) == (Outcome("failed", summary), None)


def test_a_plan_moved_to_an_environment_keeps_every_other_field_and_a_fresh_digest() -> None:
    """`Plan.in_environment` is `dataclasses.replace` spelled out: a field it forgot
    (one added later) would silently drop out of what the gate authorizes."""
    op = Operation("deploy", "production/app-web", {"version": "1.2"})
    values = {
        "operation": op,
        "capability": op.capability,
        "environment": "staging",
        "destructive": True,
        "summary": "s",
        "steps": ("a", "b"),
        "content": {"artifact": "sha256:00"},
        "attributes": {"x": 1},
        "requires": ("read:secrets/production/db",),
        "reads_only": True,
    }
    assert set(values) == {f.name for f in dataclasses.fields(Plan) if f.init}
    plan = Plan(**values)  # type: ignore[arg-type]
    staged = plan.digest
    moved = plan.in_environment("production")
    assert moved == dataclasses.replace(plan, environment="production")
    assert moved.digest != staged and moved.digest == plan_digest(moved)
