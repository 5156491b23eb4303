"""Trust cannot be farmed: the attempts in tests/data/trust_farming.yaml, run as data.

The rules under test: a plan digest earns credit once; positive credit per agent is
capped per 24 h; credit lifts an agent to `approval_below` or over it only after
`clean_history_days` without a loss, or an operator's audited `trust set`. The clock
is injected; every agent is registered at the case's start time.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DATA, DEPLOY_SCOPE, RELEASE, RecordingExecutor, audit_events, stored_trust
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.operations.base import Operation
from opsgate.trust.scoring import TrustEvent

CASES = yaml.safe_load((DATA / "trust_farming.yaml").read_text())
DEFAULTS = CASES["defaults"]
T0 = datetime(2030, 1, 7, 10, 0, tzinfo=UTC).timestamp()  # a Monday
APPROVERS = ("john@company.com", "jane@company.com")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    m = re.fullmatch(r"(-?\d+)([smhd])", str(text))
    assert m, f"bad duration {text!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


class Farm:
    """One case's gate, cast and clock."""

    def __init__(self, state: Path, case: dict[str, Any]) -> None:
        start = case.get("start")
        self.t = T0 if start is None else datetime.fromisoformat(start).timestamp()
        trust = {"approvers": ["sre-team@company.com"], **copy.deepcopy(case.get("config", {}))}
        path = DATA / "approvals" / "trust_groups.yaml"
        self.gate = opsgate.Gate.open(state, policies=path, trust=trust)
        self.gate.register_executor("deploy", RecordingExecutor())
        score = case.get("score", DEFAULTS["score"])
        self.cast = {
            "supervisor": self.gate.register_agent(
                "supervisor", DEPLOY_SCOPE, sponsor="lead@company.com", trust_score=920, now=self.t
            )
        }
        self.cast["agent"] = self.cast["supervisor"].delegate(
            name="agent", capabilities=DEPLOY_SCOPE, trust_score=score, now=self.t
        )
        self.cast["child"] = self.cast["agent"].delegate(
            name="child", capabilities=DEPLOY_SCOPE, trust_score=score, now=self.t
        )

    def token(self, who: str) -> str:
        return self.gate.credential_manager.issue_credential(
            agent_id=self.cast[who].did, scope=DEPLOY_SCOPE, now=self.t
        ).token

    def production(self, who: str) -> str:
        decision = self.gate.authorize(self.token(who), "deploy:production/app-web", now=self.t)
        return decision.effect

    def withheld(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for change in self.gate.trust.history(self.cast["agent"].did):
            counts.update(w["rule"] for w in change.withheld)
        return dict(counts)


def _fill(value: Any, i: int) -> Any:
    return value.replace("{i}", str(i)) if isinstance(value, str) else value


def run_case(case: dict[str, Any], state: Path) -> None:
    """Run one case; an expectation that does not hold raises AssertionError."""
    farm = Farm(state, case)
    try:
        for n, step in enumerate(case["steps"]):
            where = f"{case['name']}: step {n}"
            who = step.get("as", "agent")
            every = seconds(step.get("every", DEFAULTS["every"]))
            for i in range(step.get("repeat", 1)):
                if "wait" in step:
                    farm.t += seconds(step["wait"])
                    continue
                if "check" in step:
                    _check(farm, step["check"], where)
                    continue
                farm.t += every
                _act(farm, step, who, i, where)
    finally:
        farm.gate.close()


def _act(farm: Farm, step: dict[str, Any], who: str, i: int, where: str) -> None:
    gate, t = farm.gate, farm.t
    if "execute" in step or "dry_run" in step:
        spec = {k: _fill(v, i) for k, v in (step.get("execute") or step["dry_run"]).items()}
        resource = spec.pop("resource")
        op = Operation("deploy", resource, {**RELEASE, **spec}, dry_run="dry_run" in step)
        out = gate.execute(farm.token(who), op, now=t)
        assert out.status == ("dry_run" if op.dry_run else "succeeded"), where
    elif "authorize" in step:
        assert gate.authorize(farm.token(who), step["authorize"], now=t).effect != "deny", where
    elif "loss" in step:
        gate.trust.record(farm.cast[who].did, TrustEvent(step["loss"]), reason="scripted", now=t)
    elif "set" in step:
        s = step["set"]
        gate.set_trust_score(farm.cast[who].name, s["score"], reason=s["reason"], by=s["by"], now=t)
    else:
        raise AssertionError(f"{where}: unknown step {sorted(step)}")


def _check(farm: Farm, expect: dict[str, Any], where: str) -> None:
    for who, key in (("agent", "score"), ("child", "child"), ("supervisor", "supervisor")):
        if key in expect:
            got = stored_trust(farm.gate, farm.cast[who].did)
            assert got == expect[key], f"{where}: {who} scored {got}, expected {expect[key]}"
    for who, key in (("agent", "production"), ("child", "child_production")):
        if key in expect:
            got = farm.production(who)
            assert got == expect[key], f"{where}: {who} got {got} for production"
    if "withheld" in expect:
        got = farm.withheld()
        assert got == expect["withheld"], f"{where}: withheld {got}"


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_farming_case(case: dict[str, Any], tmp_path: Path) -> None:
    run_case(case, tmp_path / "state")


@pytest.mark.parametrize(
    ("mutate", "what"),
    [
        (lambda c: c["steps"][-1]["check"].update(score=710), "scored"),
        (lambda c: c["steps"][-1]["check"].update(production="allow"), "production"),
        (lambda c: c["steps"][-1]["check"].update(withheld={"repeated_plan": 18}), "withheld"),
    ],
)
def test_a_wrong_expectation_fails_the_runner(mutate: Any, what: str, tmp_path: Path) -> None:
    case = copy.deepcopy(CASES["cases"][0])
    mutate(case)
    with pytest.raises(AssertionError, match=what):
        run_case(case, tmp_path / "state")


# -- beyond the table -----------------------------------------------------------------------


def _world(state: Path, **config: Any) -> Farm:
    return Farm(state, {"config": config})


def test_every_withheld_point_is_explained_in_history_and_the_cli(tmp_path: Path) -> None:
    farm = _world(tmp_path / "state")
    try:
        for i in range(7):
            farm.t += 60
            version = "1.0" if i < 2 else f"2.{i}"
            farm.gate.execute(farm.token("agent"), _deploy(version), now=farm.t)
        history = [
            c for c in farm.gate.trust.history(farm.cast["agent"].did) if c.cause != "initial"
        ]
        assert [(c.cause, c.delta, c.requested_delta) for c in history] == [
            ("success", 5, None),
            ("success", 0, 5),  # the same plan again
            ("success", 5, None),
            ("success", 5, None),
            ("success", 5, None),
            ("success", 5, None),
            ("success", 0, 5),  # over the daily cap
        ]
        assert [w["rule"] for w in history[1].withheld] == ["repeated_plan"]
        assert [w["rule"] for w in history[6].withheld] == ["daily_cap"]
        assert all(w["reason"] for c in history for w in c.withheld)
        outcome = audit_events(farm.gate, "operation.outcome")[1]["trust"]
        assert outcome["withheld"][0]["rule"] == "repeated_plan"
    finally:
        farm.gate.close()
    runner = CliRunner()
    base = ["trust", "history", "agent", "--state-dir", str(tmp_path / "state")]
    listed = runner.invoke(app, [*base, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [w["rule"] for r in rows for w in r["withheld"]] == ["repeated_plan", "daily_cap"]
    shown = runner.invoke(app, base, env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "withheld [repeated_plan]" in shown.output and "withheld [daily_cap]" in shown.output
    assert "+0 (of +5)" in shown.output


def _deploy(version: str, resource: str = "staging/app-web") -> Operation:
    return Operation("deploy", resource, {**RELEASE, "version": version})


def test_the_daily_cap_holds_under_concurrent_successes(
    tmp_path: Path, database_url: str | None
) -> None:
    """Sixteen callers at once on two gates sharing one store: the cap is read and
    charged under the agent's row lock, so it holds exactly."""
    one = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    # A replica shares the state dir (its pin and keys) as well as the database.
    two = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    try:
        sup = one.register_agent(
            "supervisor", DEPLOY_SCOPE, sponsor="lead@company.com", trust_score=920, now=T0
        )
        agent = sup.delegate(name="agent", capabilities=DEPLOY_SCOPE, trust_score=700, now=T0)
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            gate = one if n % 2 else two
            barrier.wait()
            try:
                for i in range(4):
                    gate.trust.record(agent.did, TrustEvent.SUCCESS, reason=f"{n}.{i}", now=T0 + i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert errors == []
        assert stored_trust(one, agent.did) == 725
        history = [c for c in one.trust.history(agent.did) if c.cause == "success"]
        assert len(history) == 64 and sum(c.delta for c in history) == 25
    finally:
        two.close()
        one.close()


def test_operator_set_is_audited_with_who_and_why(tmp_path: Path) -> None:
    state = tmp_path / "state"
    farm = _world(state)
    farm.gate.close()
    runner = CliRunner()
    base = ["--state-dir", str(state)]
    ok = runner.invoke(
        app, ["trust", "set", "agent", "820", "--reason", "reviewed", "--by", "jane", *base]
    )
    assert ok.exit_code == 0, ok.output
    assert "score 820 (+120)" in ok.output
    for args, code in [
        (["trust", "set", "agent", "1001", "--reason", "r"], "trust_score_invalid"),
        (["trust", "set", "agent", "900", "--reason", "  "], "reason_required"),
        (["trust", "set", "nobody", "900", "--reason", "r"], "agent_not_found"),
    ]:
        refused = runner.invoke(app, [*args, *base])
        assert refused.exit_code == 1, refused.output
        assert f"[{code}]" in refused.output
        if code == "trust_score_invalid":  # the number itself, not its type
            assert "got 1001" in refused.output, refused.output
    assert runner.invoke(app, ["trust", "set", "agent", "900", *base]).exit_code == 2
    gate = opsgate.Gate.open(state)
    try:
        assert gate.trust_score(farm.cast["agent"].did) == 820
        events = audit_events(gate, "trust.set")
        assert len(events) == 1
        event = events[0]
        assert event["actor"] == "operator" and event["agent"] == farm.cast["agent"].did
        assert event["trust"]["by"] == "jane" and event["trust"]["reason"] == "reviewed"
        assert (event["trust"]["cause"], event["trust"]["delta"]) == ("operator", 120)
        last = gate.trust.history(farm.cast["agent"].did)[-1]
        assert (last.cause, last.score, last.by) == ("operator", 820, "jane")
        assert gate.audit.verify().ok
        with pytest.raises(opsgate.AgentError) as exc:
            gate.trust.record(farm.cast["agent"].did, TrustEvent.OPERATOR, reason="sneaky", now=T0)
        assert exc.value.code == "trust_event_invalid"
    finally:
        gate.close()


def test_an_operator_lowering_below_the_suspension_line_suspends(tmp_path: Path) -> None:
    farm = _world(tmp_path / "state")
    try:
        farm.gate.set_trust_score("agent", 400, reason="incident", by="jane", now=T0 + 60)
        assert farm.cast["agent"].status == "suspended"
        assert farm.cast["child"].status == "suspended"
    finally:
        farm.gate.close()


def test_a_success_that_earned_nothing_opens_no_credit_window() -> None:
    """The 24 h window opens with the first point granted: a repeated plan earning
    nothing at 00:00 must not start a window that ends at 24:00, which would let a
    day's credit at 23:59 and another at 24:01 (twice the cap within minutes)."""
    from opsgate.config import CreditRules
    from opsgate.trust.scoring import DAY_SECONDS, Ledger, credit

    rules = CreditRules(max_credit_per_day=25, clean_history_days=0)
    ledger = Ledger(score=600, clean_since=0.0, window_start=None, credited=0)
    nothing = credit(ledger, 10, now=1000.0, repeated=True, rules=rules, approval_below=900)
    assert nothing.delta == 0 and nothing.ledger.window_start is None
    late = 1000.0 + DAY_SECONDS - 60
    earned = 0
    ledger = nothing.ledger
    for i in range(5):
        got = credit(ledger, 10, now=late + i, repeated=False, rules=rules, approval_below=900)
        earned += got.delta
        ledger = got.ledger
    assert earned == 25 and ledger.window_start == late
    # Two minutes later, past the end a window opened at 1000.0 would have had:
    after = credit(ledger, 10, now=late + 120, repeated=False, rules=rules, approval_below=900)
    assert after.delta == 0 and [w[0] for w in after.withheld] == ["daily_cap"]
    # A full day after the first point, a new window.
    next_day = credit(
        ledger, 10, now=late + DAY_SECONDS, repeated=False, rules=rules, approval_below=900
    )
    assert next_day.delta == 10 and next_day.ledger.window_start == late + DAY_SECONDS
    # A requested rise above the cap in a fresh window is explained, not a crash.
    big = credit(
        Ledger(600, 0.0, None, 0), 40, now=5.0, repeated=False, rules=rules, approval_below=900
    )
    assert big.delta == 25 and [w[0] for w in big.withheld] == ["daily_cap"]
