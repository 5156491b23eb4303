"""One exception family for everything opsgate refuses or fails at, and the registry
of its codes (`CODES`: each code, its one owning class, what it means).

    OpsgateError                      code: "error"
    ├── ConfigError                   config_invalid, database_url, key_permissions, ...
    ├── CapabilityError               capability_malformed, capability_unrestricted, ...
    ├── AgentError                    agent_not_found, agent_exists, bad_did, ...
    ├── DelegationError               delegation_not_covered, depth_exceeded, ttl_invalid,
    │                                 agent_suspended, agent_revoked, chain_invalid, ...
    ├── CredentialError               scope_not_covered, ttl_too_long, jti_invalid, ...
    ├── InvalidCredential             bad_signature, alg_not_allowed, expired, dpop_*, ...
    ├── PolicyError                   policy_syntax, policy_unknown_name, ... (loading),
    │                                 policy_mismatch (a gate's policies are not in force)
    ├── ApprovalError                 approval_not_found, not_an_approver, self_approval, ...
    ├── OperatorError                 operator_unauthenticated, operator_token_expired, ...
    ├── OperationError                operation_denied, executor_missing, params_invalid, ...
    │   ├── MigrationError            migration_edited, migration_refused, migration_plan_stale
    │   │   └── TargetDatabaseError   database_unavailable (also a StoreError)
    │   ├── DeployError               staging_required, release_conflict, release_missing, ...
    │   │   └── DeployLockLost        deploy_lock_lost (the run's lock taken over: it stops)
    │   ├── RunRefused                deploy_locked, ... (a run refused before it changed anything)
    │   ├── MigrationContended        migration_locked (a MigrationError and a RunRefused)
    │   └── DeployContended           (a DeployError and a RunRefused)
    ├── AuditError                    audit_write_failed, anchor_invalid, audit_query_invalid
    ├── SecretError                   secret_not_found, secret_conflict, secret_key_mismatch, ...
    │   └── SecretBackendError        secret_backend_unreachable, secret_backend_sealed, ...
    ├── StoreError                    store_unavailable, store_timeout, schema_unknown
    ├── HttpRefusal, UiRefusal        the HTTP layer's and the web UI's own refusals
    ├── NotFound, Revoked             not_found, revoked (each raised as its family's class)
    └── InternalError                 internal_error (anything else raised inside a call)

A rule met in two families has one code and one owner; a small class belonging to both
families raises it where the other family meets it (`EmailInvalid`, `StatusInvalid`,
`TokenTtlInvalid`, `OutputUnwritable`, `ParamsInvalid`, `CredentialTtlInvalid`,
`OperatorInvalid`, `ReasonInvalid`, `UnusableAgentIssue`, `UnusableAgentCredential`,
`UnusableAgentChange`, `DidInvalid`, `CredentialMissing`, `CredentialNotFound`, `RevokedCredential`,
`RevokedOnIssue`), so each family's `except` and HTTP status still hold.

Surfaces (CLI, HTTP, MCP) map `.code`, never message text. Messages are one
lowercase line with user input quoted; they never contain secret values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, overload


class OpsgateError(Exception):
    """Base of every error opsgate raises on purpose."""

    default_code = "error"
    #: Set once the refusal is in the audit log, so the one path records it once.
    audited = False

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        code = code or self.default_code
        entry = CODES.get(code)
        if entry is None or not isinstance(self, entry.owner):
            # A programming error, caught by the tests: every code has one owner.
            owner = "no class" if entry is None else entry.owner.__name__
            raise TypeError(f"{type(self).__name__} cannot carry {code!r} (owned by {owner})")
        self._fill(message, code, detail)

    @classmethod
    def received(cls, message: str, *, code: str, **detail: Any) -> OpsgateError:
        """The error another part reported (the server's answer, a recorded outcome):
        its code was checked where it was raised, and one this version does not know
        (a newer server's) is kept as it came."""
        exc = cls.__new__(cls)
        exc._fill(message, code, detail)
        return exc

    def _fill(self, message: object, code: str, detail: dict[str, Any]) -> None:
        # Whatever a raise site interpolated, a message carries no secret-shaped
        # substring and always encodes (it is printed, logged and audited).
        text = scrub(message if isinstance(message, str) else str(message), long_words=False)
        Exception.__init__(self, text)
        self.code: str = code
        self.message = text
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


class HttpRefusal(OpsgateError):
    """A refusal of the HTTP layer itself (size, syntax, role, rate)."""

    default_code = "request_invalid"


class UiRefusal(OpsgateError):
    """A form or session the UI refuses before anything is decided."""

    default_code = "csrf_invalid"


class NotFound(OpsgateError):
    """What a request names does not exist (or is not the caller's to see)."""

    default_code = "not_found"


class CredentialMissing(CredentialError, HttpRefusal):
    """No credential to present: the SDK was asked to act before it got one (the
    server's `credential_missing`, met before any request is sent)."""

    default_code = "credential_missing"


class CredentialNotFound(CredentialError, NotFound):
    """A credential id this gate never issued."""

    default_code = "not_found"


# Codes met in more than one family have one owner; where each family must keep its
# own class (its HTTP status, its `except`), a small class belongs to both.


class Revoked(OpsgateError):
    """A credential revoked: presented after its revocation, or revoked (by a
    per-agent cut-off) while it was being issued."""

    default_code = "revoked"


class RevokedCredential(InvalidCredential, Revoked):
    """A presented credential that was revoked."""

    default_code = "revoked"


class RevokedOnIssue(CredentialError, Revoked):
    """A credential a per-agent revocation covered while it was being issued."""

    default_code = "revoked"


class UnusableAgentIssue(CredentialError, DelegationError):
    """No credential for an agent that may not act now (suspended, revoked, expired,
    its chain broken): the rule delegation checks, whose codes DelegationError owns."""

    default_code = "agent_revoked"


class UnusableAgentCredential(InvalidCredential, DelegationError):
    """A presented credential whose agent may not act now (see UnusableAgentIssue)."""

    default_code = "agent_revoked"


class UnusableAgentChange(AgentError, DelegationError):
    """An agent revoked for good cannot be reinstated (see UnusableAgentIssue)."""

    default_code = "agent_revoked"


class DidInvalid(InvalidCredential, AgentError):
    """A presented did that is not an Ed25519 did:key: the rule (and code) of an
    agent's did, which AgentError owns."""

    default_code = "bad_did"


class CredentialTtlInvalid(CredentialError, DelegationError):
    """A credential's ttl that is not a positive number: the rule (and code) of an
    agent's ttl, so it is also a DelegationError, the owner of `ttl_invalid`."""

    default_code = "ttl_invalid"


class EmailInvalid(AgentError, ApprovalError):
    """A sponsor's or an approver's address that is not one plain email address."""

    default_code = "invalid_email"


class StatusInvalid(AgentError, ApprovalError):
    """A status filter naming no status of agents or approvals."""

    default_code = "status_invalid"


class ReasonInvalid(AgentError, CredentialError):
    """A reason (a suspension's, a revocation's, a trust change's) that is not one line
    of plain text: the rule met by agents and credentials alike."""

    default_code = "reason_invalid"


class OperatorInvalid(AgentError, CredentialError):
    """An operator acting for an agent (issuing its credential, registering or
    delegating) who is not named: the rule met by agents and credentials alike."""

    default_code = "operator_invalid"


class TokenTtlInvalid(ApprovalError, OperatorError):
    """An approver's or operator's token lifetime outside 1 to 3650 days."""

    default_code = "token_ttl_invalid"


class OutputUnwritable(ConfigError, AuditError):
    """An output file (an export, a checkpoint) that cannot be opened for writing."""

    default_code = "output_unwritable"


class ParamsInvalid(PolicyError, OperationError):
    """Operation params that are not plain JSON, found while policy reads them: the
    owner of `params_invalid` is OperationError."""

    default_code = "params_invalid"


class DeployContended(DeployError, RunRefused):
    """A release conflict found under the deploy lock: refused before anything changed."""

    default_code = "release_conflict"


class DeployLockLost(DeployError):
    """A run's deploy lock was taken over after its lease ran out (its process stalled
    longer than `lock_expiry_seconds`): the run stops before its next step, and leaves
    the app to the new holder."""

    default_code = "deploy_lock_lost"


class TargetDatabaseError(MigrationError, StoreError):
    """The database a migration targets cannot be opened, or refused a statement."""

    default_code = "database_unavailable"


class StatementFailed(TargetDatabaseError):
    """A migration statement was refused by the target; the transaction rolled back."""

    default_code = "migration_statement_failed"


@dataclass(frozen=True, slots=True)
class Code:
    """One stable error code: the one class that raises it, and what it means."""

    code: str
    owner: type[OpsgateError]
    meaning: str


# Every code opsgate raises or answers with, by its owning class. An error carries a
# code only when it is an instance of that code's owner (checked at construction);
# tests/unit/test_error_codes.py checks every raise site and the README's table.
_REGISTRY: tuple[tuple[type[OpsgateError], dict[str, str]], ...] = (
    (OpsgateError, {"error": "the base class's code; never raised as such"}),
    (
        ConfigError,
        {
            "agent_key_mismatch": "the key file belongs to another agent than the one named",
            "checkpoint_unwritable": "the audit checkpoint file cannot be written (serve)",
            "config_invalid": "the configuration (file, environment, options) is invalid",
            "database_url": "a database url is not valid or names an unsupported database",
            "database_credentials_missing": "a vault_role database needs dynamic credentials",
            "database_target_invalid": "a migration target is the gate's own database",
            "executor_invalid": "an executor does not declare its params_model",
            "external_url_missing": "serving on a non-loopback address needs an external url",
            "gate_key_missing": "no private key for the gate's current signing key",
            "gate_mismatch": "the state dir and the database belong to different gates",
            "key_dir_unusable": "a key file cannot be written in its directory",
            "key_invalid": "a private key file does not hold an Ed25519 key",
            "key_missing": "a private key file is missing",
            "key_permissions": "a private key file is readable by others (it must be 0600)",
            "key_rotated_concurrently": "another replica rotated the gate key meanwhile; try again",
            "master_key_insecure": "the secrets master key file is not a private regular file",
            "master_key_invalid": "the secrets master key is not 32 bytes in hex or base64",
            "master_key_unavailable": "the secrets master key cannot be read or created",
            "secrets_rekey_unsupported": "the vault backend's keys are rotated in OpenBao/Vault",
            "not_initialized": "no opsgate state in the state dir: run 'opsgate init'",
            "pin_invalid": "the gate pin file in the state dir is malformed",
            "policies_changed": "a server worker found other policies than its server loaded",
            "state_dir_insecure": "the state dir or its opsgate.yaml can be changed by other users",
            "state_dir_invalid": "the state dir cannot be used (not writable, not a directory)",
            "vault_auth_missing": "the OpenBao/Vault address or login is not configured",
        },
    ),
    (
        OutputUnwritable,
        {
            "output_unwritable": "an output file cannot be opened for writing; nothing was done",
        },
    ),
    (
        CapabilityError,
        {
            "capability_malformed": "a capability is not 'action:resource' in the allowed syntax",
            "capability_unrestricted": "a capability grants unrestricted access (a bare wildcard)",
            "environment_undeclared": "a capability names an environment that is not declared",
        },
    ),
    (
        AgentError,
        {
            "actor_required": "setting a trust score needs who sets it",
            "agent_exists": "an agent of that name (or did) already exists",
            "agent_not_found": "no agent of that name or did",
            "bad_did": "a did given for a new agent is not an Ed25519 did:key",
            "invalid_name": "an agent name is not 1-64 letters, digits, '.', '_' or '-'",
            "key_already_exported": "the key was exported before (a forced export needs a reason)",
            "key_not_held": "the agent's private key is not held by this gate",
            "output_exists": "the key file to write already exists; a key never overwrites a file",
            "parent_inactive": "an agent cannot be reinstated while its parent is not active",
            "reason_required": "the act needs a reason (it is audited)",
            "trust_event_invalid": "not a trust event with a delta (an operator sets a score)",
            "trust_score_invalid": "a trust score is not an integer from 0 to 1000",
        },
    ),
    (
        EmailInvalid,
        {
            "invalid_email": "a sponsor's or approver's address is not one plain email address",
        },
    ),
    (
        StatusInvalid,
        {
            "status_invalid": "a status filter names no status",
        },
    ),
    (
        OperatorInvalid,
        {
            "operator_invalid": "the operator acting for an agent is not named",
        },
    ),
    (
        ReasonInvalid,
        {
            "reason_invalid": "a reason is not one line of text (a control character, a NUL)",
        },
    ),
    (
        DelegationError,
        {
            "agent_expired": "the agent (or an ancestor) has expired",
            "agent_revoked": "the agent (or an ancestor) is revoked",
            "agent_suspended": "the agent (or an ancestor) is suspended",
            "chain_invalid": "the agent's delegation chain does not verify",
            "delegation_invalid": "a delegation was refused",
            "delegation_not_covered": "a capability is not covered by the parent's grants",
            "depth_exceeded": "the delegation would exceed the maximum depth",
            "outlives_parent": "a child agent cannot outlive its parent",
            "trust_above_parent": "a child's trust score cannot be above its parent's",
            "ttl_invalid": "a ttl is not a positive finite number",
        },
    ),
    (
        CredentialError,
        {
            "credential_refused": "a credential was refused",
            "invalid_time": "'now' is outside 1970 to 9000",
            "jti_invalid": "not a credential id",
            "naive_datetime": "'now' must be a timezone-aware datetime",
            "proof_request_invalid": (
                "a proof is for an Operation or a ProofRequest "
                "(one holding a secret value has a digest per proof only)"
            ),
            "scope_invalid": "a scope is not a non-empty list of capabilities",
            "scope_not_covered": "a requested scope is not covered by the agent's grants",
            "ttl_too_long": "a credential ttl exceeds the configured maximum",
        },
    ),
    (
        InvalidCredential,
        {
            "alg_not_allowed": "the token's algorithm is not allowed",
            "assertion_expired": "a client assertion has expired",
            "assertion_lifetime": "a client assertion lives longer than allowed",
            "assertion_malformed": "a client assertion is not a well-formed signed JWT",
            "assertion_not_yet_valid": "a client assertion is not valid yet",
            "assertion_replayed": "a client assertion was already used",
            "bad_audience": "the token is meant for another audience",
            "bad_issuer": "the token was issued by another issuer",
            "bad_lifetime": "the token's lifetime is outside the allowed range",
            "bad_proof": "the proof of possession is malformed or does not verify",
            "bad_signature": "the signature does not verify (or its key is retired)",
            "dpop_alg_not_allowed": "the DPoP proof's algorithm is not allowed",
            "dpop_ath_mismatch": "the DPoP proof is for another credential",
            "dpop_ath_missing": "the DPoP proof has no hash of the credential",
            "dpop_bad_jwk": "the DPoP proof's key is not a public Ed25519 JWK",
            "dpop_bad_signature": "the DPoP proof's signature does not verify",
            "dpop_bad_type": "the DPoP proof's typ is not dpop+jwt",
            "dpop_htm_mismatch": "the DPoP proof is for another HTTP method",
            "dpop_htu_mismatch": "the DPoP proof is for another URL",
            "dpop_key_mismatch": "the DPoP proof is signed by a key the credential is not bound to",
            "dpop_malformed": "the DPoP proof is not a well-formed signed JWT",
            "dpop_multiple": "more than one DPoP header",
            "dpop_nonce_mismatch": "the DPoP proof does not carry the server's nonce",
            "dpop_private_key": "the DPoP proof's key holds private key material",
            "dpop_request_mismatch": "the DPoP proof is for another request body",
            "dpop_stale": "the DPoP proof is outside its time window",
            "expired": "the credential has expired",
            "invalid_credential": "a presented credential did not verify",
            "malformed": "the token is not a well-formed opsgate credential",
            "missing_proof": "a credential presented without proof of its key",
            "not_yet_valid": "the credential is not valid yet",
            "oversized": "the token is longer than allowed",
            "proof_replayed": "the proof (or DPoP proof) was already used",
            "unbound": "the token is not bound to a key",
            "unknown_agent": "the token's subject is not a known agent",
            "unknown_kid": "the token names no key, or a key the gate does not know",
        },
    ),
    (
        PolicyError,
        {
            "policy_approvers": "a rule's approvers are not valid (unknown group, bad address)",
            "policy_cases_invalid": "a policy test cases file is invalid",
            "policy_duplicate": "a policy name is used twice",
            "policy_forbidden": "a condition uses what is not allowed (calls, private names)",
            "policy_insecure": "a policy file, or a directory on its path, can be changed by "
            "other users",
            "policy_invalid": "a policy file is invalid",
            "policy_missing": "no policies are loaded",
            "policy_mismatch": (
                "this gate's policies (or decision settings) differ from those in force "
                "(loaded last by another gate): it decides nothing until restarted with the "
                "same ones"
            ),
            "policy_not_found": "a policy file or named policy does not exist",
            "policy_request_invalid": "a request to evaluate is not valid",
            "policy_syntax": "a policy file or condition does not parse",
            "policy_too_large": "a policy or cases file is larger than allowed",
            "policy_type": "a condition compares or tests values of the wrong type",
            "policy_unknown_name": "a condition names an unknown attribute",
        },
    ),
    (
        ApprovalError,
        {
            "already_decided": "the approver has already decided on this request",
            "approval_approved": "the request is approved already (only a deny may cancel it)",
            "approval_conflict": "the approval changed while it was being decided; try again",
            "approval_consumed": "the approval was already used by a run",
            "approval_denied": "the approval was denied",
            "approval_expired": "the approval has expired",
            "approval_insufficient": "the approval does not meet the current policy's requirements",
            "approval_limit": "the agent has as many requests waiting for a decision as allowed",
            "approval_not_found": "no approval with that id (or not the caller's)",
            "approval_not_yours": "the approval was requested by another agent",
            "approval_outlived": "it was asked for before the agent's credentials were cut",
            "approval_pending": "the request is still pending (not approved yet)",
            "approval_refused": "an approval act was refused",
            "approver_exists": "the approver already exists; rotate their token instead",
            "approver_not_found": "no approver with that address",
            "approver_token_expired": "the approver's token has expired; the operator rotates it",
            "approver_unauthenticated": "the approver could not be authenticated",
            "comment_invalid": (
                "a comment is not text of at most 2000 characters without control "
                "characters (line breaks and tabs allowed)"
            ),
            "digest_mismatch": "the operation changed since the approval was requested",
            "no_approvers": "the decision has no approval requirement",
            "not_an_approver": "the address is not an approver of this request",
            "self_approval": "an approver who sponsors the requesting agent cannot decide on it",
            "session_expired": "the UI session has expired; sign in again",
            "session_invalid": "not signed in (no valid UI session)",
            "session_ttl_invalid": "a session lifetime out of range",
            "verdict_invalid": "a verdict is not approve or deny",
        },
    ),
    (
        TokenTtlInvalid,
        {
            "token_ttl_invalid": "a token lifetime is not whole days from 1 to 3650",
        },
    ),
    (
        OperatorError,
        {
            "operator_exists": "the operator already exists; rotate their token instead",
            "operator_name_invalid": "not 1-64 lowercase letters, digits, . _ @ or -",
            "operator_not_found": "no operator of that name",
            "operator_token_expired": "the operator's token has expired; rotate it",
            "operator_unauthenticated": "the operator could not be authenticated",
        },
    ),
    (
        OperationError,
        {
            "arguments_invalid": "an MCP tool's arguments are not valid for it",
            "artifact_invalid": "an artifact is not a file the gate can read and hash",
            "artifact_refused": "an artifact is outside the artifact roots (or a link out of them)",
            "deploy_state_invalid": "a deploy target's current release is not a link the gate set",
            "executor_missing": "no executor is registered for the action",
            "monitoring_unavailable": "there is no deploy executor, so no app to monitor",
            "operation_denied": "policy denied the operation",
            "operation_failed": "the operation failed",
            "operation_invalid": "not a valid Operation (action, resource, params)",
            "params_invalid": "operation params are not valid for the executor",
            "placeholder_invalid": "a placeholder's value has characters an argument may not take",
            "plan_failed": "the executor could not plan the operation",
            "secret_value_required": "a secret write needs its value as a SecretValue",
            "task_invalid": "a task names something that is not a plain name",
            "task_unknown": "no plan for the task's sentence",
            "tool_not_granted": "the agent's grants do not cover the MCP tool",
            "tool_unknown": "no MCP tool of that name",
        },
    ),
    (
        MigrationError,
        {
            "database_unknown": "the database is not configured",
            "migration_edited": "an applied migration was edited",
            "migration_failed": "a migration failed",
            "migration_inserted": "a migration was added below the applied head",
            "migration_invalid": "a migration file is invalid",
            "migration_missing": "an applied migration is no longer in the directory",
            "migration_needs_repair": "a failed or interrupted migration must be repaired first",
            "migration_plan_stale": "the history changed since the plan was made; plan again",
            "migration_refused": "the migration plan has errors (destructive, unsafe)",
            "migration_renamed": "an applied migration was renamed",
            "migration_reordered": "the recorded history has a version twice",
            "migration_target_invalid": "the target version is below the applied head",
            "nothing_to_repair": "there is no failed or interrupted migration to repair",
        },
    ),
    (
        MigrationContended,
        {
            "migration_locked": "another run holds the migration lock",
        },
    ),
    (
        TargetDatabaseError,
        {
            "database_unavailable": "the migration's target database cannot be opened",
        },
    ),
    (
        DeployError,
        {
            "deploy_env_unknown": "the environment has no deploy backend configured",
            "deploy_failed": "a deploy failed",
            "release_conflict": "the release exists with another artifact; a version never changes",
            "release_corrupted": "a release no longer matches its recorded digest",
            "release_missing": "the release to roll back to is not recorded or not on disk",
            "release_unproven": "the release to roll back to never passed its health gate there",
            "rollback_to_current": "the app is already at that release",
            "rollback_unsupported": "the environment has no rollback configured",
            "staging_required": "the release has no successful deploy to the earlier environment",
        },
    ),
    (
        DeployLockLost,
        {
            "deploy_lock_lost": "the run's deploy lock was taken over after its lease ran out",
        },
    ),
    (
        RunRefused,
        {
            "deploy_locked": "another run is deploying the app; try again later",
            "deploy_state_changed": "the app's release changed since the plan was made",
            "monitoring_busy": (
                "the app's health check, or as many as the gate runs at once, is running"
            ),
            "run_refused": "the run was refused before it changed anything",
            "secrets_unavailable": "the deploy asks for secrets, but no secret store is connected",
        },
    ),
    (
        AuditError,
        {
            "anchor_invalid": "an audit anchor or checkpoint does not verify, or is another gate's",
            "anchor_missing": "an anchor file is not found",
            "audit_chain_broken": (
                "the log no longer holds a signed checkpoint; the gate signs no more of it"
            ),
            "audit_invalid": "an audit event is not serialisable",
            "audit_query_invalid": (
                "an audit query's limit or filters are invalid (a filter is one line of text)"
            ),
            "audit_write_failed": "the audit log could not be written; nothing was done",
        },
    ),
    (
        SecretError,
        {
            "lease_ttl_refused": "the backend granted a longer database lease than asked",
            "lease_ttl_too_short": "the credential has too little time left for a database lease",
            "secret_conflict": "the secret changed concurrently",
            "secret_corrupt": "a stored secret version does not decrypt (its row was altered)",
            "secret_error": "a secret operation failed",
            "master_key_unchanged": "the new master key is the one in use",
            "secret_key_mismatch": "the secret was sealed with another master key",
            "secret_not_found": "the secret does not exist or is deleted",
            "secret_path_invalid": "a secret path is not valid",
            "secret_unsupported": "a stored secret is not one text value (written elsewhere)",
            "secret_value_changed": "the value is not the one planned",
            "secret_value_invalid": "a secret value is empty or too large",
        },
    ),
    (
        SecretBackendError,
        {
            "secret_backend_error": "the secret backend failed the request",
            "secret_backend_forbidden": "the secret backend refused the gate's token (403)",
            "secret_backend_refused": "the secret backend refused the request (400)",
            "secret_backend_sealed": "the secret backend is sealed or unavailable (503)",
            "secret_backend_throttled": "the secret backend is rate limiting the gate (429)",
            "secret_backend_timeout": "the secret backend did not answer in time",
            "secret_backend_unauthenticated": "the secret backend refused the gate's login (401)",
            "secret_backend_unreachable": "the secret backend is unreachable",
        },
    ),
    (
        StoreError,
        {
            "schema_unknown": "the state database's schema is newer than this version of opsgate",
            "store_timeout": "the state database did not answer in time",
            "store_unavailable": "the state database is unavailable",
        },
    ),
    (
        InternalError,
        {
            "internal_error": "something unexpected failed inside a call (only its class is named)",
        },
    ),
    (
        HttpRefusal,
        {
            "authorization_malformed": "not exactly one well-formed Authorization header",
            "body_too_large": "the request body is larger than allowed",
            "credential_missing": "no credentials were presented",
            "header_too_large": "a request header is larger than allowed",
            "http_error": "an HTTP error other than 404 or 405",
            "json_invalid": "the request body is not a JSON object",
            "json_too_deep": "the request body nests too deep",
            "method_not_allowed": "the method is not allowed on this path",
            "not_ready": "the server is not ready (its health check fails)",
            "rate_limited": "too many refused requests; slow down",
            "request_invalid": "the request's parameters or body are not valid",
            "use_dpop_nonce": "the DPoP proof must carry the server's current nonce",
            "wrong_role": "the endpoint is for another role (agent, approver, operator)",
        },
    ),
    (
        UiRefusal,
        {
            "csrf_invalid": "the form's CSRF token is missing or wrong",
            "form_invalid": "the form is not a valid urlencoded form",
        },
    ),
    (
        NotFound,
        {
            "not_found": "what the request names does not exist (or is not the caller's)",
        },
    ),
    (Revoked, {"revoked": "the credential was revoked"}),
    (StatementFailed, {"migration_statement_failed": "the target refused a migration statement"}),
)


def _index() -> dict[str, Code]:
    codes: dict[str, Code] = {}
    for owner, meanings in _REGISTRY:
        for code, meaning in meanings.items():
            if code in codes:
                raise RuntimeError(f"error code {code!r} is registered twice")
            codes[code] = Code(code, owner, meaning)
    return codes


#: Every error code, to its one owning class and meaning.
CODES: dict[str, Code] = _index()


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
_HEX_WORD = re.compile(r"[0-9a-fA-F]+")


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


# Texts seen to hold no secret shape (dids, digests, key ids, capabilities come again
# and again in audit events): a bounded set, holding no secret.
_CLEAN: dict[str, None] = {}
_CLEAN_MAX = 4096


def _shapes(message: str) -> str:
    if message in _CLEAN:
        return message
    out = message
    if _ANY_SHAPE.search(message) is not None:
        out = _PEM.sub("<key, not shown>", message)
        out = _TOKEN.sub("<token, not shown>", out)
        out = _JWS.sub("<credential, not shown>", out)
        out = _RUN.sub(_run, out)
    # Remembered either way: capabilities, digests, jtis and summaries come again and
    # again (every audit event), and a set lookup is cheaper than the search.
    if out == message and len(message) <= 256:
        if len(_CLEAN) >= _CLEAN_MAX:
            _CLEAN.clear()
        _CLEAN[message] = None
    return out


def secret_shaped(text: str) -> bool:
    """Whether `text` holds a secret-shaped substring anywhere (see `scrub`)."""
    return _shapes(text) != text


def scrub(message: str, *, long_words: bool = True, keep_hex: bool = False) -> str:
    """Remove secret-shaped substrings from free text, wherever they occur: PEM
    blocks, opsgate tokens, JWS/JWTs, long mixed base64url runs; with `long_words`
    (text we did not write, such as usage errors that echo an argument) also any
    very long opaque word, except, with `keep_hex`, one of hex digits only (a plan's
    or an artifact's digest in an error the gate wrote). Lone surrogates become
    escapes, so the text encodes."""
    message = _shapes(message)
    if long_words:

        def word(m: re.Match[str]) -> str:
            if keep_hex and _HEX_WORD.fullmatch(m.group()):
                return m.group()
            return f"<{len(m.group())} characters, not shown>"

        message = _LONG_WORD.sub(word, message)
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


# Control characters (C0, DEL, C1). PostgreSQL refuses a NUL in text outright; the
# others have no place in a name, a filter or a reason (one line, shown to people, in
# terminals). A comment keeps its line breaks and tabs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def plain_text(value: object, *, lines: bool = False) -> bool:
    """Whether `value` is text every state database stores as given: a str holding no
    control character (with `lines`, line breaks and tabs are allowed) and no lone
    surrogate. Checked where a name, a filter, a reason or a comment comes in, so such
    input is refused with its own code on SQLite and PostgreSQL alike (PostgreSQL
    fails a NUL in text as a driver error), before anything is read or written."""
    if not isinstance(value, str):
        return False
    control = _CONTROL_BUT_LINES if lines else _CONTROL
    return control.search(value) is None and encodable(value) is value


@overload
def check_reason(reason: None) -> None: ...
@overload
def check_reason(reason: str) -> str: ...
@overload
def check_reason(reason: object) -> str | None: ...
def check_reason(reason: object) -> str | None:
    """A reason given for an act (a suspension, a revocation, a trust change) as it may
    be stored: one line of plain text (else refused), secret-shaped words scrubbed
    (it lands in a table as well as in the audit, and a reason is free text people
    paste into); None (no reason) passes."""
    if reason is None:
        return None
    if not plain_text(reason):
        raise ReasonInvalid(
            "a reason must be one line of text, without control characters",
            code="reason_invalid",
        )
    assert isinstance(reason, str)
    return scrub(reason)


_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")


def check_operator(by: object) -> str:
    """The name of whoever does an operator's act (`--by`, a login name): a plain name,
    so it never passes for an agent (a did) nor carries control characters into the
    audit and terminals; `operator:<name>` gives the name."""
    name = by.removeprefix("operator:") if isinstance(by, str) else by
    if not isinstance(name, str) or not _OPERATOR.match(name):
        raise OperatorInvalid(
            f"the operator must be named by 1-64 letters, digits, '.', '_', '@' or '-', "
            f"got {shown(name)}",
            code="operator_invalid",
        )
    return name


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
    "CODES",
    "AgentError",
    "ApprovalError",
    "AuditError",
    "CapabilityError",
    "Code",
    "ConfigError",
    "CredentialError",
    "CredentialMissing",
    "CredentialNotFound",
    "CredentialTtlInvalid",
    "DelegationError",
    "DeployContended",
    "DeployError",
    "DeployLockLost",
    "DidInvalid",
    "EmailInvalid",
    "HttpRefusal",
    "InternalError",
    "InvalidCredential",
    "MigrationContended",
    "MigrationError",
    "NotFound",
    "OperationError",
    "OperatorError",
    "OperatorInvalid",
    "OpsgateError",
    "OutputUnwritable",
    "ParamsInvalid",
    "PolicyError",
    "ReasonInvalid",
    "Revoked",
    "RevokedCredential",
    "RevokedOnIssue",
    "RunRefused",
    "SecretBackendError",
    "SecretError",
    "StatementFailed",
    "StatusInvalid",
    "StoreError",
    "TargetDatabaseError",
    "TokenTtlInvalid",
    "UiRefusal",
    "UnusableAgentChange",
    "UnusableAgentCredential",
    "UnusableAgentIssue",
    "check_reason",
    "encodable",
    "plain_text",
    "safe_text",
    "scrub",
    "secret_shaped",
    "shown",
]
