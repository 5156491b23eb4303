"""Operations, plans and outcomes: what every executor takes and returns.

An executor's `plan()` is pure (no side effects): it says which capability the
operation needs, which attributes policy sees, and what exactly will happen.
The plan digest binds approvals to that exact content. `run()` does the I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from opsgate.errors import ConfigError, OperationError, OpsgateError, RunRefused, safe_text

if TYPE_CHECKING:
    from opsgate.secrets.value import SecretValue


@dataclass(frozen=True, slots=True)
class Operation:
    """A request to do something: `action` on `resource` with `params`.

    `secret` carries a value to store (a secret write) beside the params, never in
    them: it is not in `to_dict()`, so no approval request, audit event or plan
    shows it; the executor's plan binds it with a keyed digest instead.
    """

    action: str
    resource: str
    params: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    secret: SecretValue | None = field(default=None, repr=False)

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
    # Capabilities the credential must cover besides `capability` (e.g. the secrets a
    # deploy command is handed): the gate refuses the operation unless it covers each.
    requires: tuple[str, ...] = ()
    # The operation changes nothing (a secret read, a status view): its attempt record
    # need not reach the disk before it runs, since the outcome's durable commit comes
    # before the caller gets anything. Not part of the digest: it is how the gate
    # writes, not what the operation does.
    reads_only: bool = False
    # The digest, once computed: a plan is read several times per operation (attempt,
    # outcome, approval) and never changes (`dataclasses.replace` starts it afresh).
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def digest(self) -> str:
        digest = self._digest
        if digest is None:
            digest = plan_digest(self)
            object.__setattr__(self, "_digest", digest)
        return digest

    def in_environment(self, environment: str) -> Plan:
        """This plan for `environment` (what `dataclasses.replace` does, for the
        gate's every operation at a fraction of its cost)."""
        return Plan(
            self.operation,
            self.capability,
            environment,
            self.destructive,
            self.summary,
            self.steps,
            self.content,
            self.attributes,
            self.requires,
            self.reads_only,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation.to_dict(),
            "capability": self.capability,
            "environment": self.environment,
            "destructive": self.destructive,
            "summary": self.summary,
            "steps": list(self.steps),
            "content": self.content,
            "requires": list(self.requires),
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
    # Fields for the outcome's audit event (the executor answers for their content:
    # scrubbed, bounded); `detail` goes to the caller only.
    audit_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class OperationParams(BaseModel):
    """Base of every executor's params schema: strict types, unknown keys refused.

    Policy compares params (`params.drop_tables == true`); without a schema `1` or
    `"yes"` would slip past such a rule. Subclass it and list the fields.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(OperationParams):
    """The schema of an executor that takes no params."""


class Executor(Protocol):
    """Plans and runs one kind of operation; `params_model` declares its params.

    An executor that reads or writes files may also define `forbid_paths(paths)`:
    the gate calls it at registration with its state dir, and it raises ConfigError
    if anything it would read or write overlaps those paths. One whose plans take
    the environment from configuration (a resource that names none) defines
    `environment_of(resource)`, pure, so `authorize` decides in that environment too.
    """

    params_model: ClassVar[type[BaseModel]]

    def plan(self, operation: Operation) -> Plan: ...

    def run(self, plan: Plan) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class RunContext:
    """Who a run is for, as the gate authenticated it (for records the executor keeps,
    such as a migration history row). Never part of the plan digest."""

    agent_did: str
    agent_name: str
    approval_id: str | None = None
    #: Seconds the credential that asked had left when the run started (by the gate's
    #: clock): nothing the run obtains for it (a leased database user) may outlive it.
    credential_ttl: float | None = None
    # The credential the operation was asked with: for an executor that hands it to a
    # child process it runs (never shown in a repr).
    credential: str | None = field(default=None, repr=False)


class ContextualExecutor(Executor, Protocol):
    """An executor whose run needs to know who asked: the gate calls `run_with_context`."""

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome: ...


def run_executor(
    executor: Executor, plan: Plan, context: RunContext
) -> tuple[Outcome, BaseException | None]:
    """Run `plan` (with `context` when the executor takes it); every way the run can
    fail becomes a failed Outcome, so an attempt always gets an outcome recorded.

    An OpsgateError keeps its code; any other exception is named by its class only;
    a result that is not a succeeded or failed Outcome is a failure. An interruption
    (KeyboardInterrupt, SystemExit) fails the outcome and comes back second, for the
    caller to raise once the outcome is recorded. `RunRefused` (refused before
    anything changed) is raised as it is.
    """
    try:
        with_context = getattr(executor, "run_with_context", None)
        outcome = with_context(plan, context) if callable(with_context) else executor.run(plan)
    except RunRefused:
        raise
    except OpsgateError as exc:
        return Outcome("failed", exc.message, {"code": exc.code}), None
    except Exception as exc:  # noqa: BLE001 - an executor bug is a failed operation, audited
        # Only the class name: an executor's message may carry secrets.
        return Outcome("failed", f"executor raised {exc.__class__.__name__}"), None
    except BaseException as exc:  # noqa: BLE001 - interrupted: record the outcome, re-raise
        return Outcome("failed", f"interrupted by {exc.__class__.__name__}"), exc
    if not isinstance(outcome, Outcome):
        returned = type(outcome).__name__
        return Outcome("failed", f"executor returned {returned}, not an Outcome"), None
    if outcome.status != "succeeded" and outcome.status != "failed":
        return Outcome("failed", f"executor returned status {outcome.status!r}"), None
    return outcome, None


def params_model_of(executor: object) -> type[BaseModel]:
    """The executor's declared params schema; none, or a loose one, is refused."""
    model = getattr(executor, "params_model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(
            f"executor {type(executor).__name__} must declare params_model, a pydantic "
            "model such as a subclass of opsgate.operations.base.OperationParams",
            code="executor_invalid",
        )
    cfg = model.model_config
    if cfg.get("extra") != "forbid" or cfg.get("strict") is not True:
        raise ConfigError(
            f"params_model {model.__name__} must keep extra='forbid' and strict=True",
            code="executor_invalid",
        )
    return model


# What a schema refusal says, by pydantic error type: never the value itself.
_PARAM_PROBLEMS = {
    "missing": "is required",
    "extra_forbidden": "is not a param of this operation",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "string_pattern_mismatch": "does not have the required form",
    "string_too_short": "is too short",
    "string_too_long": "is too long",
    "greater_than_equal": "is too small",
    "greater_than": "is too small",
    "less_than_equal": "is too large",
    "less_than": "is too large",
    "literal_error": "is not one of the allowed values",
    "enum": "is not one of the allowed values",
}


def validate_params(
    model: type[BaseModel], params: Mapping[str, Any], action: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params checked against the executor's schema before policy runs.

    Returns (the params as given, typed: what the operation and its digest carry;
    every field with defaults filled in: what policy sees). The refusal names the
    field and the problem, never the value, which may be a secret.
    """
    try:
        parsed = model.model_validate(dict(params), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(safe_text(str(p)) for p in first["loc"]) or "params"
        problem = _PARAM_PROBLEMS.get(first["type"], f"is invalid ({first['type']})")
        raise OperationError(
            f"param {where!r} of {safe_text(action)!r} {problem}", code="params_invalid"
        ) from None
    given = parsed.model_dump(mode="json", exclude_unset=True)
    return given, parsed.model_dump(mode="json")
