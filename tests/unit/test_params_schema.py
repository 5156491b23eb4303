"""Each executor declares the schema of its params; the gate checks params against it
before policy runs (strict types, unknown keys refused), so policy sees typed values
and a refusal names the field without echoing the value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DATA, RecordingExecutor, World, audit_events, audit_types, open_world
from pydantic import BaseModel, ConfigDict

import opsgate
from opsgate.operations.base import NoParams, Operation, OperationParams, Outcome, Plan

CASES = yaml.safe_load((DATA / "params" / "cases.yaml").read_text(encoding="utf-8"))["cases"]
BASE = {"version": "2.4.1", "artifact_digest": "sha256:" + "ab" * 32}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = open_world(tmp_path / "state", DATA / "params" / "deny_drop_tables.yaml")
    yield w
    w.gate.close()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_params_are_typed_before_policy_runs(world: World, case: dict[str, Any]) -> None:
    w = world
    params = {**BASE, **case["params"]}
    before = w.agent.trust_score
    if "effect" in case:
        outcome = w.gate.execute(w.token, Operation("deploy", "staging/app-web", params))
        assert isinstance(outcome, Outcome) and outcome.status == "succeeded"
        assert audit_events(w.gate, "operation.attempt")[-1]["decision"] == case["effect"]
        return
    with pytest.raises(opsgate.OpsgateError) as info:
        w.gate.execute(w.token, Operation("deploy", "staging/app-web", params))
    assert info.value.code == case["code"]
    message = str(info.value)
    if "field" in case:
        assert repr(case["field"]) in message
    if "hidden" in case:
        assert case["hidden"] not in message
        assert case["hidden"] not in repr(info.value)
        for record in w.gate.audit.tail(5):
            assert case["hidden"] not in str(record.event)
    assert w.executor.count == 0
    if case["code"] == "params_invalid":  # refused before policy: no decision, no charge
        assert audit_types(w.gate)[-1] == "operation.refused"
        assert audit_events(w.gate, "operation.refused")[-1]["code"] == "params_invalid"
        assert "operation.denied" not in audit_types(w.gate)
        assert w.agent.trust_score == before
        assert w.executor.plans == []  # the executor never saw the untyped params


def test_authorize_types_params_the_same_way(world: World) -> None:
    w = world
    for bad in (1, "yes"):
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.authorize(w.token, "deploy:staging/app-web", params={**BASE, "drop_tables": bad})
        assert info.value.code == "params_invalid"
        assert w.gate.audit.tail(1)[0].type == "authorize.refused"
    denied = w.gate.authorize(
        w.token, "deploy:staging/app-web", params={**BASE, "drop_tables": True}
    )
    assert denied.effect == "deny"


def test_policy_sees_the_declared_defaults(tmp_path: Path) -> None:
    """An omitted param is its declared default, typed, not null."""
    policies = tmp_path / "p.yaml"
    policies.write_text(
        "policies:\n  - name: only-explicit-keeps\n    rules:\n"
        "      - condition: \"action == 'deploy' and params.drop_tables == false\"\n"
        "        action: deny\n"
    )
    w = open_world(tmp_path / "state", policies)
    try:
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(w.token, Operation("deploy", "staging/app-web", dict(BASE)))
        assert info.value.code == "operation_denied"
    finally:
        w.gate.close()


def test_the_digest_binds_the_typed_params(world: World) -> None:
    """What the plan (and an approval) carries is what the schema accepted."""
    w = world
    outcome = w.gate.execute(w.token, Operation("deploy", "staging/app-web", dict(BASE)))
    assert outcome.status == "succeeded"
    assert w.executor.runs[0].operation.params == BASE


class Loose(OperationParams):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class Lax(OperationParams):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class NotOurs(BaseModel):
    x: int = 0


class NoSchema:
    def plan(self, operation: Operation) -> Plan:  # pragma: no cover - never registered
        raise AssertionError

    def run(self, plan: Plan) -> Outcome:  # pragma: no cover - never registered
        raise AssertionError


@pytest.mark.parametrize("model", [None, Loose, Lax, NotOurs, dict], ids=str)
def test_an_executor_without_a_strict_schema_cannot_be_registered(
    tmp_path: Path, model: Any
) -> None:
    executor: Any = NoSchema()
    if model is not None:
        executor.params_model = model
    with opsgate.Gate.open(tmp_path / "state") as gate:
        with pytest.raises(opsgate.ConfigError) as info:
            gate.register_executor("deploy", executor)
        assert info.value.code == "executor_invalid"
        assert "deploy" not in gate._executors


def test_an_executor_without_params_refuses_any(tmp_path: Path) -> None:
    class Status(RecordingExecutor):
        params_model = NoParams

    w = open_world(tmp_path / "state")
    try:
        w.gate.register_executor("deploy", Status())
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(w.token, Operation("deploy", "staging/app-web", {"verbose": True}))
        assert info.value.code == "params_invalid" and "'verbose'" in str(info.value)
        outcome = w.gate.execute(w.token, Operation("deploy", "staging/app-web", {}))
        assert outcome.status == "succeeded"
    finally:
        w.gate.close()
