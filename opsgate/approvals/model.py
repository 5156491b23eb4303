"""Approval values and the pure quorum rule."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from opsgate.decision import ApprovalRequirement

Status = Literal["pending", "approved", "denied", "expired", "consumed"]
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Approver:
    """A registered approver and their current token's lifetime (never the token)."""

    email: str
    created_at: float
    token_issued_at: float
    token_expires_at: float
    disabled_at: float | None = None

    def status(self, now: float) -> Literal["active", "expired", "disabled"]:
        if self.disabled_at is not None:
            return "disabled"
        return "expired" if now >= self.token_expires_at else "active"

    def token_age_days(self, now: float) -> float:
        return max(0.0, now - self.token_issued_at) / DAY

    def to_dict(self, now: float) -> dict[str, Any]:
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).isoformat()

        return {
            "approver": self.email,
            "status": self.status(now),
            "created_at": iso(self.created_at),
            "token_issued_at": iso(self.token_issued_at),
            "token_expires_at": iso(self.token_expires_at),
            "token_age_days": round(self.token_age_days(now), 1),
        }


@dataclass(frozen=True, slots=True)
class ApproverSession:
    """An approver signed in to the web UI (the cookie's secret is not kept here)."""

    approver: str
    created_at: float
    expires_at: float
    token_issued_at: float


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    approver: str
    decision: Literal["approve", "deny"]
    at: float
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A request for human approval, bound to the exact plan (`digest`)."""

    id: str
    digest: str
    requester_did: str
    requester_name: str
    sponsors: tuple[str, ...]
    capability: str
    operation: dict[str, Any]
    plan: dict[str, Any]
    requirements: tuple[ApprovalRequirement, ...]
    reasons: tuple[str, ...]
    status: Status
    created_at: float
    expires_at: float
    decided_at: float | None = None
    consumed_at: float | None = None
    decisions: tuple[ApprovalDecision, ...] = field(default=())
    # When the credential that asked was issued (None for requests stored before it was
    # recorded): with `created_at`, what a cut of the agent's credentials compares.
    asked_with_iat: float | None = None

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(sorted({a for r in self.requirements for a in r.approvers}))

    @property
    def min_approvals(self) -> int:
        return max((r.min_approvals for r in self.requirements), default=1)

    @property
    def expires(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "capability": self.capability,
            "requester": {"did": self.requester_did, "name": self.requester_name},
            "operation": self.operation,
            "plan": self.plan,
            "digest": self.digest,
            "reasons": list(self.reasons),
            "approvers": list(self.approvers),
            "min_approvals": self.min_approvals,
            "requirements": [
                {
                    "policy": r.policy,
                    "rule": r.rule,
                    "approvers": list(r.approvers),
                    "min_approvals": r.min_approvals,
                }
                for r in self.requirements
            ],
            "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(),
            "expires_at": self.expires.isoformat(),
            "decisions": [
                {
                    "approver": d.approver,
                    "decision": d.decision,
                    "comment": d.comment,
                    "at": datetime.fromtimestamp(d.at, UTC).isoformat(),
                }
                for d in self.decisions
            ],
        }


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """What `Gate.execute` returns when a human must approve first."""

    approval_id: str
    request: ApprovalRequest = field(repr=False)

    @property
    def approvers(self) -> tuple[str, ...]:
        return self.request.approvers

    @property
    def min_approvals(self) -> int:
        return self.request.min_approvals

    @property
    def digest(self) -> str:
        return self.request.digest

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.request.reasons

    @property
    def expires_at(self) -> datetime:
        return self.request.expires


def satisfied(requirements: Iterable[ApprovalRequirement], approvals: Iterable[str]) -> bool:
    """Every requirement has at least min_approvals distinct approvers from its own list."""
    approved = set(approvals)
    return all(len(approved & set(r.approvers)) >= r.min_approvals for r in requirements)


def cancelled_after_quorum(req: ApprovalRequest) -> bool:
    """Denied although its approvals met the quorum: approved, then withdrawn before use."""
    approvals = (d.approver for d in req.decisions if d.decision == "approve")
    if req.status != "denied" or not req.requirements:
        return False
    return satisfied(req.requirements, approvals)


def quorum_status(
    requirements: tuple[ApprovalRequirement, ...], decisions: Iterable[ApprovalDecision]
) -> Status:
    """One deny denies; all requirements met approves; otherwise still pending."""
    decisions = list(decisions)
    if any(d.decision == "deny" for d in decisions):
        return "denied"
    if requirements and satisfied(requirements, (d.approver for d in decisions)):
        return "approved"
    return "pending"
