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
    ├── AuditError                    audit_write_failed, audit_corrupt, anchor_invalid,
    │                                 audit_query_invalid
    ├── SecretError                   secret_not_found, secret_conflict, secret_key_mismatch, ...
    │   └── SecretBackendError        secret_backend_unreachable, secret_backend_sealed,
    │                                 secret_backend_forbidden, ... (the store said no or is away)
    ├── StoreError                    store_unavailable, ...
    └── InternalError                 internal_error (anything else raised inside a call)

Surfaces (CLI, HTTP, MCP) map `.code`, never message text. Messages are one
lowercase line with user input quoted; they never contain secret values.
"""

from __future__ import annotations

import re
from typing import Any


class OpsgateError(Exception):
    """Base of every error opsgate raises on purpose."""

    default_code = "error"
    #: Set once the refusal is in the audit log, so the one path records it once.
    audited = False

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        # Whatever a raise site interpolated, a message carries no secret-shaped
        # substring and always encodes (it is printed, logged and audited).
        message = scrub(message if isinstance(message, str) else str(message), long_words=False)
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


class InternalError(OpsgateError):
    """Something other than an opsgate error was raised while handling a call (a bug,
    or a library failing on input nobody checked): the call is refused, fail closed,
    and only the class of the cause is named (its text may carry secrets)."""

    default_code = "internal_error"


_SHOWN_MAX = 64
_B64 = "A-Za-z0-9_-"
_B64_ANY = "A-Za-z0-9_+/-"  # base64url and base64
# Shapes of secrets, wherever they sit in a string: opsgate's tokens (`opsg_apr_...`,
# `opsg_op_...`, any `opsg_` prefix), JWS/JWTs (base64url JSON starts `eyJ`; a
# lower-cased one too), PEM blocks, and long base64url runs that mix upper case,
# lower case and digits (keys, raw tokens). A did:key is public and exempt; so is a
# hex digest (one case only).
_PEM = re.compile(r"-----BEGIN[^-]*-----.*?(?:-----END[^-]*-----|$)", re.DOTALL | re.IGNORECASE)
_TOKEN = re.compile(rf"opsg_[{_B64}]*", re.IGNORECASE)
_JWS = re.compile(rf"(?<![{_B64}])eyj[{_B64}]{{8,}}(?:\.[{_B64}]*){{0,4}}", re.IGNORECASE)
# Runs of the base64 and base64url alphabets (a PEM body line has "+" and "/").
_RUN = re.compile(rf"(?<![{_B64_ANY}])[{_B64_ANY}]{{40,}}")
_MIXED = (re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]"))
_HEX = re.compile(r"[0-9a-fA-F/_-]+")
_PIECES = re.compile(r"[+/]")
_FLIPS = re.compile(r"[A-Za-z][0-9]|[0-9][A-Za-z]")
# One cheap test before any replacing: most text holds no secret shape at all.
_ANY_SHAPE = re.compile(rf"(?i:opsg_|eyj[{_B64}]{{8}}|-----begin)|[{_B64_ANY}]{{40}}")
_LONG_WORD = re.compile(r"[A-Za-z0-9+/=_.-]{60,}")


def _opaque(run: str) -> bool:
    """Random-looking: upper and lower case and digits in one word, or letters and
    digits alternating as they do in random text (a run that was lower-cased) —
    never a hex digest, and not a name or path (digits there come in groups)."""
    if _HEX.fullmatch(run):
        return False
    for piece in _PIECES.split(run):  # a path's segments are judged one by one
        if len(piece) >= 20 and all(c.search(piece) for c in _MIXED):
            return True
    return len(_FLIPS.findall(run)) >= 8


def _run(m: re.Match[str]) -> str:
    run, start = m.group(), m.start()
    if m.string[max(0, start - 8) : start] == "did:key:" or not _opaque(run):
        return run
    return f"<{len(run)} characters, not shown>"


# Texts seen to hold no secret shape though they looked like they might (dids, digests,
# key ids come again and again in audit events): a bounded set, holding no secret.
_CLEAN: dict[str, None] = {}
_CLEAN_MAX = 4096


def _shapes(message: str) -> str:
    if message in _CLEAN or _ANY_SHAPE.search(message) is None:
        return message
    out = _PEM.sub("<key, not shown>", message)
    out = _TOKEN.sub("<token, not shown>", out)
    out = _JWS.sub("<credential, not shown>", out)
    out = _RUN.sub(_run, out)
    if out == message and len(message) <= 256:
        if len(_CLEAN) >= _CLEAN_MAX:
            _CLEAN.clear()
        _CLEAN[message] = None
    return out


def secret_shaped(text: str) -> bool:
    """Whether `text` holds a secret-shaped substring anywhere (see `scrub`)."""
    return _shapes(text) != text


def scrub(message: str, *, long_words: bool = True) -> str:
    """Remove secret-shaped substrings from free text, wherever they occur: PEM
    blocks, opsgate tokens, JWS/JWTs, long mixed base64url runs; with `long_words`
    (text we did not write, such as usage errors that echo an argument) also any
    very long opaque word. Lone surrogates become escapes, so the text encodes."""
    message = _shapes(message)
    if long_words:
        message = _LONG_WORD.sub(lambda m: f"<{len(m.group())} characters, not shown>", message)
    return encodable(message)


def encodable(text: str) -> str:
    """`text` as valid UTF-8 can carry it: a lone surrogate becomes its escape."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_text(value: object) -> str:
    """User input as text for a message or an audit record, unless it could be a secret.

    Names, dids, ids and capabilities are short single-line text; anything
    longer, multi-line or holding a secret-shaped substring anywhere (an approver
    token, a JWT, a PEM pasted into the wrong argument, or inside a capability)
    is described by its length only, so a mistake never copies a secret into an
    error, a log line or the append-only audit log.
    """
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if (
        len(value) > _SHOWN_MAX
        or not value.isprintable()
        or "private" in value.lower()
        or secret_shaped(value)
    ):
        return f"<{len(value)} characters, not shown>"
    return value


def shown(value: object) -> str:
    """`safe_text`, quoted when it is the input itself."""
    text = safe_text(value)
    return repr(text) if text is value else text


__all__ = [
    "AgentError",
    "ApprovalError",
    "AuditError",
    "CapabilityError",
    "ConfigError",
    "CredentialError",
    "DelegationError",
    "DeployError",
    "InternalError",
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
    "encodable",
    "safe_text",
    "scrub",
    "secret_shaped",
    "shown",
]
