"""The tools `opsgate mcp` offers: each one governed operation, its arguments typed.

A tool's arguments are checked here first (strict types, unknown keys refused, one
resource segment where one is meant, so `env` can never smuggle a `/` into the
resource) and then become the operation's params exactly, so policy conditions see
them and an approval's digest binds them. The gate decides everything else.

A tool is offered to an agent only when one of its grants can cover some of the
tool's operations (same action, same resource namespace): deny by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsgate import capabilities as caps
from opsgate.errors import CapabilityError, OperationError, safe_text
from opsgate.operations.base import Operation
from opsgate.secrets.executor import MAX_VERSION
from opsgate.secrets.value import SecretValue

#: One resource segment (an environment, an app, a database name).
_SEGMENT = r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}$"
#: A secret path below secrets/: `<env>/<name>[/...]`, each segment as above.
_PATH = r"^(?!\.{1,2}(/|$))[A-Za-z0-9._-]{1,64}(/(?!\.{1,2}(/|$))[A-Za-z0-9._-]{1,64}){0,15}$"


def _secret_path(action: str, description: str | None = None) -> Any:
    """A secret path whose capability (`<action>:secrets/<path>`) fits the capability
    grammar's limit: a longer one is `arguments_invalid` here, never a refusal the
    gate audits without the call's own record."""
    room = caps.MAX_CAPABILITY_CHARS - len(f"{action}:secrets/")
    return Field(pattern=_PATH, max_length=room, description=description)


_APPROVAL = Field(
    default=None,
    min_length=1,
    max_length=128,
    description="Run the request approved under this id (from an approval_pending "
    "result), with the same arguments.",
)
#: Resource namespaces that are not environments (deploy and rollback act on `<env>/<app>`).
NAMESPACES = frozenset({"secrets", "monitoring", "database"})


class ToolArgs(BaseModel):
    """Strict: unknown keys (annotations, hints, anything else) are refused."""

    # python-re: the patterns refuse `.` and `..` segments with a look-ahead.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, regex_engine="python-re")
    #: Arguments that carry a secret's value: never part of the argument digest.
    withheld: ClassVar[frozenset[str]] = frozenset()


class DeployArgs(ToolArgs):
    app: str = Field(pattern=_SEGMENT, description="The app to deploy.")
    version: str = Field(min_length=1, max_length=128, description="The release's version.")
    env: str = Field(pattern=_SEGMENT, description="The environment (staging, production...).")
    artifact: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The artifact's absolute path under one of the gate's artifact roots.",
    )
    secrets: list[str] | None = Field(
        default=None,
        max_length=32,
        description="Secret paths handed to a command backend's child.",
    )
    message: str | None = Field(default=None, min_length=1, max_length=200, description="Why.")
    dry_run: bool = Field(default=False, description="Only show the plan and the decision.")
    approval_id: str | None = _APPROVAL


class RollbackArgs(ToolArgs):
    app: str = Field(pattern=_SEGMENT)
    env: str = Field(pattern=_SEGMENT)
    to: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A kept release (default: the previous).",
    )
    message: str | None = Field(default=None, min_length=1, max_length=200)
    dry_run: bool = False
    approval_id: str | None = _APPROVAL


class StatusArgs(ToolArgs):
    app: str = Field(pattern=_SEGMENT)
    env: str = Field(pattern=_SEGMENT)
    history: bool = Field(default=False, description="The app's recent deploys instead.")
    limit: int = Field(default=20, ge=1, le=1000)
    approval_id: str | None = _APPROVAL


class HealthArgs(ToolArgs):
    app: str = Field(pattern=_SEGMENT)
    env: str = Field(pattern=_SEGMENT)
    approval_id: str | None = _APPROVAL


class MigrationArgs(ToolArgs):
    database: str = Field(pattern=_SEGMENT, description="A migration target of the gate.")
    target: int | None = Field(
        default=None, ge=1, le=999_999_999, description="Up to this version."
    )
    approval_id: str | None = _APPROVAL


class MigrationStatusArgs(ToolArgs):
    database: str = Field(pattern=_SEGMENT)


class SecretListArgs(ToolArgs):
    prefix: str = _secret_path("list", "<env> or <env>/<folder>.")
    approval_id: str | None = _APPROVAL


class SecretReadArgs(ToolArgs):
    path: str = _secret_path("read", "<env>/<name>, below secrets/.")
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    approval_id: str | None = _APPROVAL


class SecretWriteArgs(ToolArgs):
    #: The new value: never part of the argument digest (see `args_digest`).
    withheld = frozenset({"value"})

    path: str = _secret_path("write")
    value: str = Field(min_length=1, max_length=1_048_576, description="The new value.")
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)
    approval_id: str | None = _APPROVAL


