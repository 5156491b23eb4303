"""Trust scores: scripted activity streams with an injected clock.

Default deltas: success +5, failed deployment -40, policy violation -75 (deny, out of
scope, escalation), credential misuse -150 (a genuine credential, revoked, expired or
presented without proof of its key). Forged tokens are charged to nobody. Effective
trust is the minimum over the delegation chain; below 800 production needs approval,
below 500 the agent and its descendants are suspended at once.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    DEPLOY_SCOPE,
    RecordingExecutor,
    World,
    audit_events,
    deploy,
    open_world,
    stored_trust,
)

import opsgate
from opsgate.approvals import PendingApproval
from opsgate.trust.scoring import TrustEvent

# Monday 2030-01-07 10:00 UTC: inside any office-hours window.
T0 = datetime(2030, 1, 7, 10, 0, tzinfo=UTC).timestamp()
JOHN, JANE = "john@company.com", "jane@company.com"
# Anti-farming rules switched off, for tests about something else.
NO_CREDIT_RULES = {"max_credit_per_day": 1000, "clean_history_days": 0}


class Clock:
    """The injected clock of one scripted stream; every step is `step` seconds."""

    def __init__(self, start: float = T0, step: float = 1.0) -> None:
        self.t = start
        self.step = step

    def tick(self, seconds: float | None = None) -> float:
        self.t += self.step if seconds is None else seconds
        return self.t


def token_at(
    w: World, t: float, agent: opsgate.Agent | None = None, scope: list[str] | None = None
) -> str:
    return w.credential(agent, scope, now=t)


def trust_world(
    tmp_path: Path, policies: str = "trust_groups.yaml", *, trust_score: int = 920, **config: Any
) -> World:
    """A world whose deploy agent starts at `trust_score` (the supervisor's score)."""
    return open_world(
        tmp_path / "state", policies, approvers=(), supervisor_trust=trust_score, **config
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = trust_world(tmp_path)
    yield w
    w.gate.close()


def changes(gate: opsgate.Gate, did: str) -> list[Any]:
    """The agent's score changes, without the record of its starting score (if kept)."""
    return [c for c in gate.trust.history(did) if c.cause != "initial"]


def scores(gate: opsgate.Gate, *agents: opsgate.Agent) -> list[int]:
    return [stored_trust(gate, a.did) for a in agents]


# -- deltas -----------------------------------------------------------------------------------


def test_success_adds_five_per_execute_and_plateaus_at_1000(tmp_path: Path) -> None:
    w = trust_world(tmp_path, trust_score=960)
    try:
        clock = Clock(step=6 * 3600)  # four a day, each a new release: within every rule
        seen = []
        for i in range(12):
            token = token_at(w, clock.tick())
            out = w.gate.execute(token, deploy("staging/app-web", version=f"3.{i}"), now=clock.t)
            assert out.status == "succeeded"
            seen.append(w.agent.trust_score)
        assert seen == [965, 970, 975, 980, 985, 990, 995, 1000, 1000, 1000, 1000, 1000]
        assert stored_trust(w.gate, w.agent.did) == 1000
        assert w.supervisor.trust_score == 960  # a child's success is its own
        history = changes(w.gate, w.agent.did)
        assert [c.score for c in history] == seen
        assert {c.cause for c in history} == {"success"}
    finally:
        w.gate.close()


def test_failed_deployments_cost_40_each(tmp_path: Path) -> None:
    w = open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        executor=RecordingExecutor(fail_kind="deployment"),
    )
    try:
        clock = Clock()
        token = token_at(w, clock.t)
        for expected in (880, 840, 800):
            out = w.gate.execute(token, deploy("staging/app-web"), now=clock.tick())
            assert out.status == "failed" and out.failure_kind == "deployment"
            assert w.agent.trust_score == expected
        last = changes(w.gate, w.agent.did)[-1]
        assert (last.cause, last.delta, last.score) == ("failed_deployment", -40, 800)
        assert last.operation == "deploy:staging/app-web"
    finally:
        w.gate.close()


def _out_of_scope(w: World, t: float) -> None:
    decision = w.gate.authorize(
        token_at(w, t, scope=["deploy:staging"]), "deploy:production/app-web", now=t
    )
    assert decision.effect == "deny"


def _policy_deny(w: World, t: float) -> None:
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.execute(token_at(w, t), deploy("production/legacy"), now=t)
    assert exc.value.code == "operation_denied"


def _credential_beyond_grants(w: World, t: float) -> None:
    with pytest.raises(opsgate.CredentialError) as exc:
        w.gate.credential_manager.issue_credential(
            agent_id=w.agent.did, scope=["migrate:database/orders"], now=t
        )
    assert exc.value.code == "scope_not_covered"


def _unrestricted_credential(w: World, t: float) -> None:
    with pytest.raises(opsgate.CapabilityError) as exc:
        w.gate.credential_manager.issue_credential(agent_id=w.agent.did, scope=["deploy:**"], now=t)
    assert exc.value.code == "capability_unrestricted"


def _delegate_beyond_grants(w: World, t: float) -> None:
    with pytest.raises(opsgate.DelegationError) as exc:
        w.agent.delegate(name="widened", capabilities=["migrate:database"], now=t)
    assert exc.value.code == "delegation_not_covered"


def _delegate_more_trust(w: World, t: float) -> None:
    with pytest.raises(opsgate.DelegationError) as exc:
        w.agent.delegate(name="trusted", capabilities=["deploy:staging"], trust_score=990, now=t)
    assert exc.value.code == "trust_above_parent"


@pytest.mark.parametrize(
    "violate",
    [
        _out_of_scope,
        _policy_deny,
        _credential_beyond_grants,
        _unrestricted_credential,
        _delegate_beyond_grants,
        _delegate_more_trust,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_policy_violations_cost_75_each(tmp_path: Path, violate: Any) -> None:
    w = trust_world(tmp_path, "deny_legacy.yaml")
    try:
        clock = Clock(step=120)  # spaced out: two refusals are not a probing burst
        for expected in (845, 770):
            violate(w, clock.tick())
            assert w.agent.trust_score == expected
        assert w.supervisor.trust_score == 920  # charged to the agent that asked, only
        last = changes(w.gate, w.agent.did)[-1]
        assert (last.cause, last.delta, last.score) == ("policy_violation", -75, 770)
        assert last.reason
    finally:
        w.gate.close()


def test_revoked_credential_presented_costs_150(world: World) -> None:
    w = world
    clock = Clock()
    cred = w.gate.credential_manager.issue_credential(
        agent_id=w.agent.did, scope=DEPLOY_SCOPE, now=clock.t
    )
    w.gate.credential_manager.revoke(cred.jti, now=clock.tick())
    with pytest.raises(opsgate.InvalidCredential) as exc:
        w.gate.execute(cred.token, deploy("staging/app-web"), now=clock.tick())
    assert exc.value.code == "revoked"
    assert w.agent.trust_score == 770
    assert w.executor.count == 0
    last = changes(w.gate, w.agent.did)[-1]
    assert (last.cause, last.delta, last.score) == ("credential_misuse", -150, 770)


def test_expired_credential_presented_costs_150(world: World) -> None:
    w = world
    token = token_at(w, T0)
    with pytest.raises(opsgate.InvalidCredential) as exc:
        w.gate.authorize(token, "deploy:staging/app-web", now=T0 + 16 * 60)
    assert exc.value.code == "expired"
    assert w.agent.trust_score == 770
    assert changes(w.gate, w.agent.did)[-1].cause == "credential_misuse"


def test_credential_without_proof_of_its_key_costs_150(tmp_path: Path) -> None:
    """DESIGN: misuse includes a genuine credential presented without proof of its bound key."""
    w = trust_world(tmp_path, require_proof=True)
    try:
        token = token_at(w, T0)
        with pytest.raises(opsgate.InvalidCredential) as exc:
            w.gate.execute(token, deploy("staging/app-web"), now=T0 + 1)
        assert exc.value.code == "missing_proof"
        assert w.executor.count == 0
        assert w.agent.trust_score == 770, "presenting a credential without its key cost nothing"
    finally:
        w.gate.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_forged_tokens_change_no_agents_score(tmp_path: Path, world: World) -> None:
    w = world
    genuine = token_at(w, T0)
    header, payload, signature = genuine.split(".")
    claims = json.loads(_unb64(payload))

    # A credential for the same did, genuinely issued by another gate's key.
    other = opsgate.Gate.open(tmp_path / "other")
    try:
        other.register_agent(
            "deploy-agent", DEPLOY_SCOPE, sponsor="eve@company.com", did=w.agent.did
        )
        foreign = other.credential_manager.issue_credential(
            agent_id=w.agent.did, scope=DEPLOY_SCOPE, now=T0
        ).token
    finally:
        other.close()

    def tampered(**changes: Any) -> str:
        body = _b64(json.dumps({**claims, **changes}, separators=(",", ":")).encode())
        return f"{header}.{body}.{signature}"

    flipped = bytearray(_unb64(signature))
    flipped[0] ^= 0x01
    forgeries = {
        "foreign-gate": foreign,
        "wider-scope": tampered(scope=["deploy:staging", "deploy:production", "migrate:database"]),
        "backdated-expiry": tampered(exp=claims["iat"] + 1),  # looks expired: still unproven
        "other-subject": tampered(sub=w.supervisor.did),
        "bad-signature": f"{header}.{payload}.{_b64(bytes(flipped))}",
    }
    before = scores(w.gate, w.supervisor, w.agent)
    clock = Clock(step=120)
    codes = {}
    for name, token in forgeries.items():
        with pytest.raises(opsgate.InvalidCredential) as exc:
            w.gate.execute(token, deploy("staging/app-web"), now=clock.tick())
        codes[name] = exc.value.code
        assert scores(w.gate, w.supervisor, w.agent) == before, name
    assert codes == {
        "foreign-gate": "unknown_kid",
        "wider-scope": "bad_signature",
        "backdated-expiry": "bad_signature",
        "other-subject": "bad_signature",
        "bad-signature": "bad_signature",
    }
    assert w.executor.count == 0
    assert audit_events(w.gate, "trust.changed") == []
    # Unproven: no row each, counted exactly by code in the refusal summary.
    assert audit_events(w.gate, "credential.rejected") == []
    assert w.gate.credential_manager.unproven_refusals.flush()
    (summary,) = audit_events(w.gate, "credential.rejected_summary")
    assert summary["codes"] == {"bad_signature": 4, "unknown_kid": 1}


def test_configured_deltas_are_used(tmp_path: Path) -> None:
    w = open_world(
        tmp_path / "state",
        "deny_legacy.yaml",
        approvers=(),
        trust={"deltas": {"success": 10, "failed_deployment": -100, "policy_violation": -20}},
    )
    try:
        clock = Clock(step=120)
        assert w.gate.execute(token_at(w, clock.t), deploy("staging/app-web"), now=clock.tick()).ok
        assert w.agent.trust_score == 930
        _policy_deny(w, clock.tick())
        assert w.agent.trust_score == 910
        w.gate.register_executor("deploy", RecordingExecutor(fail_kind="deployment"))
        w.gate.execute(token_at(w, clock.t), deploy("staging/app-web"), now=clock.tick())
        assert w.agent.trust_score == 810
        assert [c.delta for c in changes(w.gate, w.agent.did)] == [10, -20, -100]
    finally:
        w.gate.close()


def test_out_of_range_delta_is_a_config_error(tmp_path: Path) -> None:
    for deltas in ({"success": -5}, {"credential_misuse": 10}, {"policy_violation": -5000}):
        with pytest.raises(opsgate.ConfigError) as exc:
            opsgate.Gate.open(tmp_path / "state", trust={"deltas": deltas})
        assert exc.value.code == "config_invalid"


# -- delegation and effective trust ------------------------------------------------------------


def test_effective_trust_is_the_minimum_up_the_chain(world: World) -> None:
    w = world
    child = w.agent.delegate(name="child", capabilities=["deploy:staging"], trust_score=880)
    grandchild = child.delegate(name="grandchild", capabilities=["deploy:staging"])
    assert (child.trust_score, grandchild.trust_score) == (880, 880)  # default: parent's
    for _ in range(2):
        w.gate.trust.record(w.supervisor.did, TrustEvent.POLICY_VIOLATION, reason="test", now=T0)
    assert w.supervisor.trust_score == 770
    assert w.agent.trust_score == 920  # own scores are untouched...
    assert grandchild.trust_score == 880
    assert w.agent.effective_trust == 770  # ...but nobody is trusted above its supervisor
    assert child.effective_trust == 770
    assert grandchild.effective_trust == 770
    w.gate.trust.record(grandchild.did, TrustEvent.FAILED_DEPLOYMENT, reason="test", now=T0)
    assert grandchild.effective_trust == 770  # min(840, 770)
    w.gate.trust.record(grandchild.did, TrustEvent.CREDENTIAL_MISUSE, reason="test", now=T0)
    assert grandchild.effective_trust == 690


def test_delegated_trust_defaults_to_the_parents_and_cannot_exceed_it(world: World) -> None:
    w = world
    assert w.agent.trust_score == 920  # delegated without a score: the supervisor's
    lower = w.agent.delegate(name="lower", capabilities=["deploy:staging"], trust_score=600)
    assert lower.trust_score == 600
    with pytest.raises(opsgate.DelegationError) as exc:
        lower.delegate(name="higher", capabilities=["deploy:staging"], trust_score=601)
    assert exc.value.code == "trust_above_parent"
    assert [a.name for a in w.gate.agents.list()].count("higher") == 0
    # The limit is the parent's effective trust, not its own score.
    w.gate.trust.record(w.supervisor.did, TrustEvent.CREDENTIAL_MISUSE, reason="t", now=T0)
    assert w.supervisor.trust_score == 770 and w.agent.trust_score == 920
    with pytest.raises(opsgate.DelegationError) as capped:
        w.agent.delegate(name="too-high", capabilities=["deploy:staging"], trust_score=800)
    assert capped.value.code == "trust_above_parent"
    assert w.agent.delegate(name="default", capabilities=["deploy:staging"]).trust_score == 770


# -- thresholds ---------------------------------------------------------------------------------


def _drop_below(w: World, agent: opsgate.Agent, bound: int, t: float) -> None:
    """Lower an agent's own score with failed-deployment events (-40) to just below `bound`."""
    while stored_trust(w.gate, agent.did) >= bound:
        w.gate.trust.record(agent.did, TrustEvent.FAILED_DEPLOYMENT, reason="scripted", now=t)


def test_below_800_production_needs_the_trust_approvers(tmp_path: Path) -> None:
    w = trust_world(tmp_path, trust={"approvers": ["sre-team@company.com"]}, trust_score=840)
    try:
        for email in (JOHN, JANE):  # on the scripted clock: approver tokens expire
            w.approver_tokens[email] = w.gate.approvals.add_approver(email, now=T0)
        clock = Clock()
        token = token_at(w, clock.t)
        assert w.gate.execute(token, deploy(), now=clock.tick()).status == "succeeded"
        w.gate.trust.record(w.agent.did, TrustEvent.FAILED_DEPLOYMENT, reason="x", now=clock.t)
        assert w.agent.trust_score == 805  # 840 + 5 - 40: still production-worthy
        assert w.gate.execute(token, deploy(version="2.5"), now=clock.tick()).ok
        w.gate.trust.record(w.agent.did, TrustEvent.FAILED_DEPLOYMENT, reason="x", now=clock.t)
        assert w.agent.trust_score == 770

        pending = w.gate.execute(token, deploy(version="2.6"), now=clock.tick())
        assert isinstance(pending, PendingApproval)
        assert pending.approvers == (JANE, JOHN)  # the configured group, resolved
        assert any("trust" in r for r in pending.reasons)
        assert w.executor.count == 2
        # Staging stays allowed.
        assert w.gate.execute(token, deploy("staging/app-web"), now=clock.tick()).ok
        assert w.executor.count == 3
        # The approval path works end to end.
        w.approve(pending.approval_id, JANE, now=clock.tick())
        assert w.gate.resume(pending.approval_id, token, now=clock.tick()).ok
        assert w.executor.count == 4
    finally:
        w.gate.close()


def test_below_800_production_is_denied_when_no_trust_approver_is_configured(
    tmp_path: Path,
) -> None:
    w = trust_world(tmp_path, trust_score=790)
    try:
        token = token_at(w, T0)
        with pytest.raises(opsgate.OperationError) as exc:
            w.gate.execute(token, deploy(), now=T0 + 1)
        assert exc.value.code == "operation_denied"
        assert w.executor.count == 0
        assert w.gate.approvals.list() == []
        assert w.gate.execute(token, deploy("staging/app-web"), now=T0 + 2).ok
        decision = w.gate.authorize(token, "deploy:production/app-web", now=T0 + 3)
        assert decision.effect == "deny"
    finally:
        w.gate.close()


def test_a_low_trust_supervisor_puts_its_agents_production_work_behind_approval(
    tmp_path: Path,
) -> None:
    w = trust_world(tmp_path, trust={"approvers": ["sre-team@company.com"]})
    try:
        _drop_below(w, w.supervisor, 800, T0)
        assert w.agent.trust_score == 920 and w.agent.effective_trust < 800
        token = token_at(w, T0)
        assert isinstance(w.gate.execute(token, deploy(), now=T0 + 1), PendingApproval)
        assert w.executor.count == 0
    finally:
        w.gate.close()


def test_below_500_suspends_the_agent_and_its_sub_agents_at_once(tmp_path: Path) -> None:
    w = open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        supervisor_trust=540,
        executor=RecordingExecutor(fail_kind="deployment"),
    )
    try:
        sub = w.agent.delegate(name="sub-agent", capabilities=["deploy:staging"])
        clock = Clock()
        agent_token = token_at(w, clock.t)
        sub_token = token_at(w, clock.t, sub, ["deploy:staging"])
        sup_token = token_at(w, clock.t, w.supervisor)
        assert w.gate.authorize(sub_token, "deploy:staging/app", now=clock.tick()).allowed

        w.gate.execute(agent_token, deploy("staging/app-web"), now=clock.tick())
        assert w.agent.trust_score == 500
        assert w.agent.status == "active"
        w.gate.execute(agent_token, deploy("staging/app-web"), now=clock.tick())
        assert w.agent.trust_score == 460
        assert w.agent.status == "suspended"
        assert sub.status == "suspended"
        assert w.supervisor.status == "active"
        suspended = audit_events(w.gate, "agent.suspended")[-1]
        assert set(suspended["affected"]) == {w.agent.did, sub.did}
        assert suspended["actor"] == "trust-engine"

        runs = w.executor.count
        for token in (agent_token, sub_token):  # the very next call, no cache delay
            with pytest.raises(opsgate.InvalidCredential) as exc:
                w.gate.execute(token, deploy("staging/app-web"), now=clock.tick())
            assert exc.value.code == "revoked"  # suspension revokes every live credential
        assert w.executor.count == runs
        with pytest.raises(opsgate.CredentialError) as refused:
            w.gate.credential_manager.issue_credential(
                agent_id=sub.did, scope=["deploy:staging"], now=clock.t
            )
        assert refused.value.code == "agent_suspended"
        assert w.gate.authorize(sup_token, "deploy:staging/app", now=clock.tick()).allowed

        # The sub-agent presented its revoked credential above (misuse, -150): its own
        # score is now below 500, so reinstating its parent leaves it suspended.
        assert sub.trust_score < 500
        affected = w.gate.agents.reinstate(
            "deploy-agent", reason="reviewed the failures", now=clock.tick()
        )
        assert set(affected) == {w.agent.did}
        assert (w.agent.status, sub.status) == ("active", "suspended")
        reinstated = audit_events(w.gate, "agent.reinstated")[-1]
        assert reinstated["reason"] == "reviewed the failures"
        affected = w.gate.agents.reinstate("sub-agent", reason="reviewed it too", now=clock.tick())
        assert set(affected) == {sub.did} and sub.status == "active"
        # Credentials from before the suspension stay dead; new ones work.
        with pytest.raises(opsgate.InvalidCredential) as stale:
            w.gate.credential_manager.verify(sub_token, now=clock.tick())
        assert stale.value.code == "revoked"
        fresh = token_at(w, clock.tick(), sub, ["deploy:staging"])
        assert w.gate.authorize(fresh, "deploy:staging/app", now=clock.tick()).allowed
    finally:
        w.gate.close()


def test_reinstated_agent_is_not_suspended_again_by_a_success(tmp_path: Path) -> None:
    w = trust_world(tmp_path, trust_score=520)
    try:
        clock = Clock()
        w.gate.trust.record(w.agent.did, TrustEvent.FAILED_DEPLOYMENT, reason="x", now=clock.tick())
        assert w.agent.status == "suspended"
        w.gate.agents.reinstate("deploy-agent", reason="false alarm", now=clock.tick())
        assert w.agent.status == "active"
        token = token_at(w, clock.tick())
        out = w.gate.execute(token, deploy("staging/app-web"), now=clock.tick())
        assert out.status == "succeeded"
        assert w.agent.trust_score == 485
        assert w.agent.status == "active", "a successful operation suspended the agent"
    finally:
        w.gate.close()


def test_reinstated_at_zero_a_further_loss_suspends_again(tmp_path: Path) -> None:
    """At 0 every loss is clamped to 0 points: the loss asked for decides, not the one applied."""
    w = open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        supervisor_trust=520,
        executor=RecordingExecutor(fail_kind="deployment"),
        trust={"deltas": {"credential_misuse": -1000}},
    )
    try:
        clock = Clock()
        w.gate.trust.record(w.agent.did, TrustEvent.CREDENTIAL_MISUSE, reason="x", now=clock.t)
        assert (w.agent.trust_score, w.agent.status) == (0, "suspended")
        for loss in ("record", "execute"):
            w.gate.agents.reinstate("deploy-agent", reason="reviewed", now=clock.tick())
            assert (w.agent.trust_score, w.agent.status) == (0, "active")
            if loss == "record":
                change = w.gate.trust.record(
                    w.agent.did, TrustEvent.POLICY_VIOLATION, reason="y", now=clock.tick()
                )
                assert (change.delta, change.score) == (0, 0)
            else:
                out = w.gate.execute(token_at(w, clock.t), deploy("staging/app-web"), now=clock.t)
                assert out.status == "failed"
            assert w.agent.status == "suspended", f"a loss at 0 ({loss}) left the agent active"
            last = changes(w.gate, w.agent.did)[-1]
            assert (last.delta, last.score) == (0, 0)
            assert audit_events(w.gate, "agent.suspended")[-1]["actor"] == "trust-engine"
        assert len(audit_events(w.gate, "agent.suspended")) == 3
    finally:
        w.gate.close()


def test_a_sub_agents_fall_does_not_suspend_its_parent(world: World) -> None:
    w = world
    sub = w.agent.delegate(name="sub-agent", capabilities=["deploy:staging"], trust_score=520)
    w.gate.trust.record(sub.did, TrustEvent.FAILED_DEPLOYMENT, reason="x", now=T0)
    assert sub.status == "suspended"
    assert (w.agent.status, w.supervisor.status) == ("active", "active")
    assert w.gate.execute(token_at(w, T0), deploy("staging/app-web"), now=T0 + 1).ok


# -- explanation and concurrency ------------------------------------------------------------------


def test_every_change_is_explained_in_history(tmp_path: Path) -> None:
    w = trust_world(tmp_path, "deny_legacy.yaml")
    try:
        clock = Clock(step=120)
        token = token_at(w, clock.t)
        w.gate.execute(token, deploy("staging/app-web"), now=clock.tick())
        _policy_deny(w, clock.tick())
        _credential_beyond_grants(w, clock.tick())
        cred = w.gate.credential_manager.issue_credential(
            agent_id=w.agent.did, scope=DEPLOY_SCOPE, now=clock.t
        )
        w.gate.credential_manager.revoke(cred.jti, now=clock.tick())
        with pytest.raises(opsgate.InvalidCredential):
            w.gate.execute(cred.token, deploy("staging/app-web"), now=clock.tick())
        history = changes(w.gate, w.agent.did)
        assert [(c.cause, c.delta, c.score) for c in history] == [
            ("success", 5, 925),
            ("policy_violation", -75, 850),
            ("policy_violation", -75, 775),
            ("credential_misuse", -150, 625),
        ]
        assert history[0].operation == "deploy:staging/app-web"
        assert history[1].operation == "deploy:production/legacy"
        assert all(c.reason for c in history)
        assert all(c.audit_seq is not None for c in history)
        assert [c.at for c in history] == sorted(c.at for c in history)
        assert history[-1].score == stored_trust(w.gate, w.agent.did)
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_concurrent_trust_events_lose_no_update(tmp_path: Path, database_url: str | None) -> None:
    w = open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        supervisor_trust=600,
        # Lost updates only: the anti-farming rules are off here (tested on their own).
        trust={"deltas": {"success": 2}, "credit": NO_CREDIT_RULES},
        database_url=database_url,
    )
    try:
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            barrier.wait()
            try:
                for i in range(10):
                    w.gate.trust.record(
                        w.agent.did, TrustEvent.SUCCESS, reason=f"{n}.{i}", now=T0 + i
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert stored_trust(w.gate, w.agent.did) == 600 + 16 * 10 * 2  # the column itself
        history = changes(w.gate, w.agent.did)
        assert len(history) == 160
        assert sorted(c.score for c in history) == list(range(602, 921, 2))
        # Another gate on the same store (a replica: it shares the state dir) sees the same truth.
        again = opsgate.Gate.open(w.gate.state_dir, database_url=database_url)
        try:
            assert again.trust_score(w.agent.did) == 920
        finally:
            again.close()
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_the_gate_never_reports_an_older_score_after_concurrent_events(tmp_path: Path) -> None:
    """Once concurrent changes have returned, the gate's own view equals the store.

    Decisions read that view: a stale score (higher or lower than the truth) must not
    survive the changes that superseded it.
    """
    w = open_world(
        tmp_path / "state",
        "trust_groups.yaml",
        approvers=(),
        supervisor_trust=600,
        trust={"deltas": {"success": 1}, "credit": NO_CREDIT_RULES},
    )
    try:
        stale: list[tuple[int, int, int]] = []
        for round_ in range(12):
            barrier = threading.Barrier(8)

            def worker(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                w.gate.trust.record(w.agent.did, TrustEvent.SUCCESS, reason="r", now=T0)

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            stored = stored_trust(w.gate, w.agent.did)
            assert stored == 600 + 8 * (round_ + 1)
            seen = w.gate.trust_score(w.agent.did)
            if seen != stored:
                stale.append((round_, seen, stored))
        assert stale == [], f"(round, gate's score, stored score): {stale}"
    finally:
        w.gate.close()


def test_the_stored_score_is_read_as_stored_and_a_failed_read_is_typed(
    tmp_path: Path, database_url: str | None
) -> None:
    """The trust cache's read of a score: the value a change committed, `agent_not_found`
    for a did with no row, and a store that cannot answer a StoreError (never the
    driver's own exception)."""
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        agent = gate.register_agent(
            "scored", ["deploy:staging"], sponsor="ops@company.com", trust_score=700
        )
        assert gate.agents.stored_trust(agent.did) == 700
        gate.set_trust_score(agent.did, 640, reason="review", by="ops")
        assert gate.agents.stored_trust(agent.did) == 640
        with pytest.raises(opsgate.AgentError) as missing:
            gate.agents.stored_trust("did:key:z6MkNoSuchAgentAnywhere")
        assert missing.value.code == "agent_not_found"
        with gate.store.write() as conn:
            conn.exec_driver_sql("ALTER TABLE agents RENAME COLUMN trust_score TO gone")
        with pytest.raises(opsgate.StoreError):
            gate.agents.stored_trust(agent.did)
        with gate.store.write() as conn:
            conn.exec_driver_sql("ALTER TABLE agents RENAME COLUMN gone TO trust_score")
