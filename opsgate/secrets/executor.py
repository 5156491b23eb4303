"""The five secret operations as executors behind `Gate.execute`.

`read|write|list|delete|rotate:secrets/<env>/<path>`. Each plan is pure: it names
the path, the version or prefix, and for a write a keyed digest of the value (the
value itself travels beside the operation, in `Operation.secret`, and is never in
params, the plan, the digest's readable content, the audit or an approval request).
`run()` talks to the backend. Failures raise SecretError / SecretBackendError,
which the gate records as a failed outcome with the code; no message holds a value.
"""

from __future__ import annotations

import secrets as random
import string
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

from opsgate.errors import OperationError, SecretError, safe_text
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan, RunContext
from opsgate.secrets.base import NAMESPACE, SecretStore, secret_path, secret_prefix
from opsgate.secrets.keys import ValueBinder
from opsgate.secrets.value import SecretValue

Charset = Literal["alphanumeric", "hex", "base64url", "printable"]
CHARSETS: dict[str, str] = {
    "alphanumeric": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "base64url": string.ascii_letters + string.digits + "-_",
    "printable": "".join(chr(c) for c in range(33, 127)),  # no space
}
ACTIONS = ("read", "write", "list", "delete", "rotate")


_Params = OperationParams  # strict, unknown keys refused (checked by the gate before policy)

#: The largest version every backend can hold: the embedded one's version column is a
#: 32-bit INTEGER on PostgreSQL (64-bit on SQLite, Go's int in Vault). A larger version
#: or expected_version is `params_invalid`, never a driver's OverflowError or DataError
#: inside the executor; no secret reaches it (each version is one write).
MAX_VERSION = 2**31 - 1


class ReadParams(_Params):
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)  # default: the latest


class WriteParams(_Params):
    # Write only if the newest version is still this one (0: only if none exists);
    # by default the version read just before the write (check-and-set either way).
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)


class ListParams(_Params):
    pass


class DeleteParams(_Params):
    # False: soft-delete the newest version (KV v2 `kv delete`); True: every version
    # and the metadata, for good (KV v2 `kv metadata delete`).
    destroy: bool = False


class RotateParams(_Params):
    length: int = Field(default=32, ge=16, le=4096)
    charset: Charset = "alphanumeric"
    expected_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)


_PROBLEMS = {
    "missing": "is required",
    "extra_forbidden": "is not a param of this operation",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "greater_than_equal": "is too small",
    "less_than_equal": "is too large",
    "literal_error": "is not one of the allowed values",
}


