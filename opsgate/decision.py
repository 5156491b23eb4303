"""The value every authorization step returns: an effect plus the reasons for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from opsgate.errors import scrub

Effect = Literal["allow", "deny", "require_approval"]
EFFECTS: tuple[Effect, ...] = ("allow", "deny", "require_approval")
# Combining order: a higher rank wins.
EFFECT_RANK: dict[str, int] = {"allow": 0, "require_approval": 1, "deny": 2}
# Why a deny is the agent's offence (charged to its trust): outside the credential's
# scope, outside its grants, or denied by policy. Other denies (its own trust too low
# and no one may approve) are not charged.
Violation = Literal["out_of_scope", "not_granted", "policy_deny"]


def as_effect(value: object) -> Effect | None:
    """`value` as the Effect it names, or None when it names none."""
    return next((e for e in EFFECTS if e == value), None)


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """A policy rule that matched (or errored and so counted as matched)."""

    policy: str
    rule: int  # index of the rule inside its policy, from 0
    effect: Effect
    description: str = ""
    error: str | None = None


# How long an approval request lives when nothing says otherwise (a rule without
# `expires_in`, the trust threshold's requirement).
APPROVAL_EXPIRY_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """One matched require_approval rule: min_approvals distinct people out of approvers."""

    policy: str
    rule: int
    approvers: tuple[str, ...]  # resolved individual emails, sorted
    min_approvals: int
    expires_in_seconds: int


@dataclass(frozen=True, slots=True)
class Decision:
    """Effect, the rules that decided, why, who may approve, and what went wrong on the way."""

    effect: Effect
    reasons: tuple[str, ...] = ()
    matched: tuple[MatchedRule, ...] = ()
    approvers: tuple[str, ...] = ()
    min_approvals: int = 0
    expires_in_seconds: int | None = None
    errors: tuple[str, ...] = ()
    # Every matched require_approval rule must be satisfied on its own; `approvers`
    # and `min_approvals` above are their union and maximum, for display.
    requirements: tuple[ApprovalRequirement, ...] = ()
    violation: Violation | None = None  # set on a deny that is charged as a violation
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Reasons quote the request (its capability): a token pasted into it is
        # scrubbed here, before the decision is returned, printed, logged or audited.
        for name in ("reasons", "errors"):
            texts = getattr(self, name)
            if any(type(t) is str and scrub(t, long_words=False) != t for t in texts):
                cleaned = tuple(scrub(t, long_words=False) if type(t) is str else t for t in texts)
                object.__setattr__(self, name, cleaned)

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "reasons": list(self.reasons),
            "matched": [
                {"policy": m.policy, "rule": m.rule, "effect": m.effect, "error": m.error}
                for m in self.matched
            ],
            "approvers": list(self.approvers),
            "min_approvals": self.min_approvals,
            "expires_in_seconds": self.expires_in_seconds,
            "errors": list(self.errors),
            "requirements": [
                {
                    "policy": r.policy,
                    "rule": r.rule,
                    "approvers": list(r.approvers),
                    "min_approvals": r.min_approvals,
                    "expires_in_seconds": r.expires_in_seconds,
                }
                for r in self.requirements
            ],
        }
