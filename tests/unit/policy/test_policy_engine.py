"""Decisions: combining, approval requirements, fail-closed errors, the action index."""

from __future__ import annotations

import threading
from dataclasses import FrozenInstanceError
from types import MappingProxyType

import pytest

from opsgate.decision import Decision
from opsgate.errors import PolicyError
from opsgate.policy import NO_MATCH_REASON, PolicyRequest, PolicySet, parse_policies

POLICIES = """
policies:
  - name: prod-deploys
    rules:
      - condition: "action == 'deploy' and environment == 'production'"
        action: require_approval
        approvers: [sre-team@company.com]
        expires_in: 2h
        description: production deploys need SRE approval
  - name: low-trust
    rules:
      - condition: "agent.trust_score < 800 and environment == 'production'"
        action: require_approval
        approvers: [security@company.com, john@company.com]
        min_approvals: 2
        expires_in: 30m
  - name: guards
    rules:
      - condition: "action == 'scale' and params.replicas > 10"
        action: deny
        description: too many replicas
      - condition: "action == 'restart' and params.count < 3"
        action: allow
        description: few restarts
      - condition: "action == 'deploy' and destructive"
        action: deny
groups:
  sre-team@company.com: [john@company.com, jane@company.com]
"""


@pytest.fixture(scope="module")
def ps() -> PolicySet:
    return parse_policies(POLICIES, "test.yaml")


def req(action: str = "deploy", **kw: object) -> PolicyRequest:
    kw.setdefault("resource", "production/app-web")
    kw.setdefault("agent_trust_score", 920)
    return PolicyRequest(action=action, **kw)  # type: ignore[arg-type]


def test_no_match_allows(ps: PolicySet) -> None:
    d = ps.decide(req("read", resource="monitoring/x"))
    assert d.effect == "allow" and d.reasons == (NO_MATCH_REASON,)
    assert d.matched == () and d.errors == () and d.requirements == ()


def test_empty_policy_set_allows_everything() -> None:
    empty = PolicySet.empty()
    assert len(empty) == 0
    for action in ("deploy", "delete", "anything"):
        d = empty.decide(
            req(action, environment="production", destructive=True, agent_trust_score=0)
        )
        assert d.effect == "allow"


def test_single_requirement(ps: PolicySet) -> None:
    d = ps.decide(req(environment="production"))
    assert d.effect == "require_approval"
    assert d.approvers == ("jane@company.com", "john@company.com")
    assert (d.min_approvals, d.expires_in_seconds) == (1, 7200)
    (r,) = d.requirements
    assert (r.policy, r.rule, r.approvers) == (
        "prod-deploys",
        0,
        ("jane@company.com", "john@company.com"),
    )
    assert d.matched[0].policy == "prod-deploys" and d.matched[0].error is None
    assert "production deploys need SRE approval" in d.reasons[0]
    assert "prod-deploys" in d.reasons[0]


def test_requirements_are_kept_separately_and_combined(ps: PolicySet) -> None:
    d = ps.decide(req(environment="production", agent_trust_score=700))
    assert d.effect == "require_approval"
    assert [r.policy for r in d.requirements] == ["prod-deploys", "low-trust"]
    assert d.approvers == ("jane@company.com", "john@company.com", "security@company.com")
    assert d.min_approvals == 2  # the max
    assert d.expires_in_seconds == 1800  # the min
    assert d.requirements[1].approvers == ("john@company.com", "security@company.com")


def test_deny_beats_require_approval(ps: PolicySet) -> None:
    d = ps.decide(req(environment="production", destructive=True, agent_trust_score=700))
    assert d.effect == "deny"
    assert [m.policy for m in d.matched] == ["prod-deploys", "low-trust", "guards"]
    assert d.approvers == () and d.requirements == ()
    assert len(d.reasons) == 3


def test_fail_closed_deny(ps: PolicySet) -> None:
    d = ps.decide(req("scale", params={"replicas": "many"}))
    assert d.effect == "deny"
    (m,) = d.matched
    assert m.error is not None and "cannot order string and number" in m.error
    (error,) = d.errors
    assert "guards" in error and "too many replicas" in error and "cannot order" in error
    assert "counted as matched" in d.reasons[0]


