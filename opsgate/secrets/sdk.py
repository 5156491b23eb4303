"""SDK calls for the five secret operations; each one goes through `Gate.execute`.

`path` is the secret's path below `secrets/` (`"production/db"` is the capability
`read:secrets/production/db`). Each call returns a small result value, or
`PendingApproval` when a human must approve first (then `resume_secret`, giving a
write's value again). A refusal raises what `Gate.execute` raises
(`OperationError` with `operation_denied`, ...); an operation that ran and failed
raises `SecretError` / `SecretBackendError` with the failure's code (and the audit
seq of its outcome in `.detail`). Only `read_secret` ever returns a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from opsgate.approvals import PendingApproval
from opsgate.errors import SecretBackendError, SecretError
from opsgate.operations.base import Operation, Outcome
from opsgate.secrets.base import NAMESPACE
from opsgate.secrets.value import SecretValue

Now = datetime | float | None


@dataclass(frozen=True, slots=True)
class SecretRead:
    path: str
    version: int
    value: SecretValue = field(repr=False)
    audit_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SecretWritten:
    """A write or rotation: the new version (never the value)."""

    path: str
    version: int
    audit_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SecretListing:
    prefix: str
    names: tuple[str, ...]
    audit_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SecretDeleted:
    path: str
    version: int | None  # the soft-deleted version; None when destroyed
    destroyed: int = 0  # versions removed for good
    audit_seq: int | None = None


SecretResult = SecretRead | SecretWritten | SecretListing | SecretDeleted


def _resource(path: str) -> str:
    if not isinstance(path, str):
        raise SecretError("a secret path must be text", code="secret_path_invalid")
    return f"{NAMESPACE}/{path}"


def _result(outcome: Outcome | PendingApproval) -> SecretResult | PendingApproval:
    if isinstance(outcome, PendingApproval):
        return outcome
    d: dict[str, Any] = outcome.detail
    if outcome.status == "failed":
        code = str(d.get("code") or "secret_error")
        cls = SecretBackendError if code.startswith("secret_backend_") else SecretError
        # The code was checked where the executor raised it; rebuilt as the SDK's class.
        raise cls.received(outcome.summary, code=code, audit_seq=outcome.audit_seq)
    if "value" in d:
        return SecretRead(d["path"], d["version"], d["value"], outcome.audit_seq)
    if "names" in d:
        return SecretListing(d["prefix"], tuple(d["names"]), outcome.audit_seq)
    if "destroyed" in d:
        return SecretDeleted(d["path"], None, d["destroyed"], outcome.audit_seq)
    if outcome.summary.startswith("deleted"):
        return SecretDeleted(d["path"], d["version"], 0, outcome.audit_seq)
    return SecretWritten(d["path"], d["version"], outcome.audit_seq)


Result = TypeVar("Result", SecretRead, SecretWritten, SecretListing, SecretDeleted)


def _run(
    gate: Any, token: str, op: Operation, now: Now, proof: str | None, kind: type[Result]
) -> Result | PendingApproval:
    """`gate.execute(op)` as the result value `kind` of `op.action` (or PendingApproval)."""
    result = _result(gate.execute(token, op, now=now, proof=proof))
    assert isinstance(result, (kind, PendingApproval)), type(result).__name__
    return result


def read_secret(
    gate: Any,
    token: str,
    path: str,
    *,
    version: int | None = None,
    now: Now = None,
    proof: str | None = None,
) -> SecretRead | PendingApproval:
    """The latest (or the given) version's value, wrapped in a SecretValue."""
    params = {} if version is None else {"version": version}
    return _run(gate, token, Operation("read", _resource(path), params), now, proof, SecretRead)


def write_secret(
    gate: Any,
    token: str,
    path: str,
    value: SecretValue | str,
    *,
    expected_version: int | None = None,
    now: Now = None,
    proof: str | None = None,
) -> SecretWritten | PendingApproval:
    """Store `value` as a new version (check-and-set against `expected_version`, or
    against the version current just before the write)."""
    secret = value if isinstance(value, SecretValue) else SecretValue(value)
    params = {} if expected_version is None else {"expected_version": expected_version}
    op = Operation("write", _resource(path), params, secret=secret)
    return _run(gate, token, op, now, proof, SecretWritten)


def list_secrets(
    gate: Any, token: str, prefix: str, *, now: Now = None, proof: str | None = None
) -> SecretListing | PendingApproval:
    """The names directly under `prefix` (`"staging/app"`); folders end with '/'."""
    return _run(gate, token, Operation("list", _resource(prefix)), now, proof, SecretListing)


def delete_secret(
    gate: Any,
    token: str,
    path: str,
    *,
    destroy: bool = False,
    now: Now = None,
    proof: str | None = None,
) -> SecretDeleted | PendingApproval:
    """Soft-delete the latest version, or with `destroy` every version for good."""
    params = {"destroy": True} if destroy else {}
    return _run(
        gate, token, Operation("delete", _resource(path), params), now, proof, SecretDeleted
    )


def rotate_secret(
    gate: Any,
    token: str,
    path: str,
    *,
    length: int = 32,
    charset: str = "alphanumeric",
    expected_version: int | None = None,
    now: Now = None,
    proof: str | None = None,
) -> SecretWritten | PendingApproval:
    """Store a new random value (`length` characters of `charset`) as a new version."""
    params: dict[str, Any] = {"length": length, "charset": charset}
    if expected_version is not None:
        params["expected_version"] = expected_version
    return _run(
        gate, token, Operation("rotate", _resource(path), params), now, proof, SecretWritten
    )


def resume_secret(
    gate: Any,
    approval_id: str,
    token: str,
    *,
    value: SecretValue | str | None = None,
    now: Now = None,
    proof: str | None = None,
) -> SecretResult | PendingApproval:
    """Run an approved secret operation; a write needs its value again (only the
    approved value matches the approval's digest)."""
    secret = value if isinstance(value, SecretValue) or value is None else SecretValue(value)
    return _result(gate.resume(approval_id, token, now=now, proof=proof, secret=secret))


__all__ = [
    "SecretDeleted",
    "SecretListing",
    "SecretRead",
    "SecretResult",
    "SecretWritten",
    "delete_secret",
    "list_secrets",
    "read_secret",
    "resume_secret",
    "rotate_secret",
    "write_secret",
]
