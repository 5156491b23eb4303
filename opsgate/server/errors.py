"""From an error's stable `.code` to its HTTP status: one table, read by every route.

A code not in `CODE_STATUS` takes its exception class's status (`CLASS_STATUS`);
anything else is 500 with a generic message (a bug, never a user's mistake).
The body is always `{"error": class, "code": ..., "message": ...}`.
"""

from __future__ import annotations

from opsgate import errors as e
from opsgate.errors import HttpRefusal as HttpRefusal  # defined with every code's owner

CODE_STATUS: dict[str, int] = {
    # The server's own refusals (before the kernel is asked).
    "credential_missing": 401,
    "use_dpop_nonce": 401,  # not a refusal: the proof must carry the given nonce
    "authorization_malformed": 401,
    "wrong_role": 403,
    "rate_limited": 429,
    "body_too_large": 413,
    "header_too_large": 431,
    "json_invalid": 422,
    "json_too_deep": 422,
    "request_invalid": 422,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_ready": 503,
    "policy_mismatch": 503,  # this replica's policies are not in force: another one is
    "database_unavailable": 503,  # a migration's target, when planning
    # Issuing credentials.
    "scope_not_covered": 403,
    "capability_unrestricted": 403,
    "agent_suspended": 403,
    "agent_revoked": 403,
    "agent_expired": 403,
    "chain_invalid": 403,
    "revoked": 403,
    # Agents and delegation.
    "agent_not_found": 404,
    "agent_exists": 409,
    "key_already_exported": 409,
    "key_not_held": 409,
    "delegation_not_covered": 403,
    # Approvals.
    "approval_not_found": 404,
    "approval_not_yours": 404,  # an agent learns nothing about others' approvals
    "approver_not_found": 404,
    "approver_unauthenticated": 401,
    "approver_token_expired": 401,
    "not_an_approver": 403,
    "self_approval": 403,
    "approval_insufficient": 403,
    "approval_limit": 409,
    "already_decided": 409,
    "approval_conflict": 409,
    "approval_pending": 409,
    "approval_approved": 409,
    "approval_denied": 409,
    "approval_expired": 409,
    "approval_consumed": 409,
    "approval_outlived": 409,
    "digest_mismatch": 409,
    # The web UI's sessions and forms.
    "session_invalid": 401,
    "session_expired": 401,
    "session_ttl_invalid": 422,
    "csrf_invalid": 403,
    "form_invalid": 422,
    "verdict_invalid": 422,
    # Operators.
    "operator_not_found": 404,
    "operator_exists": 409,
    "operator_unauthenticated": 401,
    "operator_token_expired": 401,
    # Operations.
    "operation_denied": 403,
    "artifact_refused": 403,
    "executor_missing": 404,
    "migration_locked": 409,
    "monitoring_busy": 409,
    # The audit log: a malformed query is the caller's, not an outage (AuditError's 503).
    "audit_query_invalid": 422,
}

# Checked in order: subclasses before their base.
CLASS_STATUS: tuple[tuple[type[e.OpsgateError], int], ...] = (
    (e.InvalidCredential, 401),
    (e.OperatorError, 401),
    (e.CredentialError, 422),
    (e.CapabilityError, 422),
    (e.AgentError, 422),
    (e.DelegationError, 422),
    (e.PolicyError, 422),
    (e.ApprovalError, 422),
    (e.OperationError, 422),
    (e.SecretError, 422),
    (e.ConfigError, 422),
    (e.AuditError, 503),
    (e.StoreError, 503),
)


def status_of(exc: e.OpsgateError) -> int:
    if isinstance(exc, e.InvalidCredential):
        return 401  # a presented credential did not verify, whatever the reason
    status = CODE_STATUS.get(exc.code)
    if status is not None:
        return status
    for cls, code_status in CLASS_STATUS:
        if isinstance(exc, cls):
            return code_status
    return 500