def test_fail_closed_on_missing_param_is_null(ps: PolicySet) -> None:
    d = ps.decide(req("scale"))
    assert d.effect == "deny" and "null" in d.errors[0]


def test_allow_rule_error_never_allows(ps: PolicySet) -> None:
    d = ps.decide(req("restart", params={"count": "x"}))
    assert d.effect == "allow"
    assert d.matched == ()  # the allow rule did not match
    assert d.reasons == (NO_MATCH_REASON,)
    assert len(d.errors) == 1 and "few restarts" in d.errors[0]
    ok = ps.decide(req("restart", params={"count": 1}))
    assert [m.policy for m in ok.matched] == ["guards"] and ok.errors == ()


def test_unexpected_exception_in_params_fails_closed(ps: PolicySet) -> None:
    d = ps.decide(req("scale", params={"replicas": object()}))
    assert d.effect == "deny" and d.errors


def test_index_only_evaluates_rules_for_the_action(ps: PolicySet) -> None:
    assert [r.policy for r in ps.rules_for("scale")] == ["low-trust", "guards"]
    assert [(r.policy, r.index) for r in ps.rules_for("deploy")] == [
        ("prod-deploys", 0),
        ("low-trust", 0),
        ("guards", 2),
    ]
    assert [r.policy for r in ps.rules_for("unknown")] == ["low-trust"]
    assert ps.actions == frozenset({"deploy", "scale", "restart"})
    # A scale rule's error cannot fire for another action.
    assert ps.decide(req("migrate")).errors == ()


def test_scoped_rule_is_not_evaluated_for_other_actions() -> None:
    ps = parse_policies(
        "policies:\n  - name: p\n    rules:\n"
        "      - condition: \"params.n > 1 and action == 'scale'\"\n        action: deny\n"
    )
    assert ps.decide(req("deploy")).effect == "allow"
    assert ps.decide(req("scale")).effect == "deny"  # null > 1 fails closed for its action


def test_order_of_matched_rules_is_the_file_order() -> None:
    ps = parse_policies(
        "policies:\n  - name: p\n    rules:\n"
        "      - condition: 'destructive'\n        action: deny\n"
        "      - condition: \"action == 'x'\"\n        action: allow\n"
        "      - condition: 'true'\n        action: allow\n"
    )
    d = ps.decide(req("x", destructive=True))
    assert [m.rule for m in d.matched] == [0, 1, 2]
    assert d.effect == "deny"


def test_decisions_are_fresh_values(ps: PolicySet) -> None:
    a = ps.decide(req(environment="production"))
    b = ps.decide(req(environment="production"))
    assert a == b and a is not b
    a.extra["note"] = "mine"
    assert "note" not in b.extra
    assert ps.decide(req("read")).extra == {}


def test_policy_set_is_immutable(ps: PolicySet) -> None:
    with pytest.raises(AttributeError):
        ps.policies = ()
    with pytest.raises(AttributeError):
        del ps.groups
    with pytest.raises(TypeError):
        ps.groups["x"] = ("a@b.com",)  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        ps.rules[0].effect = "allow"  # type: ignore[misc]


