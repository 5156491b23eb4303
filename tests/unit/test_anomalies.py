"""Anomaly detectors: each fires on its pattern, stays quiet on normal traffic, and
fires once per burst (cooldown). First as the pure `observe` function over scripted
streams, then through the gate, where an anomaly is an `unusual_access` trust change.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import deploy, open_world

import opsgate
from opsgate.config import AnomalyConfig
from opsgate.trust.anomalies import Activity, Anomaly, Observation, observe

MONDAY = datetime(2030, 1, 7, tzinfo=UTC)  # 00:00 UTC
DEFAULT = AnomalyConfig()


def at(day: int = 0, hour: int = 10, minute: int = 0, second: float = 0) -> float:
    return (MONDAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)).timestamp()


@dataclass
class Event:
    t: float
    resource: str = "deploy:staging/app-web"
    refused: bool = False


def run(
    events: Iterable[Event],
    cfg: AnomalyConfig = DEFAULT,
    activity: Activity | None = None,
    seen: set[str] | None = None,
) -> tuple[Activity, list[tuple[int, Anomaly]]]:
    """Fold a stream through observe(), tracking seen resources as the gate does
    (pass the same `seen` set to continue a stream)."""
    a = activity or Activity()
    seen = set() if seen is None else seen
    fired: list[tuple[int, Anomaly]] = []
    for i, e in enumerate(events):
        a, found = observe(a, Observation(e.t, e.resource, e.refused, e.resource in seen), cfg)
        seen.add(e.resource)
        fired.extend((i, x) for x in found)
    return a, fired


def steady(start: float, minutes: int, per_minute: int, **kw: Any) -> list[Event]:
    step = 60.0 / per_minute
    return [
        Event(start + m * 60 + k * step, **kw) for m in range(minutes) for k in range(per_minute)
    ]


def detectors(fired: list[tuple[int, Anomaly]]) -> list[str]:
    return [x.detector for _, x in fired]


# -- rate spike -------------------------------------------------------------------------------


def test_rate_spike_fires_on_a_burst_far_above_the_agents_own_baseline() -> None:
    seen: set[str] = set()
    normal = steady(at(hour=8), 180, 4)  # three hours at 4 a minute
    a, fired = run(normal, seen=seen)
    assert fired == []
    burst = [Event(at(hour=11, minute=0, second=i * 0.5)) for i in range(100)]
    a, fired = run(burst, activity=a, seen=seen)
    assert detectors(fired) == ["rate_spike"]  # one burst, one anomaly
    index, spike = fired[0]
    assert spike.evidence["count"] == index + 1 >= DEFAULT.rate_min_events
    assert spike.evidence["count"] > spike.evidence["limit"]
    assert 2 < spike.evidence["baseline"] <= 4.5


def test_rate_spike_is_relative_to_each_agents_own_baseline() -> None:
    """60 a minute is a spike for a 4-a-minute agent, normal for a 60-a-minute one."""
    seen: set[str] = set()
    busy, _ = run(steady(at(hour=0), 8 * 60, 60), seen=seen)  # eight hours at 60 a minute
    _, fired = run(steady(at(hour=8), 10, 60), activity=busy, seen=seen)
    assert detectors(fired) == []
    quiet, _ = run(steady(at(hour=0), 8 * 60, 4), seen=seen)
    _, fired = run(steady(at(hour=8), 10, 60), activity=quiet, seen=seen)
    assert detectors(fired) == ["rate_spike", "rate_spike"]  # ten minutes: cooldown is 300 s
    assert fired[1][1].evidence["baseline"] < 20


def test_rate_spike_needs_a_warmed_up_baseline() -> None:
    _, fired = run([Event(at(second=i)) for i in range(59)])  # a first, busy minute
    assert fired == []


def test_steady_busy_traffic_from_the_start_is_not_a_spike() -> None:
    """An agent that has always made 40 requests a minute never deviates from itself."""
    _, fired = run(steady(at(hour=8), 120, 40))
    assert detectors(fired) == [], [x.reason for _, x in fired]


# -- new resource -----------------------------------------------------------------------------


def test_new_resource_fires_after_warm_up_only() -> None:
    warmup = DEFAULT.new_resource_warmup_events
    known = ["deploy:staging/app-web", "deploy:staging/app-api", "read:monitoring/web"]
    seen: set[str] = set()
    early = [Event(at(minute=i), known[i % 3]) for i in range(10)]
    a, fired = run(early, seen=seen)
    assert fired == []  # every resource is new at first: that is not an anomaly
    assert seen == set(known)
    a, fired = run(
        [Event(at(hour=11, minute=i), known[i % 3]) for i in range(warmup)], activity=a, seen=seen
    )
    assert fired == []
    a, found = observe(
        a,
        Observation(at(hour=12), "read:secrets/prod/db", False, "read:secrets/prod/db" in seen),
        DEFAULT,
    )
    assert [x.detector for x in found] == ["new_resource"]
    assert found[0].evidence == {"resource": "read:secrets/prod/db"}
    # The second use is not new any more.
    _, again = observe(
        a, Observation(at(hour=12, minute=30), "read:secrets/prod/db", False, True), DEFAULT
    )
    assert again == []


def test_a_sweep_of_new_resources_is_one_anomaly_per_cooldown() -> None:
    history = [Event(at(hour=8, minute=i)) for i in range(DEFAULT.new_resource_warmup_events + 5)]
    sweep = [Event(at(hour=10, second=i * 5), f"read:secrets/app{i}") for i in range(20)]
    later = [Event(at(hour=11), "read:secrets/other")]
    _, fired = run(history + sweep + later)
    assert detectors(fired) == ["new_resource", "new_resource"]
    assert fired[0][1].evidence["resource"] == "read:secrets/app0"
    assert fired[1][1].evidence["resource"] == "read:secrets/other"


# -- off hours --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "hour", "fires"),
    [
        ((8, 18), 10, False),
        ((8, 18), 8, False),
        ((8, 18), 17, False),
        ((8, 18), 18, True),  # the end is exclusive
        ((8, 18), 3, True),
        ((22, 6), 23, False),  # a window across midnight
        ((22, 6), 2, False),
        ((22, 6), 12, True),
        ((22, 6), 6, True),
    ],
)
def test_off_hours(window: tuple[int, int], hour: int, fires: bool) -> None:
    cfg = AnomalyConfig(active_hours=window)
    _, found = observe(Activity(), Observation(at(hour=hour, minute=30), "deploy:staging/x"), cfg)
    assert [x.detector for x in found] == (["off_hours"] if fires else [])
    if fires:
        assert found[0].evidence == {"hour": hour, "active_hours": list(window)}


def test_off_hours_activity_fires_once_per_cooldown() -> None:
    cfg = AnomalyConfig(active_hours=(8, 18))
    night = [Event(at(hour=2, second=i * 10)) for i in range(60)]  # ten minutes at night
    _, fired = run(night, cfg)
    assert detectors(fired) == ["off_hours"] * 2  # at 02:00 and after the 300 s cooldown
    assert fired[1][0] == 30


def test_no_active_hours_configured_means_no_off_hours_anomaly() -> None:
    _, fired = run([Event(at(hour=h)) for h in range(24)])
    assert fired == []


@pytest.mark.parametrize("window", [[8, 25], [-1, 6], [24, 6], [8]])
def test_active_hours_out_of_range_is_a_config_error(tmp_path: Path, window: list[int]) -> None:
    """Out-of-range values are load errors, never silently reinterpreted."""
    with pytest.raises(opsgate.ConfigError) as exc:
        opsgate.Gate.open(tmp_path / "state", trust={"anomalies": {"active_hours": window}})
    assert exc.value.code == "config_invalid"


# -- probing ----------------------------------------------------------------------------------


def test_probing_fires_on_a_burst_of_refusals() -> None:
    n = DEFAULT.probe_refusals
    _, fired = run([Event(at(second=i * 5), refused=True) for i in range(n - 1)])
    assert fired == []
    _, fired = run([Event(at(second=i * 5), refused=True) for i in range(n)])
    assert detectors(fired) == ["probing"]
    assert fired[0][1].evidence == {"refusals": n, "window_seconds": DEFAULT.probe_window_seconds}


def test_refusals_spread_out_are_not_probing() -> None:
    spaced = [Event(at(minute=i * 2), refused=True) for i in range(30)]
    _, fired = run(spaced)
    assert fired == []


def test_refusals_mixed_with_successes_still_count_within_the_window() -> None:
    events = []
    for i in range(DEFAULT.probe_refusals):
        events.append(Event(at(second=i * 8), refused=True))
        events.append(Event(at(second=i * 8 + 1)))
    _, fired = run(events)
    assert detectors(fired) == ["probing"]


def test_one_probing_burst_is_one_anomaly_then_a_later_burst_fires_again() -> None:
    burst = [Event(at(second=i), refused=True) for i in range(50)]
    later = [Event(at(minute=10, second=i), refused=True) for i in range(DEFAULT.probe_refusals)]
    _, fired = run(burst + later)
    assert detectors(fired) == ["probing", "probing"]
    assert fired[0][0] == DEFAULT.probe_refusals - 1
    assert fired[1][0] == 50 + DEFAULT.probe_refusals - 1


# -- false positives, purity ------------------------------------------------------------------


def test_long_normal_stream_raises_no_anomaly() -> None:
    """5,000 requests over five working days, a few known resources, inside active hours."""
    cfg = AnomalyConfig(active_hours=(7, 20))
    rng = random.Random(20300107)
    resources = [
        "deploy:staging/app-web",
        "deploy:production/app-web",
        "read:monitoring/app-web",
        "read:secrets/app-web/db",
    ]
    events: list[Event] = []
    for day in range(5):
        start = at(day=day, hour=8)
        for _ in range(1000):  # ~1000 a day between 08:00 and 18:00, randomly spread
            t = start + rng.uniform(0, 10 * 3600)
            events.append(Event(t, rng.choice(resources), refused=rng.random() < 0.01))
    events.sort(key=lambda e: e.t)
    assert len(events) == 5000
    a, fired = run(events, cfg)
    assert fired == [], [(i, x.reason) for i, x in fired[:5]]
    assert a.events == 5000


def test_observe_is_pure() -> None:
    a, _ = run(steady(at(hour=8), 30, 3))
    obs = Observation(at(hour=9), "read:secrets/x", True, False)
    snapshot = a.to_dict()
    first = observe(a, obs, DEFAULT)
    second = observe(a, obs, DEFAULT)
    assert first == second
    assert a.to_dict() == snapshot
    assert Activity.from_dict(first[0].to_dict()) == first[0]


# -- through the gate -------------------------------------------------------------------------


def _world(tmp_path: Path, trust_score: int = 1000, **trust: Any) -> Any:
    return open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        supervisor_trust=trust_score,
        trust=trust or None,
    )


def _unusual(gate: opsgate.Gate, did: str) -> list[Any]:
    return [c for c in gate.trust.history(did) if c.cause == "unusual_access"]


def test_probing_through_the_gate_costs_unusual_access(tmp_path: Path) -> None:
    w = _world(tmp_path)
    try:
        t = at(hour=10)
        token = w.credential(scope=["deploy:staging"], now=t)
        for i in range(DEFAULT.probe_refusals):
            decision = w.gate.authorize(token, f"deploy:production/app{i}", now=t + i * 5)
            assert decision.effect == "deny"
        unusual = _unusual(w.gate, w.agent.did)
        assert len(unusual) == 1
        assert unusual[0].evidence["detector"] == "probing"
        assert unusual[0].delta == -50
        n = DEFAULT.probe_refusals
        assert w.agent.trust_score == 1000 - 75 * n - 50
        # More refusals inside the cooldown cost the violations, not another anomaly.
        w.gate.authorize(token, "deploy:production/more", now=t + 30)
        assert len(_unusual(w.gate, w.agent.did)) == 1
    finally:
        w.gate.close()


def test_first_access_to_a_new_resource_through_the_gate(tmp_path: Path) -> None:
    w = _world(tmp_path)
    try:
        t = at(hour=9)
        token = w.credential(scope=["deploy:staging"], now=t)
        for i in range(DEFAULT.new_resource_warmup_events + 1):
            assert w.gate.execute(token, deploy("staging/app-web"), now=t + i).ok
        assert _unusual(w.gate, w.agent.did) == []
        assert w.gate.execute(token, deploy("staging/payments"), now=t + 100).ok
        unusual = _unusual(w.gate, w.agent.did)
        assert [c.evidence["detector"] for c in unusual] == ["new_resource"]
        assert unusual[0].evidence["resource"] == "deploy:staging/payments"
        assert unusual[0].operation == "deploy:staging/payments"
        assert w.gate.execute(token, deploy("staging/payments"), now=t + 101).ok
        assert len(_unusual(w.gate, w.agent.did)) == 1
    finally:
        w.gate.close()


def test_off_hours_through_the_gate(tmp_path: Path) -> None:
    w = _world(tmp_path, trust_score=920, anomalies={"active_hours": [8, 18]})
    try:
        day = w.credential(scope=["deploy:staging"], now=at(hour=10))
        assert w.gate.execute(day, deploy("staging/app-web"), now=at(hour=10)).ok
        assert _unusual(w.gate, w.agent.did) == []
        night = w.credential(scope=["deploy:staging"], now=at(hour=3))
        # A new release (the same plan again would earn no credit).
        assert w.gate.execute(night, deploy("staging/app-web", version="2.5"), now=at(hour=3)).ok
        unusual = _unusual(w.gate, w.agent.did)
        assert [c.evidence["detector"] for c in unusual] == ["off_hours"]
        assert unusual[0].evidence["hour"] == 3
        assert w.agent.trust_score == 920 + 5 + 5 - 50
    finally:
        w.gate.close()


def test_rate_spike_through_the_gate(tmp_path: Path) -> None:
    w = _world(tmp_path)
    try:
        start = at(hour=9)
        token = w.credential(scope=["deploy:staging"], now=start)
        for m in range(5):  # a quiet baseline: one request a minute
            w.gate.authorize(token, "deploy:staging/app-web", now=start + m * 60)
        assert _unusual(w.gate, w.agent.did) == []
        burst = start + 6 * 60
        for i in range(DEFAULT.rate_min_events + 10):
            w.gate.authorize(token, "deploy:staging/app-web", now=burst + i)
        unusual = _unusual(w.gate, w.agent.did)
        assert [c.evidence["detector"] for c in unusual] == ["rate_spike"]
    finally:
        w.gate.close()


def test_normal_work_through_the_gate_raises_no_anomaly(tmp_path: Path) -> None:
    w = _world(tmp_path, trust_score=900, anomalies={"active_hours": [7, 20]})
    try:
        rng = random.Random(7)
        apps = ["staging/app-web", "staging/app-api", "staging/worker"]
        n = 0
        for day in range(3):
            token = w.credential(scope=["deploy:staging"], now=at(day=day, hour=9))
            times = sorted(at(day=day, hour=9) + rng.uniform(0, 800) for _ in range(40))
            for t in times:
                release = deploy(rng.choice(apps), version=f"1.{n}")
                assert w.gate.execute(token, release, now=t).ok
                n += 1
        assert _unusual(w.gate, w.agent.did) == []
        # Nothing lost; the gains are the daily credit cap of each of the three days.
        assert w.agent.trust_score == 900 + 3 * 25
        assert w.executor.count == n == 120
    finally:
        w.gate.close()


def test_the_resources_an_agent_chooses_do_not_grow_the_gates_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent names any path under its scope: each new one stayed in every replica's
    memory for good. Memory keeps a bounded shortcut; the database says what is new."""
    monkeypatch.setattr("opsgate.trust.engine.SEEN_PER_AGENT", 3, raising=False)
    w = _world(tmp_path, anomalies={"new_resource_warmup_events": 0, "cooldown_seconds": 0})
    try:
        state = w.gate.agents.state(w.agent.did)
        t = at(hour=9)
        fired = [
            w.gate.trust.observe(state, f"deploy:staging/app-{i}", refused=False, now=t + i)
            for i in range(10)
        ]
        assert all(len(f) == 1 for f in fired)  # each a first access
        assert len(w.gate.trust._seen[w.agent.did]) <= 3
        # Beyond the bound, a resource used before is still known (the database says so).
        assert w.gate.trust.observe(state, "deploy:staging/app-9", refused=False, now=t + 20) == []
    finally:
        w.gate.close()
