"""Trust scores as pure functions: event kinds, their deltas, clamping, effective trust."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from opsgate.config import TrustDeltas

MIN_SCORE, MAX_SCORE = 0, 1000


class TrustEvent(StrEnum):
    SUCCESS = "success"
    FAILED_DEPLOYMENT = "failed_deployment"
    FAILED_MIGRATION = "failed_migration"
    POLICY_VIOLATION = "policy_violation"
    UNUSUAL_ACCESS = "unusual_access"
    CREDENTIAL_MISUSE = "credential_misuse"


def delta_for(kind: TrustEvent, deltas: TrustDeltas) -> int:
    return int(getattr(deltas, kind.value))


def clamp(score: int) -> int:
    return MIN_SCORE if score < MIN_SCORE else MAX_SCORE if score > MAX_SCORE else score


def apply(score: int, kind: TrustEvent, deltas: TrustDeltas) -> int:
    return clamp(score + delta_for(kind, deltas))


def effective(scores: Iterable[int]) -> int:
    """An agent is trusted no more than any agent above it: min over its chain."""
    return min(scores)


def failure_event(failure_kind: str | None) -> TrustEvent | None:
    """Which trust event a failed operation is, by its executor's failure kind."""
    return {
        "deployment": TrustEvent.FAILED_DEPLOYMENT,
        "migration": TrustEvent.FAILED_MIGRATION,
    }.get(failure_kind or "")
