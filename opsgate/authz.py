"""Steps 3 and 4 of the one path as a pure function: scope, grants, policy, trust.

No I/O and no clock: the caller passes the agent's state, its effective trust,
the parsed request and the time attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from opsgate import capabilities as caps
from opsgate.config import TrustConfig
from opsgate.decision import APPROVAL_EXPIRY_SECONDS, ApprovalRequirement, Decision, MatchedRule
from opsgate.environments import DEFAULT, Environments
from opsgate.policy import PolicyRequest
from opsgate.state import AgentState


class PolicyEngine(Protocol):
    def decide(self, request: Any) -> Decision: ...


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    agent: AgentState
    trust: int  # effective trust
    scope: tuple[caps.Capability, ...]
    capability: caps.Capability
    environment: str | None
    destructive: bool = False
    findings: tuple[str, ...] = ()
    protected: bool = False  # the environment is protected: low trust needs approval
    params: Mapping[str, Any] = field(default_factory=dict)
    hour: int = 0
    weekday: int = 0
    minute: int = 0


def environment_of(cap: caps.Capability, environments: Environments = DEFAULT) -> str | None:
    """The canonical environment a capability names (None: none, or undeclared).

    See opsgate.environments: the first segment, or after a namespace the first
    declared one (`read:secrets/production/db` -> production).
    """
    return environments.environment_of(cap)


def scope_refusal(
    agent: AgentState, scope: tuple[caps.Capability, ...], cap: caps.Capability
) -> Decision | None:
    """Step 3 alone: the deny when `cap` is outside the credential's scope or the
    agent's delegated grants, else None. It needs only the capability, so the gate
    runs it before any executor code reads anything on the request's behalf."""
    if not caps.covered_by_any(scope, cap):
        return Decision(
            "deny",
            (f"{str(cap)!r} is not in the credential's scope",),
            violation="out_of_scope",
        )
    grant = agent.grant
    if grant is None or not caps.covered_by_any(grant.parsed, cap):
        return Decision(
            "deny",
            (f"{str(cap)!r} is not granted to agent {agent.name!r}",),
            violation="not_granted",
        )
    return None


def authorize(
    req: AuthzRequest,
    policies: PolicyEngine | None,
    trust: TrustConfig,
    trust_approvers: tuple[str, ...],
) -> Decision:
    """Scope ⊆ grants, then policy, then trust thresholds. Deny wins; errors never allow."""
    cap = req.capability
    refusal = scope_refusal(req.agent, req.scope, cap)
    if refusal is not None:
        return refusal
    if policies is None:
        decision = Decision("allow", (f"{str(cap)!r} is covered by scope and grants",))
    else:
        decision = policies.decide(
            PolicyRequest(
                action=cap.action,
                resource=cap.resource,
                capability=str(cap),
                environment=req.environment,
                destructive=req.destructive,
                findings=req.findings,
                agent_name=req.agent.name,
                agent_did=req.agent.did,
                agent_trust_score=req.trust,
                agent_depth=req.agent.depth,
                agent_sponsor=req.agent.sponsor,
                params=dict(req.params),
                hour=req.hour,
                weekday=req.weekday,
                minute=req.minute,
            )
        )
    if decision.effect == "deny":
        return replace(decision, violation="policy_deny", extra=dict(decision.extra))
    if req.protected and req.trust < trust.approval_below:
        reason = (
            f"trust {req.trust} is below {trust.approval_below}: "
            f"{req.environment} operations need approval"
        )
        if not trust_approvers:
            return Decision(
                "deny",
                (*decision.reasons, reason, "no trust approvers are configured, so it is refused"),
                decision.matched,
                errors=decision.errors,
                extra={"trust_gate": True},
            )
        requirement = ApprovalRequirement(
            policy="trust-threshold",
            rule=0,
            approvers=trust_approvers,
            min_approvals=1,
            expires_in_seconds=APPROVAL_EXPIRY_SECONDS,
        )
        requirements = (*decision.requirements, requirement)
        return Decision(
            "require_approval",
            (*decision.reasons, reason),
            (*decision.matched, MatchedRule("trust-threshold", 0, "require_approval", reason)),
            approvers=tuple(sorted(set(decision.approvers) | set(trust_approvers))),
            min_approvals=max(decision.min_approvals, 1),
            expires_in_seconds=min(r.expires_in_seconds for r in requirements),
            errors=decision.errors,
            requirements=requirements,
            extra={"trust_gate": True},
        )
    return decision