def parse_params(model: type[BaseModel], operation: Operation) -> Any:
    """The params, typed; a refusal names the field and the problem, never the value."""
    try:
        return model.model_validate(dict(operation.params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(safe_text(str(p)) for p in first["loc"]) or "params"
        problem = _PROBLEMS.get(first["type"], "is invalid")
        raise OperationError(
            f"param {where!r} of {safe_text(operation.action)!r} {problem}",
            code="params_invalid",
        ) from None


class SecretExecutor:
    """Base of the five: the backend, the value binder, and who is asking."""

    action: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    accepts_secret: ClassVar[bool] = False

    def __init__(
        self,
        store: SecretStore,
        binder: Callable[[], ValueBinder],
        *,
        max_value_bytes: int = 65_536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._binder = binder
        self._max_value_bytes = max_value_bytes
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def _check(self, operation: Operation) -> Any:
        if operation.action != self.action:
            raise OperationError(
                f"{type(self).__name__} plans {self.action!r}, not {operation.action!r}",
                code="operation_invalid",
            )
        if operation.secret is not None and not self.accepts_secret:
            raise OperationError(
                f"{self.action!r} of a secret takes no value", code="operation_invalid"
            )
        return parse_params(self.params_model, operation)

    def _plan(
        self,
        operation: Operation,
        summary: str,
        content: dict[str, Any],
        *,
        destructive: bool = False,
    ) -> Plan:
        return Plan(
            operation=operation,
            capability=operation.capability,
            # The gate derives the environment from the capability (`secrets/<env>/...`).
            environment=None,
            destructive=destructive,
            summary=summary,
            steps=(summary,),
            content={"backend": self.store.name, **content},
            reads_only=self.action in ("read", "list"),
        )

    def plan(self, operation: Operation) -> Plan:
        raise NotImplementedError

    def run(self, plan: Plan) -> Outcome:
        return self.run_with_context(plan, RunContext("", "unknown agent"))

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        raise NotImplementedError


class ReadSecret(SecretExecutor):
    action = "read"
    params_model = ReadParams

    def plan(self, operation: Operation) -> Plan:
        params: ReadParams = self._check(operation)
        path = secret_path(operation.resource)
        which = "latest" if params.version is None else params.version
        return self._plan(
            operation, f"read {path} (version {which})", {"path": path, "version": which}
        )

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        version = plan.content["version"]
        found = self.store.get(plan.content["path"], None if version == "latest" else version)
        return Outcome(
            "succeeded",
            f"read {found.path} version {found.version}",
            {"path": found.path, "version": found.version, "value": found.value},
        )


class WriteSecret(SecretExecutor):
    action = "write"
    params_model = WriteParams
    accepts_secret = True

    def _value(self, operation: Operation) -> SecretValue:
        value = operation.secret
        if not isinstance(value, SecretValue):
            raise OperationError(
                "a write needs its value as a SecretValue in Operation.secret (never in params)",
                code="secret_value_required",
            )
        size = len(value.reveal().encode("utf-8"))
        if size == 0 or size > self._max_value_bytes:
            raise SecretError(
                f"a secret value must be 1 to {self._max_value_bytes} bytes",
                code="secret_value_invalid",
            )
        return value

    def plan(self, operation: Operation) -> Plan:
        params: WriteParams = self._check(operation)
        path = secret_path(operation.resource)
        value = self._value(operation)
        return self._plan(
            operation,
            f"write a new version of {path}",
            {
                "path": path,
                # What an approval binds: this exact value, unreadable without the gate's key.
                "value_binding": self._binder().bind(path, value),
                "expected_version": params.expected_version,
            },
        )

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        path = plan.content["path"]
        value = self._value(plan.operation)
        if self._binder().bind(path, value) != plan.content["value_binding"]:
            raise SecretError("the value is not the one planned", code="secret_value_changed")
        cas = plan.content["expected_version"]
        if cas is None:
            cas = self.store.current_version(path)
        version = self.store.put(
            path, value, cas=cas, actor=context.agent_did or context.agent_name, now=self._clock()
        )
        return Outcome(
            "succeeded", f"wrote {path} version {version}", {"path": path, "version": version}
        )


class ListSecrets(SecretExecutor):
    action = "list"
    params_model = ListParams

    def plan(self, operation: Operation) -> Plan:
        self._check(operation)
        prefix = secret_prefix(operation.resource)
        return self._plan(operation, f"list the names under {prefix}", {"prefix": prefix})

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        prefix = plan.content["prefix"]
        names = self.store.names(prefix)
        return Outcome(
            "succeeded",
            f"listed {len(names)} name(s) under {prefix}",
            {"prefix": prefix, "names": names},
        )


class DeleteSecret(SecretExecutor):
    action = "delete"
    params_model = DeleteParams

    def plan(self, operation: Operation) -> Plan:
        params: DeleteParams = self._check(operation)
        path = secret_path(operation.resource)
        what = (
            f"destroy every version of {path}"
            if params.destroy
            else f"delete the latest version of {path}"
        )
        return self._plan(
            operation, what, {"path": path, "destroy": params.destroy}, destructive=True
        )

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        path = plan.content["path"]
        if plan.content["destroy"]:
            count = self.store.destroy(path)
            return Outcome(
                "succeeded",
                f"destroyed {count} version(s) of {path}",
                {"path": path, "destroyed": count},
            )
        version = self.store.delete(path, now=self._clock())
        return Outcome(
            "succeeded", f"deleted version {version} of {path}", {"path": path, "version": version}
        )


class RotateSecret(SecretExecutor):
    action = "rotate"
    params_model = RotateParams

    def _fits(self, length: int) -> int:
        """Every charset is ASCII: the value is `length` bytes, held to the limit a write
        is held to (secrets.max_value_bytes), before anything is generated."""
        if length > self._max_value_bytes:
            raise SecretError(
                f"a secret value must be 1 to {self._max_value_bytes} bytes; a rotation "
                f"to {length} characters is longer",
                code="secret_value_invalid",
            )
        return length

    def plan(self, operation: Operation) -> Plan:
        params: RotateParams = self._check(operation)
        path = secret_path(operation.resource)
        self._fits(params.length)
        return self._plan(
            operation,
            f"rotate {path}: a new random value of {params.length} {params.charset} characters",
            {
                "path": path,
                "length": params.length,
                "charset": params.charset,
                "expected_version": params.expected_version,
            },
        )

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        path = plan.content["path"]
        alphabet = CHARSETS[plan.content["charset"]]
        length = self._fits(plan.content["length"])
        value = SecretValue("".join(random.choice(alphabet) for _ in range(length)))
        cas = plan.content["expected_version"]
        if cas is None:
            cas = self.store.current_version(path)
        version = self.store.put(
            path, value, cas=cas, actor=context.agent_did or context.agent_name, now=self._clock()
        )
        # The new value goes nowhere but the backend: whoever needs it reads it.
        return Outcome(
            "succeeded", f"rotated {path} to version {version}", {"path": path, "version": version}
        )


EXECUTORS: tuple[type[SecretExecutor], ...] = (
    ReadSecret,
    WriteSecret,
    ListSecrets,
    DeleteSecret,
    RotateSecret,
)

__all__ = [
    "ACTIONS",
    "CHARSETS",
    "EXECUTORS",
    "MAX_VERSION",
    "NAMESPACE",
    "DeleteSecret",
    "ListSecrets",
    "ReadSecret",
    "RotateSecret",
    "SecretExecutor",
    "WriteSecret",
]
