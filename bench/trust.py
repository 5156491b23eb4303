"""`python -m bench.trust`: what scoring and anomaly detection add to one operation.

Measured in one run:
- the pure core per event (detectors + score arithmetic) for an agent with 1,000 and
  with 1,000,000 past events, and 10 vs 100,000 resources seen before: O(1);
- the same through the engine on the gate's path (`TrustEngine.observe` +
  `effective`), for agents with short and long histories;
- the store-side score update, which rides in the transaction of the outcome's
  audit record (one `UPDATE ... RETURNING` more in a transaction that is written
  and fsynced anyway), measured as the difference between the two appends.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import opsgate
from bench._util import Table, fmt_us, interleaved, progress, stats, temp_dir
from opsgate.audit.writer import Unit
from opsgate.config import AnomalyConfig, TrustDeltas
from opsgate.state import AgentState
from opsgate.store import schema
from opsgate.trust.anomalies import Activity, Observation, observe
from opsgate.trust.scoring import TrustEvent, apply

TARGET_US = 5.0


def pure_core(n: int) -> dict[str, list[int]]:
    cfg, deltas = AnomalyConfig(), TrustDeltas()
    t0 = 1_800_000_000.0
    states = {
        "1k past events, 10 resources": (
            Activity(events=1_000, window_start=t0, baseline=3.0, baseline_windows=200),
            {f"deploy:staging/app-{i}" for i in range(10)},
        ),
        "1M past events, 100k resources": (
            Activity(events=1_000_000, window_start=t0, baseline=3.0, baseline_windows=300_000),
            {f"deploy:staging/app-{i}" for i in range(100_000)},
        ),
    }
    live: dict[str, tuple[Activity, int]] = {k: (v[0], 500) for k, v in states.items()}

    def make(key: str) -> Callable[[int], None]:
        seen = states[key][1]

        def step(i: int) -> None:
            resource = f"deploy:staging/app-{i % 10}"
            act, score = live[key]
            act, _ = observe(
                act,
                Observation(t0 + i * 20.0, resource, refused=False, seen_before=resource in seen),
                cfg,
            )
            live[key] = (act, apply(score, TrustEvent.SUCCESS, deltas))

        return step

    return interleaved({k: make(k) for k in states}, n)


def engine_path(n: int, quick: bool) -> tuple[dict[str, list[int]], float, float]:
    with temp_dir("opsgate-bench-trust-") as tmp:
        gate = opsgate.Gate.open(tmp / "state")
        sup = gate.register_agent(
            "sup", ["deploy:staging"], sponsor="ops@company.com", trust_score=900
        )
        short = sup.delegate(name="short-history", capabilities=["deploy:staging"])
        long = sup.delegate(name="long-history", capabilities=["deploy:staging"])
        past = 10_000 if quick else 1_000_000
        progress(f"giving long-history {past:,} past events")
        t0 = time.time() - 3600
        gate.trust._activity[long.did] = Activity(
            events=past, window_start=t0 - t0 % 60, baseline=3.0, baseline_windows=past // 3
        )
        gate.trust._activity[short.did] = Activity(
            events=1_000, window_start=t0 - t0 % 60, baseline=3.0, baseline_windows=300
        )
        with gate.store.write() as conn:
            conn.execute(
                schema.trust_resources.insert(),
                [
                    {"agent_did": long.did, "resource": f"deploy:staging/app-{i}", "first_seen": t0}
                    for i in range(min(past, 100_000))
                ],
            )
        states: dict[str, AgentState] = {}
        for a in (short, long):
            found = gate.state.agent(a.did)
            assert found is not None
            states[a.name] = found
            gate.trust.observe(found, "deploy:staging/app-1", refused=False, now=t0)

        def make(name: str) -> Callable[[int], None]:
            st = states[name]

            def step(i: int) -> None:
                gate.trust.effective(st)
                gate.trust.observe(st, "deploy:staging/app-1", refused=False, now=t0 + 0.001 * i)

            return step

        samples = interleaved({f"engine, {k}": make(k) for k in states}, n)

        m = 1_000 if quick else 3_000
        progress("outcome append with and without the score update")
        did = short.did

        def plain(i: int) -> None:
            gate.audit.append("operation.outcome", actor=did, outcome="succeeded")

        def scored(i: int) -> None:
            gate.audit.commit(
                Unit(
                    "operation.outcome",
                    {"outcome": "succeeded"},
                    actor=did,
                    change=gate.trust.score_change(did, TrustEvent.SUCCESS, reason="ok", now=t0),
                )
            )

        both = interleaved({"plain": plain, "scored": scored}, m, block=50)
        gate.close()
    return samples, stats(both["plain"]).p50, stats(both["scored"]).p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    n = 5_000 if args.quick else 50_000
    progress("pure core")
    core = pure_core(n)
    progress("engine path")
    engine, plain, scored = engine_path(2_000 if args.quick else 20_000, args.quick)

    table = Table("what", "p50", "p95", "target", "ok?")
    for name, samples in {**{f"pure core, {k}": v for k, v in core.items()}, **engine}.items():
        s = stats(samples)
        table.row(
            name,
            fmt_us(s.p50),
            fmt_us(s.p95),
            f"<= {fmt_us(TARGET_US)}",
            "yes" if s.p50 <= TARGET_US else "NO",
        )
    table.rule()
    table.row("outcome audit append (fsync)", fmt_us(plain), "", "", "")
    table.row(
        "  + score UPDATE in the same txn",
        fmt_us(scored),
        "",
        f"+{fmt_us(max(0.0, scored - plain))}",
        "",
    )
    table.note(
        "The score update is persisted inside the outcome record's transaction, so it "
        "shares that fsync; its extra cost is one indexed UPDATE."
    )
    table.print()


if __name__ == "__main__":
    main()
