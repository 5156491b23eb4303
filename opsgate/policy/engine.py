"""Compiled rules and the decision: deny > require_approval > allow, with reasons.

A `PolicySet` is built once (by the loader) and never changes, so any number of
threads may call `decide` at once. The hot path is a dict lookup by action, a loop
over prebuilt (test, rule) pairs and, only when something matched, one Decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from opsgate.decision import EFFECT_RANK, ApprovalRequirement, Decision, Effect, MatchedRule
from opsgate.policy.condition import Condition, EvalError, Test
from opsgate.policy.request import PolicyRequest

NO_MATCH_REASON = "no policy rule matched"


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule; `reason` and `matched` are prebuilt for the hot path."""

    policy: str
    index: int
    effect: Effect
    condition: Condition
    description: str = ""
    approvers: tuple[str, ...] = ()
    min_approvals: int = 0
    expires_in_seconds: int = 0
    source: str = "<string>"

    @property
    def label(self) -> str:
        """How reasons and errors name the rule: policy, index and what it is about."""
        about = self.description or self.condition.source
        return f"policy '{self.policy}' rule {self.index} ({' '.join(about.split())})"

    @property
    def reason(self) -> str:
        return f"{self.effect}: {self.label}"

    @property
    def matched(self) -> MatchedRule:
        return MatchedRule(self.policy, self.index, self.effect, self.description)

    @property
    def requirement(self) -> ApprovalRequirement | None:
        if self.effect != "require_approval":
            return None
        return ApprovalRequirement(
            self.policy, self.index, self.approvers, self.min_approvals, self.expires_in_seconds
        )

    def evaluate(self, request: PolicyRequest) -> bool:
        """The full condition, action constraints included; raises on a run-time error."""
        return self.condition.test(request)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    description: str = ""
    source: str = "<string>"


@dataclass(frozen=True, slots=True)
class _Entry:
    """Per-rule values built once so `decide` allocates little when a rule matches."""

    pos: int
    rule: Rule
    rank: int
    reason: str
    matched: MatchedRule
    requirement: ApprovalRequirement | None
    fails_closed: bool


#: Distinct matched-rule combinations whose Decision fields are remembered.
MEMO_LIMIT = 4096


def _error_text(exc: Exception) -> str:
    if isinstance(exc, EvalError):
        return str(exc)
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__.lower()}: {text}" if text else type(exc).__name__.lower()