def test_concurrent_decisions_match_sequential(ps: PolicySet) -> None:
    requests = [
        req(a, environment=e, destructive=d, agent_trust_score=t, params=p)
        for a in ("deploy", "scale", "restart", "read")
        for e in ("production", "staging", None)
        for d in (False, True)
        for t in (300, 799, 800, 1000)
        for p in ({}, {"replicas": 20, "count": 1}, {"replicas": "x"})
    ]
    expected = [ps.decide(r) for r in requests]
    mismatches: list[int] = []

    def worker() -> None:
        for _ in range(3):
            for i, r in enumerate(requests):
                if ps.decide(r) != expected[i]:
                    mismatches.append(i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


def test_thousand_rules_decide_correctly() -> None:
    lines = ["policies:", "  - name: big", "    rules:"]
    for i in range(1000):
        lines += [
            f"      - condition: \"action == 'act-{i % 100}' and params.n == {i}\"",
            "        action: deny",
        ]
    ps = parse_policies("\n".join(lines))
    assert len(ps) == 1000 and len(ps.rules_for("act-7")) == 10
    d = ps.decide(req("act-7", params={"n": 407}))
    assert d.effect == "deny" and [m.rule for m in d.matched] == [407]
    assert ps.decide(req("act-7", params={"n": 408})).effect == "allow"


# --------------------------------------------------------------------------- request


def test_request_defaults_and_snapshot() -> None:
    params = {"a": 1}
    r = PolicyRequest("deploy", "production/web", params=params)
    params["a"] = 2
    assert r.params["a"] == 1 and isinstance(r.params, MappingProxyType)
    assert r.capability == "deploy:production/web"
    assert (r.agent_trust_score, r.hour, r.weekday, r.environment) == (0, 0, 0, None)


def test_request_from_dict_round_trips() -> None:
    data = {
        "action": "deploy",
        "resource": "production/app-web",
        "environment": "production",
        "destructive": False,
        "agent": {
            "name": "deploy-agent",
            "trust_score": 920,
            "depth": 1,
            "did": "did:key:z",
            "sponsor": "s@c.com",
        },
        "params": {"version": "2.0", "tags": ["a"], "meta": {"k": None}},
        "time": {"hour": 14, "weekday": 2, "minute": 5},
    }
    r = PolicyRequest.from_dict(data)
    assert PolicyRequest.from_dict(r.to_dict()) == r
    assert r.agent_trust_score == 920 and r.params["tags"] == ["a"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"resource": "r"}, "needs 'action'"),
        ({"action": "a"}, "needs 'resource'"),
        ({"action": "a", "resource": "r", "actor": "x"}, "unknown request key 'actor'"),
        ({"action": "a", "resource": "r", "agent": {"score": 1}}, "'agent.score'"),
        (
            {"action": "a", "resource": "r", "time": {"hour": 24}},
            "hour must be an integer from 0 to 23",
        ),
        ({"action": "a", "resource": "r", "time": {"weekday": 7}}, "weekday"),
        ({"action": "a", "resource": "r", "time": {"minute": 60}}, "minute"),
        ({"action": "a", "resource": "r", "agent": {"trust_score": True}}, "trust_score"),
        ({"action": "a", "resource": "r", "agent": {"trust_score": 1001}}, "trust_score"),
        ({"action": "a", "resource": "r", "agent": {"depth": -1}}, "depth"),
        ({"action": 5, "resource": "r"}, "action must be a string"),
        (
            {"action": "a", "resource": "r", "environment": 5},
            "environment must be a string or null",
        ),
        (
            {"action": "a", "resource": "r", "destructive": "yes"},
            "destructive must be true or false",
        ),
        ({"action": "a", "resource": "r", "params": [1]}, "params must be a mapping"),
        ({"action": "a", "resource": "r", "params": {"d": float("nan")}}, "finite"),
        ({"action": "a", "resource": "r", "params": {"s": {1, 2}}}, "unsupported type"),
        ({"action": "a", "resource": "r", "params": {"m": {1: 2}}}, "non-string key"),
        ("not a mapping", "request must be a mapping"),
    ],
)
def test_request_validation(data: object, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        PolicyRequest.from_dict(data)  # type: ignore[arg-type]
    assert info.value.code == "policy_request_invalid"
    assert fragment in str(info.value)


def test_request_time_from_now() -> None:
    from datetime import UTC, datetime

    now = datetime(2024, 5, 4, 13, 7, tzinfo=UTC)  # a Saturday
    r = PolicyRequest.from_dict({"action": "a", "resource": "r", "time": {"hour": 1}}, now=now)
    assert (r.hour, r.weekday, r.minute) == (1, 5, 7)


def test_decision_type() -> None:
    assert isinstance(PolicySet.empty().decide(req()), Decision)
