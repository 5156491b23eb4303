"""One exception family for everything opsgate refuses or fails at.

    OpsgateError                      code: "error"
    ├── ConfigError                   config_invalid, executor_invalid, ...
    ├── CapabilityError               capability_malformed, capability_unrestricted, not_covered
    ├── AgentError                    agent_not_found, agent_exists, agent_inactive, ...
    ├── DelegationError               delegation_not_covered, depth_exceeded, outlives_parent, ...
    ├── CredentialError               scope_not_covered, ttl_too_long, ttl_invalid (issuing)
    ├── InvalidCredential             bad_signature, alg_not_allowed, expired, revoked, ...
    ├── PolicyError                   policy_syntax, policy_unknown_name, ... (loading)
    ├── ApprovalError                 approval_not_found, not_an_approver, self_approval, ...
    ├── OperatorError                 operator_unauthenticated, operator_token_expired, ...
    ├── OperationError                operation_denied, executor_missing, params_invalid,
    │   │                             artifact_refused, artifact_invalid, operation_failed, ...
    │   ├── MigrationError            migration_locked, migration_edited, migration_refused, ...
    │   ├── DeployError               staging_required, release_conflict, release_missing,
    │   │                             release_corrupted, deploy_state_invalid, ...
    │   ├── RunRefused                deploy_locked, ... (a run refused before it changed anything)
    │   └── MigrationContended        migration_locked, migration_plan_stale (both of the above)
    ├── AuditError                    audit_write_failed, audit_corrupt, anchor_invalid
    ├── SecretError                   secret_not_found, secret_conflict, secret_key_mismatch, ...
    │   └── SecretBackendError        secret_backend_unreachable, secret_backend_sealed,
    │                                 secret_backend_forbidden, ... (the store said no or is away)
    └── StoreError                    store_unavailable, ...

Surfaces (CLI, HTTP, MCP) map `.code`, never message text. Messages are one
lowercase line with user input quoted; they never contain secret values.
"""

from __future__ import annotations

import re
from typing import Any


class OpsgateError(Exception):
    """Base of every error opsgate raises on purpose."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message = message
        self.detail: dict[str, Any] = detail

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "code": self.code, "message": self.message}


class ConfigError(OpsgateError):
    default_code = "config_invalid"


class CapabilityError(OpsgateError):
    default_code = "capability_malformed"


class AgentError(OpsgateError):
    default_code = "agent_not_found"


class DelegationError(OpsgateError):
    default_code = "delegation_invalid"


class CredentialError(OpsgateError):
    """Refusal to issue a credential (scope, ttl, agent state)."""

    default_code = "credential_refused"


class InvalidCredential(OpsgateError):
    """A presented credential did not verify. The detail goes to the audit log."""

    default_code = "invalid_credential"


class PolicyError(OpsgateError):
    """A policy file could not be loaded; carries file, policy, rule and column."""

    default_code = "policy_invalid"


class ApprovalError(OpsgateError):
    default_code = "approval_refused"


class OperatorError(OpsgateError):
    """An operator token refused, or an operator that cannot be added or rotated."""

    default_code = "operator_unauthenticated"


class OperationError(OpsgateError):
    default_code = "operation_failed"


class MigrationError(OperationError):
    """A migration plan or run refused: drift, lock held, failed state, bad files."""

    default_code = "migration_failed"


class DeployError(OperationError):
    """A deploy or rollback refused: no staging evidence, a version that would change
    content, a release missing or altered on disk, a `current` the gate did not set."""

    default_code = "deploy_failed"


class RunRefused(OperationError):
    """An executor's run refused before it changed anything (a lock held by another
    run, a conflict found under the lock). The gate audits the outcome as refused,
    charges nothing, and raises it to the caller."""

    default_code = "run_refused"


class MigrationContended(MigrationError, RunRefused):
    """Another run holds the migration lock, or changed the history under it, so this
    run refused before applying anything: not the agent's doing, charged nothing."""

    default_code = "migration_locked"


class AuditError(OpsgateError):
    default_code = "audit_write_failed"


class SecretError(OpsgateError):
    """A secret operation refused or failed. Never carries the value."""

    default_code = "secret_error"


class SecretBackendError(SecretError):
    """The secret backend is unreachable, sealed, refusing (401/403) or failing."""

    default_code = "secret_backend_error"


class StoreError(OpsgateError):
    default_code = "store_unavailable"


_SHOWN_MAX = 64
# Shapes of opsgate's own secrets and of keys: approver tokens, JWS/JWTs, PEM.
_SECRET_PREFIXES = ("opsg_", "eyj", "-----begin")
_LONG_WORD = re.compile(r"[A-Za-z0-9+/=_.-]{60,}")
_PEM = re.compile(r"-----BEGIN[^-]*-----.*?(-----END[^-]*-----|$)", re.DOTALL)
_TOKEN = re.compile(r"opsg_[A-Za-z0-9_-]+")


def safe_text(value: object) -> str:
    """User input as text for a message or an audit record, unless it could be a secret.

    Names, dids, ids and capabilities are short single-line text; anything
    longer, multi-line or secret-shaped (an approver token, a JWT, a PEM pasted
    into the wrong argument) is described by its length only, so a mistake
    never copies a secret into an error, a log line or the append-only audit log.
    """
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    lowered = value.lower()
    if (
        len(value) > _SHOWN_MAX
        or not value.isprintable()
        or "private" in lowered
        or lowered.startswith(_SECRET_PREFIXES)
    ):
        return f"<{len(value)} characters, not shown>"
    return value


def shown(value: object) -> str:
    """`safe_text`, quoted when it is the input itself."""
    text = safe_text(value)
    return repr(text) if text is value else text


def scrub(message: str) -> str:
    """Remove secret-shaped words from free text we did not write (usage errors that
    echo an argument): PEM blocks, approver tokens, and very long opaque words."""
    message = _PEM.sub("<key, not shown>", message)
    message = _TOKEN.sub("<token, not shown>", message)
    return _LONG_WORD.sub(lambda m: f"<{len(m.group())} characters, not shown>", message)


__all__ = [
    "AgentError",
    "ApprovalError",
    "AuditError",
    "CapabilityError",
    "ConfigError",
    "CredentialError",
    "DelegationError",
    "DeployError",
    "InvalidCredential",
    "MigrationContended",
    "MigrationError",
    "OperationError",
    "OperatorError",
    "OpsgateError",
    "PolicyError",
    "RunRefused",
    "SecretBackendError",
    "SecretError",
    "StoreError",
    "safe_text",
    "scrub",
    "shown",
]
