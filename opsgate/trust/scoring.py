"""Trust scores as pure functions: event kinds, deltas, clamping, the anti-farming rules."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from opsgate.config import CreditRules, TrustDeltas
from opsgate.errors import AgentError, shown

MIN_SCORE, MAX_SCORE = 0, 1000


class TrustEvent(StrEnum):
    SUCCESS = "success"
    FAILED_DEPLOYMENT = "failed_deployment"
    FAILED_MIGRATION = "failed_migration"
    POLICY_VIOLATION = "policy_violation"
    UNUSUAL_ACCESS = "unusual_access"
    CREDENTIAL_MISUSE = "credential_misuse"
    OPERATOR = "operator"  # a score an operator set (`trust set`); has no delta


def delta_for(kind: TrustEvent, deltas: TrustDeltas) -> int:
    if kind is TrustEvent.OPERATOR or not isinstance(kind, TrustEvent):
        raise AgentError(
            f"{shown(kind)} is not a trust event with a delta (an operator uses set_score)",
            code="trust_event_invalid",
        )
    return int(getattr(deltas, kind.value))


def clamp(score: int) -> int:
    return MIN_SCORE if score < MIN_SCORE else MAX_SCORE if score > MAX_SCORE else score


def apply(score: int, kind: TrustEvent, deltas: TrustDeltas) -> int:
    return clamp(score + delta_for(kind, deltas))


# The failure kinds that cost trust, and the kind a failure of an action is when its
# executor did not classify it (a failed deploy or migration is one whatever it said).
_FAILURE_EVENTS = {
    "deployment": TrustEvent.FAILED_DEPLOYMENT,
    "migration": TrustEvent.FAILED_MIGRATION,
}
_ACTION_FAILURE_KINDS = {"deploy": "deployment", "rollback": "deployment", "migrate": "migration"}


def failure_kind(action: str, reported: str | None) -> str | None:
    """A failed operation's kind: its executor's, else the one its action implies."""
    return reported or _ACTION_FAILURE_KINDS.get(action)


def failure_event(kind: str | None) -> TrustEvent | None:
    """Which trust event a failed operation is, by its failure kind."""
    return _FAILURE_EVENTS.get(kind or "")


DAY_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the anti-farming rules read about an agent (stored beside its score)."""

    score: int
    clean_since: float  # the agent's last loss, or its creation
    window_start: float | None  # start of the current 24 h credit window
    credited: int  # points credited in that window


@dataclass(frozen=True, slots=True)
class Credit:
    """The delta actually applied and the ledger after it; `withheld` explains any cut."""

    delta: int
    ledger: Ledger
    withheld: tuple[tuple[str, str], ...] = ()  # (rule, reason)


def credit(
    ledger: Ledger,
    requested: int,
    *,
    now: float,
    repeated: bool,
    rules: CreditRules,
    approval_below: int,
) -> Credit:
    """Apply one requested change under the anti-farming rules (pure).

    A loss always applies in full (clamped at 0) and restarts the clean history.
    A gain earns nothing for a plan digest the agent has been credited for before,
    at most `max_credit_per_day` points in a 24 h window, and never lifts the score
    to `approval_below` or over it before `clean_history_days` without a loss.
    """
    old = ledger.score
    if requested <= 0:
        new = clamp(old + requested)
        clean = now if requested < 0 else ledger.clean_since
        return Credit(new - old, replace(ledger, score=new, clean_since=clean))
    withheld: list[tuple[str, str]] = []
    grant = requested
    if repeated:
        withheld.append(("repeated_plan", "this plan digest has earned credit before"))
        grant = 0
    window, credited = ledger.window_start, ledger.credited
    # A clock that runs backwards keeps the current window: it never opens a new one.
    expired = window is None or now >= window + DAY_SECONDS
    if expired:
        credited = 0
    room = max(0, rules.max_credit_per_day - credited)
    if grant > room:
        withheld.append(
            (
                "daily_cap",
                f"credit is capped at {rules.max_credit_per_day} points per 24 h "
                f"({credited} earned since {_iso(now if expired or window is None else window)})",
            )
        )
        grant = room
    clean_for = now - ledger.clean_since
    needed = rules.clean_history_days * DAY_SECONDS
    if old < approval_below <= old + grant and clean_for < needed:
        withheld.append(
            (
                "clean_history",
                f"rising to {approval_below} or above needs {rules.clean_history_days:g} days "
                f"without a loss (clean since {_iso(ledger.clean_since)}) or an operator",
            )
        )
        grant = max(0, approval_below - 1 - old)
    new = clamp(old + grant)
    # A window opens with the first credit actually granted, never with a success that
    # earned nothing (a repeated plan, a capped rise): one opened early would end early,
    # and a full day's credit just before its end and another just after would be
    # twice the cap within minutes.
    if expired:
        window = now if new > old else None
    after = Ledger(new, ledger.clean_since, window, credited + (new - old))
    return Credit(new - old, after, tuple(withheld))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
