"""opsgate: the gate every privileged operation of an AI agent passes through."""

from opsgate.approvals import ApprovalRequest, PendingApproval
from opsgate.audit.log import AuditRecord, Checkpoint, VerifyReport
from opsgate.credentials.manager import Claims, Credential
from opsgate.credentials.proof import ProofRequest
from opsgate.decision import ApprovalRequirement, Decision, MatchedRule
from opsgate.errors import (
    AgentError,
    ApprovalError,
    AuditError,
    CapabilityError,
    ConfigError,
    CredentialError,
    DelegationError,
    InvalidCredential,
    OperationError,
    OpsgateError,
    PolicyError,
    SecretError,
    StoreError,
)
from opsgate.gate import Gate
from opsgate.identity.registry import Agent
from opsgate.operations.base import Operation, Outcome, Plan

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentError",
    "ApprovalError",
    "ApprovalRequest",
    "ApprovalRequirement",
    "AuditError",
    "AuditRecord",
    "CapabilityError",
    "Checkpoint",
    "Claims",
    "ConfigError",
    "Credential",
    "CredentialError",
    "Decision",
    "DelegationError",
    "Gate",
    "InvalidCredential",
    "MatchedRule",
    "Operation",
    "OperationError",
    "OpsgateError",
    "Outcome",
    "PendingApproval",
    "Plan",
    "PolicyError",
    "ProofRequest",
    "SecretError",
    "StoreError",
    "VerifyReport",
]
