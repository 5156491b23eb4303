"""opsgate: the gate every privileged operation of an AI agent passes through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    DeployError,
    InvalidCredential,
    OperationError,
    OpsgateError,
    PolicyError,
    RunRefused,
    SecretError,
    StoreError,
)
from opsgate.gate import Gate
from opsgate.identity.registry import Agent
from opsgate.operations.base import Operation, Outcome, Plan

if TYPE_CHECKING:
    from opsgate.client import RemoteGate

__version__ = "0.1.0"


def connect(url: str, agent_key: Any, **options: Any) -> RemoteGate:
    """The gate served at `url`, for the agent holding `agent_key` (see opsgate.client)."""
    from opsgate.client import RemoteGate

    return RemoteGate(url, agent_key, **options)


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
    "DeployError",
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
    "RunRefused",
    "SecretError",
    "StoreError",
    "VerifyReport",
    "connect",
]
