"""Operations, plans and outcomes: what every executor takes and returns.

An executor's `plan()` is pure (no side effects): it says which capability the
operation needs, which attributes policy sees, and what exactly will happen.
The plan digest binds approvals to that exact content. `run()` does the I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from opsgate.errors import OperationError


@dataclass(frozen=True, slots=True)
class Operation:
    """A request to do something: `action` on `resource` with `params`."""

    action: str
    resource: str
    params: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def capability(self) -> str:
        return f"{self.action}:{self.resource}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "resource": self.resource, "params": self.params}


@dataclass(frozen=True, slots=True)
class Plan:
    """What an executor will do; pure data, hashed into `digest`."""

    operation: Operation
    capability: str
    environment: str | None = None
    destructive: bool = False
    summary: str = ""
    steps: tuple[str, ...] = ()
    content: dict[str, Any] = field(default_factory=dict)  # artifact digests, checksums, ...
    attributes: dict[str, Any] = field(default_factory=dict)  # extra names for policy

    @property
    def digest(self) -> str:
        return plan_digest(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation.to_dict(),
            "capability": self.capability,
            "environment": self.environment,
            "destructive": self.destructive,
            "summary": self.summary,
            "steps": list(self.steps),
            "content": self.content,
            "digest": self.digest,
        }


def plan_digest(plan: Plan) -> str:
    """SHA-256 of the canonical JSON of the operation and the plan's content."""
    try:
        body = orjson.dumps(
            {
                "operation": plan.operation.to_dict(),
                "capability": plan.capability,
                "environment": plan.environment,
                "destructive": plan.destructive,
                "steps": list(plan.steps),
                "content": plan.content,
            },
            option=orjson.OPT_SORT_KEYS,
        )
    except TypeError as exc:
        raise OperationError(
            "operation parameters must be plain json values", code="params_invalid"
        ) from exc
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened. `failure_kind` feeds trust (e.g. "deployment", "migration")."""

    status: Literal["succeeded", "failed", "dry_run"]
    summary: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    failure_kind: str | None = None
    audit_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class Executor(Protocol):
    """Plans and runs one kind of operation."""

    def plan(self, operation: Operation) -> Plan: ...

    def run(self, plan: Plan) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class RunContext:
    """Who a run is for, as the gate authenticated it (for records the executor keeps,
    such as a migration history row). Never part of the plan digest."""

    agent_did: str
    agent_name: str
    approval_id: str | None = None


class ContextualExecutor(Executor, Protocol):
    """An executor whose run needs to know who asked: the gate calls `run_with_context`."""

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome: ...