class SecretRotateArgs(ToolArgs):
    path: str = _secret_path("rotate")
    length: int = Field(default=32, ge=16, le=4096)
    charset: Literal["alphanumeric", "hex", "base64url", "printable"] = "alphanumeric"
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)
    approval_id: str | None = _APPROVAL


class ApprovalStatusArgs(ToolArgs):
    approval_id: str = Field(min_length=1, max_length=128)


def _drop_none(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _deploy(a: Any) -> Operation:
    params = _drop_none(
        version=a.version, artifact=a.artifact, secrets=a.secrets or None, message=a.message
    )
    return Operation("deploy", f"{a.env}/{a.app}", params, dry_run=a.dry_run)


def _rollback(a: Any) -> Operation:
    params = _drop_none(to=a.to, message=a.message)
    return Operation("rollback", f"{a.env}/{a.app}", params, dry_run=a.dry_run)


def _status(a: Any) -> Operation:
    params: dict[str, Any] = {"view": "history" if a.history else "status"}
    if a.history:
        params["limit"] = a.limit
    return Operation("read", f"monitoring/{a.env}/{a.app}", params)


def _health(a: Any) -> Operation:
    return Operation("read", f"monitoring/{a.env}/{a.app}", {"view": "health"})


def _migration(*, dry_run: bool) -> Callable[[Any], Operation]:
    def build(a: Any) -> Operation:
        return Operation("migrate", f"database/{a.database}", _drop_none(target=a.target), dry_run)

    return build


def _migration_status(a: Any) -> Operation:
    return Operation("migrate", f"database/{a.database}", {}, dry_run=True)


def _secret(action: str, field: str, *names: str) -> Callable[[Any], Operation]:
    def build(a: Any) -> Operation:
        params = _drop_none(**{n: getattr(a, n) for n in names})
        secret = SecretValue(a.value) if action == "write" else None
        return Operation(action, f"secrets/{getattr(a, field)}", params, secret=secret)

    return build


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: its arguments, the operation they become, and the grants it needs
    (`action` on `namespace`; None: an `<env>/<app>` resource)."""

    name: str
    description: str
    args: type[ToolArgs]
    action: str | None
    namespace: str | None
    build: Callable[[Any], Operation] | None
    read_only: bool
    destructive: bool = False

    def offered(self, grants: Iterable[caps.Capability]) -> bool:
        """Deny by default: offered when some grant covers some of its operations."""
        if self.action is None:
            return True  # approval_status: an agent reads its own requests only
        for grant in grants:
            if grant.action != self.action:
                continue
            first = grant.segments[0]
            if first == self.namespace or (self.namespace is None and first not in NAMESPACES):
                return True
        return False

    def schema(self) -> dict[str, Any]:
        return self.args.model_json_schema()


TOOLS: tuple[Tool, ...] = (
    Tool(
        "deploy",
        "Deploy a release of an app to an environment through the gate (health-checked, "
        "rolled back on failure). Production may need a human approval: the result is "
        "then status approval_pending; call again with the same arguments and approval_id.",
        DeployArgs,
        "deploy",
        None,
        _deploy,
        read_only=False,
    ),
    Tool(
        "rollback",
        "Roll an app back to the previous (or a named) kept release, through the gate.",
        RollbackArgs,
        "rollback",
        None,
        _rollback,
        read_only=False,
        destructive=True,
    ),
    Tool(
        "deployment_status",
        "What is live for an app in an environment, its deploy lock and last run (or "
        "its recent deploys with history=true).",
        StatusArgs,
        "read",
        "monitoring",
        _status,
        read_only=True,
    ),
    Tool(
        "health",
        "Run the app's configured health check in an environment now and report it.",
        HealthArgs,
        "read",
        "monitoring",
        _health,
        read_only=True,
    ),
    Tool(
        "migration_plan",
        "What applying a database's pending migrations would run: the statements, "
        "their findings (destructive ones marked) and the gate's decision. Changes nothing.",
        MigrationArgs,
        "migrate",
        "database",
        _migration(dry_run=True),
        read_only=True,
    ),
    Tool(
        "migration_apply",
        "Apply a database's pending migrations (one transaction each), through the gate.",
        MigrationArgs,
        "migrate",
        "database",
        _migration(dry_run=False),
        read_only=False,
        destructive=True,
    ),
    Tool(
        "migration_status",
        "The database's migration state as the gate sees it now: head, pending files "
        "and whether applying them would be allowed. Changes nothing.",
        MigrationStatusArgs,
        "migrate",
        "database",
        _migration_status,
        read_only=True,
    ),
    Tool(
        "secret_list",
        "The names directly below a secrets folder (never values).",
        SecretListArgs,
        "list",
        "secrets",
        _secret("list", "prefix"),
        read_only=True,
    ),
    Tool(
        "secret_read",
        "Read a secret's value, where policy lets this agent read it.",
        SecretReadArgs,
        "read",
        "secrets",
        _secret("read", "path", "version"),
        read_only=True,
    ),
    Tool(
        "secret_write",
        "Store a new version of a secret (the value is never echoed or audited).",
        SecretWriteArgs,
        "write",
        "secrets",
        _secret("write", "path", "expected_version"),
        read_only=False,
    ),
    Tool(
        "secret_rotate",
        "Store a new random value as a new version of a secret (the value is not shown).",
        SecretRotateArgs,
        "rotate",
        "secrets",
        _secret("rotate", "path", "length", "charset", "expected_version"),
        read_only=False,
    ),
    Tool(
        "approval_status",
        "The status of one of this agent's approval requests, with the page where "
        "approvers decide it.",
        ApprovalStatusArgs,
        None,
        None,
        None,
        read_only=True,
    ),
)
BY_NAME: Mapping[str, Tool] = {t.name: t for t in TOOLS}

_PROBLEMS = {
    "missing": "is required",
    "extra_forbidden": "is not an argument of this tool",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "string_pattern_mismatch": "is not in the accepted form",
    "string_too_short": "is too short",
    "string_too_long": "is too long",
    "too_long": "has too many items",
    "greater_than_equal": "is too small",
    "less_than_equal": "is too large",
    "literal_error": "is not one of the allowed values",
    "model_type": "must be an object",
}


def parse_args(tool: Tool, arguments: object) -> ToolArgs:
    """The tool's arguments, typed. A refusal names the argument and the problem,
    never the value given (it may be a secret)."""
    if not isinstance(arguments, dict):
        raise OperationError("tool arguments must be an object", code="arguments_invalid")
    try:
        return tool.args.model_validate(arguments)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(safe_text(str(p)) for p in first["loc"]) or "arguments"
        problem = _PROBLEMS.get(first["type"], "is invalid")
        raise OperationError(f"argument {where!r} {problem}", code="arguments_invalid") from None


def operation_of(tool: Tool, args: ToolArgs) -> Operation:
    """The operation a tool call asks for (the same shape `opsgate deploy` etc. send)."""
    if tool.build is None:
        raise OperationError(f"tool {tool.name!r} runs no operation", code="arguments_invalid")
    operation = tool.build(args)
    # The schemas keep every capability within the grammar's limit; this holds it for
    # any tool, so the call's own record always names what was asked.
    if len(operation.capability) > caps.MAX_CAPABILITY_CHARS:
        raise OperationError(
            f"the arguments make a capability longer than {caps.MAX_CAPABILITY_CHARS} characters",
            code="arguments_invalid",
        )
    return operation


def _covered(tool: Tool | None, arguments: object) -> tuple[dict[str, Any], int]:
    """The arguments the digest covers, and how many others were given.

    Covered: the keys the tool's schema declares, each with a value valid for it
    (what a valid call hands the gate as params anyway), minus those carrying a
    secret's value. Not covered: undeclared keys (a model may put a secret under any
    name), values its schema refuses (a secret in the wrong argument), every argument
    of an unknown tool; they are counted, never hashed, as an unsalted digest of a
    short value can be guessed back."""
    if not isinstance(arguments, dict):
        return {}, 1
    if tool is None:
        return {}, len(arguments)
    declared = tool.args.model_fields
    try:
        tool.args.model_validate(arguments)
        refused: set[object] = set()
    except ValidationError as exc:
        refused = {e["loc"][0] for e in exc.errors() if e["loc"]}
    covered: dict[str, Any] = {}
    others = 0
    for key, value in arguments.items():
        if key in tool.args.withheld:
            continue
        if isinstance(key, str) and key in declared and key not in refused:
            covered[key] = value
        else:
            others += 1
    return covered, others


def _type_name(value: object) -> str:
    return f"<{type(value).__name__}>"


def args_digest(tool: Tool | None, arguments: object) -> str:
    """`sha256:` of the covered arguments (see `_covered`) as canonical JSON: a call's
    arguments can be matched to its record, and no secret can be guessed back from it."""
    covered, _ = _covered(tool, arguments)
    # Valid values are JSON; an in-process caller's odd object is named by its type only.
    raw = orjson.dumps(covered, default=_type_name, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def args_withheld(tool: Tool | None, arguments: object) -> int:
    """How many given arguments the digest leaves out besides a secret's value:
    undeclared ones, refused values, all of an unknown tool's (by count, never name)."""
    return _covered(tool, arguments)[1]


def offered_tools(grants: Iterable[str]) -> tuple[Tool, ...]:
    """The tools an agent with `grants` is offered (a grant that does not parse covers none)."""
    parsed: list[caps.Capability] = []
    for text in grants:
        try:
            parsed.append(caps.parse(text))
        except CapabilityError:
            continue
    return tuple(t for t in TOOLS if t.offered(parsed))
