"""Human approval: requests bound to a plan digest, authenticated approvers, quorum."""

from opsgate.approvals.model import (
    ApprovalDecision,
    ApprovalRequest,
    Approver,
    PendingApproval,
    quorum_status,
    satisfied,
)
from opsgate.approvals.service import ApprovalService

__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "ApprovalService",
    "Approver",
    "PendingApproval",
    "quorum_status",
    "satisfied",
]