class PolicySet:
    """An immutable, thread-safe set of compiled policies with an index by action."""

    __slots__ = (
        "_any",
        "_by_action",
        "_entries",
        "_memo",
        "_rules",
        "digest",
        "groups",
        "policies",
        "sources",
    )

    policies: tuple[Policy, ...]
    groups: Mapping[str, tuple[str, ...]]
    sources: tuple[str, ...]
    #: What was loaded, for comparing replicas (`policy_digest`); None when not from files.
    digest: str | None
    _rules: tuple[Rule, ...]
    _by_action: dict[str, tuple[tuple[Test, _Entry], ...]]
    _any: tuple[tuple[Test, _Entry], ...]
    _entries: tuple[_Entry, ...]
    # Matched positions -> Decision constructor arguments. Only ever filled with
    # values that are a pure function of the key, so sharing it across threads is
    # safe (a race at worst computes the same value twice).
    _memo: dict[tuple[int, ...], tuple[Any, ...]]

    def __init__(
        self,
        policies: Sequence[Policy] = (),
        groups: Mapping[str, Sequence[str]] | None = None,
        sources: Iterable[str] = (),
        digest: str | None = None,
    ) -> None:
        rules = tuple(rule for policy in policies for rule in policy.rules)
        entries = [
            (
                rule.condition.residual,
                _Entry(
                    pos,
                    rule,
                    EFFECT_RANK[rule.effect],
                    rule.reason,
                    rule.matched,
                    rule.requirement,
                    rule.effect != "allow",
                ),
            )
            for pos, rule in enumerate(rules)
        ]
        any_action = tuple(e for e in entries if e[1].rule.condition.actions is None)
        by_action: dict[str, list[int]] = {}
        for pos, (_, entry) in enumerate(entries):
            for action in entry.rule.condition.actions or ():
                by_action.setdefault(action, []).append(pos)
        any_pos = [pos for pos, e in enumerate(entries) if e[1].rule.condition.actions is None]
        index = {
            action: tuple(entries[p] for p in sorted(set(positions) | set(any_pos)))
            for action, positions in by_action.items()
        }
        init = object.__setattr__
        init(self, "policies", tuple(policies))
        init(self, "groups", MappingProxyType({k: tuple(v) for k, v in (groups or {}).items()}))
        init(self, "sources", tuple(sources))
        init(self, "digest", digest)
        init(self, "_rules", rules)
        init(self, "_by_action", index)
        init(self, "_any", any_action)
        init(self, "_entries", tuple(e for _, e in entries))
        init(self, "_memo", {(): ("allow", (NO_MATCH_REASON,))})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PolicySet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PolicySet is immutable")

    def __repr__(self) -> str:
        return f"PolicySet(policies={len(self.policies)}, rules={len(self._rules)})"

    def __len__(self) -> int:
        return len(self._rules)

    @classmethod
    def empty(cls) -> PolicySet:
        """No policies: every request that passed the capability check is allowed."""
        return cls()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def actions(self) -> frozenset[str]:
        """Actions that some rule is scoped to (the keys of the index)."""
        return frozenset(self._by_action)

    def rules_for(self, action: str) -> tuple[Rule, ...]:
        """The rules `decide` evaluates for `action`, in their original order."""
        return tuple(e.rule for _, e in self._by_action.get(action, self._any))

    def decide(self, request: PolicyRequest) -> Decision:
        """Evaluate the rules for the request's action; combine deny > approval > allow.

        A fresh Decision each call: callers may attach `extra` without sharing it.
        """
        hits: list[int] = []
        failed: list[tuple[_Entry, str]] | None = None
        for test, entry in self._by_action.get(request.action, self._any):
            try:
                if test(request):
                    hits.append(entry.pos)
            except Exception as exc:  # noqa: BLE001 - any failure must fail closed, never escape
                if failed is None:
                    failed = []
                failed.append((entry, _error_text(exc)))
        if failed is not None:
            return _combine(self._entries, hits, failed)
        key = tuple(hits)
        args = self._memo.get(key)
        if args is None:
            args = _combine_args(self._entries, key, ())
            if len(self._memo) < MEMO_LIMIT:
                self._memo[key] = args
        return Decision(*args)


def _combine(
    entries: tuple[_Entry, ...], hits: list[int], failed: list[tuple[_Entry, str]]
) -> Decision:
    """A decision with run-time errors: never memoized, the error text is per request."""
    return Decision(*_combine_args(entries, tuple(hits), failed))


def _combine_args(
    entries: tuple[_Entry, ...],
    hits: tuple[int, ...],
    failed: list[tuple[_Entry, str]] | tuple[()],
) -> tuple[Any, ...]:
    """Decision fields for matched positions plus errored rules, in rule order."""
    errored = {entry.pos: error for entry, error in failed}
    rank = -1
    matched: list[MatchedRule] = []
    reasons: list[str] = []
    errors: list[str] = []
    requirements: list[ApprovalRequirement] = []
    for pos in sorted({*hits, *errored}):
        entry = entries[pos]
        error = errored.get(pos)
        if error is not None:
            errors.append(f"{entry.rule.label}: {error}")
            if not entry.fails_closed:
                continue  # an allow rule that errored did not match
            m = entry.matched
            matched.append(MatchedRule(m.policy, m.rule, m.effect, m.description, error))
            reasons.append(f"{entry.reason}: condition failed, counted as matched")
        else:
            matched.append(entry.matched)
            reasons.append(entry.reason)
        rank = max(rank, entry.rank)
        if entry.requirement is not None:
            requirements.append(entry.requirement)
    if rank < 0:
        return ("allow", (NO_MATCH_REASON,), (), (), 0, None, tuple(errors))
    if rank != EFFECT_RANK["require_approval"]:
        effect: Effect = "deny" if rank == EFFECT_RANK["deny"] else "allow"
        return (effect, tuple(reasons), tuple(matched), (), 0, None, tuple(errors))
    approvers = tuple(sorted({a for r in requirements for a in r.approvers}))
    return (
        "require_approval",
        tuple(reasons),
        tuple(matched),
        approvers,
        max(r.min_approvals for r in requirements),
        min(r.expires_in_seconds for r in requirements),
        tuple(errors),
        tuple(requirements),
    )


__all__ = ["NO_MATCH_REASON", "Policy", "PolicySet", "Rule"]
