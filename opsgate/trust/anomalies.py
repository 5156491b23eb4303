"""Anomaly detectors: pure, O(1) per event, clock passed in.

An agent's recent activity is summarised in an `Activity` value (counts, an
exponentially weighted baseline, the last few refusal times). `observe()` folds
one event into it and says which detectors fired, with their evidence:

- rate_spike     the current window's count is far above the agent's own baseline
- new_resource   first use of a capability it never used before (after warm-up)
- off_hours      activity outside the configured active hours (UTC)
- probing        a burst of refusals in a short window

Each detector has a cooldown, so one burst is one anomaly, not fifty.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from opsgate.config import AnomalyConfig

BASELINE_WARMUP_WINDOWS = 3


@dataclass(frozen=True, slots=True)
class Activity:
    events: int = 0
    window_start: float = 0.0
    window_count: int = 0
    baseline: float = 0.0  # EWMA of events per window
    baseline_windows: int = 0
    refusals: tuple[float, ...] = ()
    last_fired: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "window_start": self.window_start,
            "window_count": self.window_count,
            "baseline": self.baseline,
            "baseline_windows": self.baseline_windows,
            "refusals": list(self.refusals),
            "last_fired": [list(x) for x in self.last_fired],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Activity:
        return cls(
            events=int(d.get("events", 0)),
            window_start=float(d.get("window_start", 0.0)),
            window_count=int(d.get("window_count", 0)),
            baseline=float(d.get("baseline", 0.0)),
            baseline_windows=int(d.get("baseline_windows", 0)),
            refusals=tuple(float(x) for x in d.get("refusals", ())),
            last_fired=tuple((str(k), float(v)) for k, v in d.get("last_fired", ())),
        )


@dataclass(frozen=True, slots=True)
class Observation:
    at: float
    resource: str  # the capability used
    refused: bool = False
    seen_before: bool = True  # has the agent used this resource before (looked up by the caller)


@dataclass(frozen=True, slots=True)
class Anomaly:
    detector: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _roll(a: Activity, now: float, cfg: AnomalyConfig) -> Activity:
    """Close finished windows into the baseline (empty ones included)."""
    w = cfg.rate_window_seconds
    if a.window_start == 0.0:
        return replace(a, window_start=now - (now % w), window_count=0)
    if now < a.window_start + w:
        return a
    elapsed = int((now - a.window_start) // w)
    alpha = 1 - 0.5 ** (w / cfg.baseline_half_life_seconds)
    n = a.baseline_windows
    # A plain running mean over the first windows, then the EWMA: an agent that
    # has always been busy is compared with its busy self, not with a cold zero.
    baseline = a.baseline + max(alpha, 1.0 / (n + 1)) * (a.window_count - a.baseline)
    idle = elapsed - 1  # windows with no events pull the baseline toward zero
    exact = min(idle, 64)
    for i in range(exact):
        baseline *= 1 - max(alpha, 1.0 / (n + 2 + i))
    if idle > exact:
        baseline *= (1 - alpha) ** min(idle - exact, 100_000)
    return Activity(
        a.events,
        a.window_start + elapsed * w,
        0,
        baseline,
        a.baseline_windows + elapsed,
        a.refusals,
        a.last_fired,
    )


def _cooled(a: Activity, detector: str, now: float, cfg: AnomalyConfig) -> bool:
    for name, at in a.last_fired:
        if name == detector and now - at < cfg.cooldown_seconds:
            return False
    return True


def _fired(a: Activity, detector: str, now: float) -> Activity:
    others = tuple(x for x in a.last_fired if x[0] != detector)
    return replace(a, last_fired=(*others, (detector, now)))


def observe(a: Activity, obs: Observation, cfg: AnomalyConfig) -> tuple[Activity, list[Anomaly]]:
    """Fold one event into the activity summary; return the anomalies it reveals."""
    now = obs.at
    a = _roll(a, now, cfg)
    # One direct construction: dataclasses.replace() costs more than the detectors.
    a = Activity(
        a.events + 1,
        a.window_start,
        a.window_count + 1,
        a.baseline,
        a.baseline_windows,
        a.refusals,
        a.last_fired,
    )
    found: list[Anomaly] = []

    # rate spike against the agent's own baseline
    limit = cfg.rate_factor * max(a.baseline, 1.0)
    if (
        a.baseline_windows >= BASELINE_WARMUP_WINDOWS
        and a.window_count >= cfg.rate_min_events
        and a.window_count > limit
        and _cooled(a, "rate_spike", now, cfg)
    ):
        found.append(
            Anomaly(
                "rate_spike",
                f"{a.window_count} requests in {cfg.rate_window_seconds}s, "
                f"baseline {a.baseline:.1f}",
                {
                    "count": a.window_count,
                    "baseline": round(a.baseline, 2),
                    "limit": round(limit, 2),
                },
            )
        )
        a = _fired(a, "rate_spike", now)

    # first access to a resource never used before, once the agent has a history
    if (
        not obs.seen_before
        and a.events > cfg.new_resource_warmup_events
        and _cooled(a, "new_resource", now, cfg)
    ):
        found.append(
            Anomaly(
                "new_resource",
                f"first use of {obs.resource!r} after {a.events - 1} requests",
                {"resource": obs.resource},
            )
        )
        a = _fired(a, "new_resource", now)

    # outside the configured active hours
    if cfg.active_hours is not None:
        start, end = cfg.active_hours
        hour = datetime.fromtimestamp(now, UTC).hour
        inside = start <= hour < end if start <= end else (hour >= start or hour < end)
        if not inside and _cooled(a, "off_hours", now, cfg):
            found.append(
                Anomaly(
                    "off_hours",
                    f"activity at {hour:02d}h UTC, outside {start:02d}-{end:02d}h",
                    {"hour": hour, "active_hours": [start, end]},
                )
            )
            a = _fired(a, "off_hours", now)

    # a burst of refusals: probing for what is allowed
    if obs.refused:
        horizon = now - cfg.probe_window_seconds
        recent = tuple(t for t in a.refusals if t > horizon)[-(cfg.probe_refusals - 1) :]
        recent = (*recent, now) if cfg.probe_refusals > 1 else (now,)
        a = replace(a, refusals=recent)
        if len(recent) >= cfg.probe_refusals and _cooled(a, "probing", now, cfg):
            found.append(
                Anomaly(
                    "probing",
                    f"{len(recent)} refusals within {cfg.probe_window_seconds}s",
                    {"refusals": len(recent), "window_seconds": cfg.probe_window_seconds},
                )
            )
            a = _fired(a, "probing", now)
    return a, found
