"""Human approvals: every rule of DESIGN.md "Approvals" is attacked and must hold.

A request is bound to the plan digest; only resolved, authenticated approvers who do
not sponsor the requesting agent (or any agent above it) may decide; one deny
denies; an approved request runs once, for the same operation, before expiry, for
the agent that asked, with steps 1-4 re-run on fresh state. Attack cases on who may
decide live in tests/data/approval_attacks.yaml.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    AGENT_SPONSOR,
    DATA,
    DEPLOY_SCOPE,
    RELEASE,
    SUPERVISOR_SPONSOR,
    Stall,
    World,
    audit_events,
    audit_types,
    database_text,
    deploy,
    open_world,
    policy,
    run_in_thread,
)
from sqlalchemy import select

import opsgate
from opsgate.approvals import PendingApproval
from opsgate.errors import safe_text
from opsgate.store import schema

ATTACKS: list[dict[str, Any]] = yaml.safe_load(
    (DATA / "approval_attacks.yaml").read_text(encoding="utf-8")
)
JOHN, JANE, SAM = "john@company.com", "jane@company.com", "sam@company.com"
HOUR = 3600.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = open_world(tmp_path / "state")
    yield w
    w.gate.close()


def request_approval(w: World, operation: opsgate.Operation | None = None) -> PendingApproval:
    pending = w.gate.execute(w.token, operation or deploy())
    assert isinstance(pending, PendingApproval), pending
    return pending


def refusal(gate: opsgate.Gate, approval_id: str) -> list[str]:
    """Codes of the approval.refused events about this request, oldest first."""
    return [
        e["code"]
        for e in audit_events(gate, "approval.refused")
        if e.get("approval") == approval_id
    ]


def decisions_in_db(gate: opsgate.Gate, approval_id: str) -> list[tuple[str, str]]:
    d = schema.approval_decisions
    with gate.store.read() as conn:
        rows = conn.execute(
            select(d.c.approver, d.c.decision).where(d.c.request_id == approval_id)
        ).all()
    return [(r[0], r[1]) for r in rows]


# -- the happy path, fully audited -------------------------------------------------------


def test_production_deploy_waits_for_one_sre_then_runs_once(world: World) -> None:
    w = world
    pending = request_approval(w)
    assert pending.approvers == (JANE, JOHN)  # the group, resolved to its members
    assert pending.min_approvals == 1
    assert pending.digest == w.executor.plan(deploy()).digest
    assert w.executor.count == 0
    req = w.gate.approvals.get(pending.approval_id)
    assert req.status == "pending"
    assert req.requester_did == w.agent.did
    assert req.plan["content"] == RELEASE
    assert [r.id for r in w.gate.approvals.list(status="pending")] == [pending.approval_id]

    decided = w.approve(pending.approval_id, JOHN, comment="looks good")
    assert decided.status == "approved"
    assert [(d.approver, d.decision, d.comment) for d in decided.decisions] == [
        (JOHN, "approve", "looks good")
    ]
    assert w.gate.wait_for_approval(pending.approval_id, timeout=1).status == "approved"

    outcome = w.gate.resume(pending.approval_id, w.token)
    assert isinstance(outcome, opsgate.Outcome)
    assert outcome.status == "succeeded"
    assert w.executor.count == 1
    assert w.executor.runs[0].digest == pending.digest
    assert w.gate.approvals.get(pending.approval_id).status == "consumed"

    types = audit_types(w.gate)
    for kind in (
        "approval.requested",
        "approval.approved_by",
        "approval.consumed",
        "operation.attempt",
        "operation.outcome",
    ):
        assert kind in types
    assert (
        types.index("approval.requested")
        < types.index("approval.approved_by")
        < types.index("approval.consumed")
        < types.index("operation.attempt")
    )
    attempt = audit_events(w.gate, "operation.attempt")[-1]
    assert attempt["approval"] == pending.approval_id
    assert attempt["digest"] == pending.digest
    assert w.gate.audit.verify().ok


def test_approver_token_is_shown_once_and_only_its_hash_is_stored(
    tmp_path: Path, world: World
) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.resume(pending.approval_id, w.token)
    rotated = w.gate.approvals.rotate_approver_token(JANE)
    everything = database_text(w.gate)
    for email, token in [*w.approver_tokens.items(), (JANE, rotated)]:
        assert token.startswith("opsg_apr_") and len(token) > 40
        assert token not in everything, f"raw token of {email} is stored"
        for record in w.gate.audit.tail(10_000):
            assert token not in str(record.event)
    with w.gate.store.read() as conn:
        stored = dict(
            conn.execute(select(schema.approvers.c.email, schema.approvers.c.token_hash)).all()
        )
    assert stored[JOHN] == hashlib.sha256(w.approver_tokens[JOHN].encode()).hexdigest()
    # Nor in the raw SQLite files (WAL included), where a deleted page could linger.
    for f in (tmp_path / "state").glob("opsgate.db*"):
        raw = f.read_bytes()
        for token in [*w.approver_tokens.values(), rotated]:
            assert token.encode() not in raw


def test_rotated_approver_token_replaces_the_old_one(world: World) -> None:
    w = world
    pending = request_approval(w)
    old = w.approver_tokens[JOHN]
    new = w.gate.approvals.rotate_approver_token(JOHN)
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.approvals.approve(pending.approval_id, approver=JOHN, token=old)
    assert exc.value.code == "approver_unauthenticated"
    assert w.status(pending.approval_id) == "pending"
    w.gate.approvals.approve(pending.approval_id, approver=JOHN, token=new)
    assert w.status(pending.approval_id) == "approved"


def test_an_approver_cannot_be_registered_twice(world: World) -> None:
    with pytest.raises(opsgate.ApprovalError) as exc:
        world.gate.approvals.add_approver("John@Company.com")
    assert exc.value.code == "approver_exists"
    # The original token still works: the second registration changed nothing.
    pending = request_approval(world)
    assert world.approve(pending.approval_id, JOHN).status == "approved"


@pytest.mark.parametrize(
    "email",
    ["j\u043ehn@company.com", "john@company.com\n", "sre-team", "", "\u212aate@company.com"],
    ids=["cyrillic-o", "newline", "no-domain", "empty", "kelvin-sign"],
)
def test_look_alike_or_malformed_approver_cannot_be_registered(world: World, email: str) -> None:
    before = world.gate.approvals.list_approvers()
    with pytest.raises(opsgate.ApprovalError) as exc:
        world.gate.approvals.add_approver(email)
    assert exc.value.code == "invalid_email"
    assert world.gate.approvals.list_approvers() == before


# -- who may decide: attacks as data ----------------------------------------------------------


@pytest.fixture(scope="module")
def attack_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One gate for every attack case; each case works on its own fresh request."""
    w = open_world(
        tmp_path_factory.mktemp("attacks") / "state",
        "sponsors_in_group.yaml",
        approvers=(
            JOHN,
            JANE,
            SUPERVISOR_SPONSOR,
            AGENT_SPONSOR,
            "mallory@company.com",
            "sre-team@company.com",
        ),
    )
    yield w
    w.gate.close()


def _presented(w: World, case: dict[str, Any]) -> Any:
    owner = case.get("token_of", case["approver"])
    kind = case["token"]
    if kind == "none":
        return None
    if kind == "empty":
        return ""
    if kind.startswith("text:"):
        return kind[5:]
    own = w.approver_tokens[owner]
    return {
        "own": own,
        "own+space": own + " ",
        "own-truncated": own[:-1],
        "own-bytes": own.encode(),
        "own-hash": hashlib.sha256(own.encode()).hexdigest(),
    }[kind]


@pytest.mark.parametrize("verb", ["approve", "deny"])
@pytest.mark.parametrize("case", ATTACKS, ids=[c["id"] for c in ATTACKS])
def test_approval_attack_is_refused(attack_world: World, case: dict[str, Any], verb: str) -> None:
    w = attack_world
    runs_before = w.executor.count
    pending = request_approval(w)
    target = case.get("approval", pending.approval_id)

    def refused() -> int:
        return len(
            [
                e
                for e in audit_events(w.gate, "approval.refused")
                # the id as the audit keeps user input: itself, or its length if it
                # is oversized or secret-shaped
                if e["code"] == case["code"] and e.get("approval") == safe_text(target)
            ]
        )

    refused_before = refused()
    decide = getattr(w.gate.approvals, verb)
    with pytest.raises(opsgate.ApprovalError) as exc:
        decide(target, approver=case["approver"], token=_presented(w, case), comment="attack")
    assert exc.value.code == case["code"], exc.value

    # Nothing changed: still pending, no decision stored, nothing ran.
    req = w.gate.approvals.get(pending.approval_id)
    assert req.status == "pending"
    assert req.decisions == ()
    assert decisions_in_db(w.gate, pending.approval_id) == []
    with pytest.raises(opsgate.ApprovalError) as resumed:
        w.gate.resume(pending.approval_id, w.token)
    assert resumed.value.code == "approval_pending"
    assert w.executor.count == runs_before
    # The refusal is audited with its code, against the request it aimed at.
    assert refused() == refused_before + 1, f"no approval.refused event with {case['code']}"
    assert w.gate.audit.verify().ok
    # And the request is still approvable by a real approver.
    assert w.approve(pending.approval_id, JOHN).status == "approved"


def test_sponsor_cannot_approve_even_when_it_is_the_only_listed_approver(
    tmp_path: Path,
) -> None:
    path = tmp_path / "only-sponsor.yaml"
    path.write_text(
        "policies:\n"
        "  - name: approve-production-deployments\n"
        "    rules:\n"
        "      - condition: \"action == 'deploy' and environment == 'production'\"\n"
        "        action: require_approval\n"
        f"        approvers: [{AGENT_SPONSOR}]\n",
        encoding="utf-8",
    )
    w = open_world(tmp_path / "state", path, approvers=(AGENT_SPONSOR,))
    try:
        pending = request_approval(w)
        assert pending.approvers == (AGENT_SPONSOR,)
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.approve(pending.approval_id, AGENT_SPONSOR)
        assert exc.value.code == "self_approval"
        assert w.status(pending.approval_id) == "pending"
        assert refusal(w.gate, pending.approval_id) == ["self_approval"]
    finally:
        w.gate.close()


# -- quorum -----------------------------------------------------------------------------------


def test_two_approvals_need_two_distinct_approvers(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", "two_approvals.yaml")
    try:
        pending = request_approval(w)
        assert pending.min_approvals == 2
        assert w.approve(pending.approval_id, JOHN).status == "pending"
        with pytest.raises(opsgate.ApprovalError) as twice:
            w.approve(pending.approval_id, JOHN)
        assert twice.value.code == "already_decided"
        # Same person in another spelling is still the same person.
        with pytest.raises(opsgate.ApprovalError) as spelled:
            w.gate.approvals.approve(
                pending.approval_id, approver="JOHN@company.com", token=w.approver_tokens[JOHN]
            )
        assert spelled.value.code == "already_decided"
        assert w.status(pending.approval_id) == "pending"
        assert decisions_in_db(w.gate, pending.approval_id) == [(JOHN, "approve")]
        with pytest.raises(opsgate.ApprovalError) as early:
            w.gate.resume(pending.approval_id, w.token)
        assert early.value.code == "approval_pending"
        assert w.executor.count == 0

        assert w.approve(pending.approval_id, JANE).status == "approved"
        assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
        assert w.executor.count == 1
        assert refusal(w.gate, pending.approval_id) == [
            "already_decided",
            "already_decided",
            "approval_pending",
        ]
    finally:
        w.gate.close()


def test_two_matching_rules_each_need_their_own_approver(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", "two_rules.yaml", approvers=(JOHN, JANE, SAM))
    try:
        pending = request_approval(w, deploy("production/payments"))
        assert pending.approvers == (JANE, JOHN, SAM)
        assert w.approve(pending.approval_id, JOHN).status == "pending"
        assert w.approve(pending.approval_id, JANE).status == "pending"  # still no security
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.resume(pending.approval_id, w.token)
        assert exc.value.code == "approval_pending"
        assert w.executor.count == 0
        assert w.approve(pending.approval_id, SAM).status == "approved"
        assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"

        # Security alone does not satisfy the SRE rule either.
        other = request_approval(w, deploy("production/payments", version="2.4.2"))
        assert w.approve(other.approval_id, SAM).status == "pending"
    finally:
        w.gate.close()


def test_one_deny_denies_and_the_request_can_never_run(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", "two_approvals.yaml")
    try:
        pending = request_approval(w)
        w.approve(pending.approval_id, JOHN)
        denied = w.deny(pending.approval_id, JANE, comment="not during the incident")
        assert denied.status == "denied"
        assert w.gate.wait_for_approval(pending.approval_id, timeout=1).status == "denied"
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.resume(pending.approval_id, w.token)
        assert exc.value.code == "approval_denied"
        with pytest.raises(opsgate.ApprovalError) as late:
            w.approve(pending.approval_id, JANE)
        assert late.value.code == "approval_denied"
        assert w.executor.count == 0
        assert w.status(pending.approval_id) == "denied"
        assert "approval.denied_by" in audit_types(w.gate)
        assert refusal(w.gate, pending.approval_id) == ["approval_denied", "approval_denied"]
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_a_deny_by_a_single_approver_of_a_one_approval_rule_denies(world: World) -> None:
    pending = request_approval(world)
    assert world.deny(pending.approval_id, JANE).status == "denied"
    with pytest.raises(opsgate.ApprovalError) as exc:
        world.approve(pending.approval_id, JOHN)
    assert exc.value.code == "approval_denied"
    assert world.executor.count == 0


# -- expiry -----------------------------------------------------------------------------------


def test_expired_request_cannot_be_approved(world: World) -> None:
    w = world
    pending = request_approval(w)
    later = time.time() + 2 * HOUR
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.approvals.approve(
            pending.approval_id, approver=JOHN, token=w.approver_tokens[JOHN], now=later
        )
    assert exc.value.code == "approval_expired"
    assert w.gate.approvals.get(pending.approval_id, now=later).status == "expired"
    assert decisions_in_db(w.gate, pending.approval_id) == []
    assert [r.id for r in w.gate.approvals.list(status="expired", now=later)] == [
        pending.approval_id
    ]
    expired = [
        e for e in audit_events(w.gate, "approval.expired") if e["approval"] == pending.approval_id
    ]
    assert len(expired) == 1
    assert refusal(w.gate, pending.approval_id) == ["approval_expired"]


def test_approved_request_cannot_be_resumed_after_expiry(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    later = time.time() + 2 * HOUR
    fresh = w.credential(now=later)  # a valid credential: only the approval is stale
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, fresh, now=later)
    assert exc.value.code == "approval_expired"
    assert w.executor.count == 0
    assert w.gate.approvals.get(pending.approval_id, now=later).status == "expired"
    assert "approval_expired" in refusal(w.gate, pending.approval_id)


def test_expires_in_from_the_rule_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text(
        policy("policies.yaml")
        .read_text(encoding="utf-8")
        .replace(
            'approvers: ["sre-team@company.com"]',
            'approvers: ["sre-team@company.com"]\n        expires_in: 10m',
        ),
        encoding="utf-8",
    )
    w = open_world(tmp_path / "state", path)
    try:
        pending = request_approval(w)
        req = w.gate.approvals.get(pending.approval_id)
        assert req.expires_at - req.created_at == pytest.approx(600)
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.approvals.approve(
                pending.approval_id,
                approver=JOHN,
                token=w.approver_tokens[JOHN],
                now=req.created_at + 601,
            )
        assert exc.value.code == "approval_expired"
    finally:
        w.gate.close()


# -- consumption ----------------------------------------------------------------------------


def test_second_resume_is_refused_as_consumed(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "approval_consumed"
    # Passing the id to execute directly is the same thing.
    with pytest.raises(opsgate.ApprovalError) as direct:
        w.gate.execute(w.token, deploy(), approval_id=pending.approval_id)
    assert direct.value.code == "approval_consumed"
    assert w.executor.count == 1
    assert refusal(w.gate, pending.approval_id) == ["approval_consumed", "approval_consumed"]
    assert (
        len(
            [
                e
                for e in audit_events(w.gate, "approval.consumed")
                if e["approval"] == pending.approval_id
            ]
        )
        == 1
    )


def test_concurrent_resumes_run_exactly_once(tmp_path: Path, database_url: str | None) -> None:
    w = open_world(tmp_path / "state", database_url=database_url)
    try:
        pending = request_approval(w)
        w.approve(pending.approval_id, JOHN)
        barrier = threading.Barrier(8)
        results: list[Any] = []
        lock = threading.Lock()

        def go() -> None:
            barrier.wait()
            try:
                r: Any = w.gate.resume(pending.approval_id, w.token)
            except opsgate.OpsgateError as exc:
                r = exc
            with lock:
                results.append(r)

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        succeeded = [r for r in results if isinstance(r, opsgate.Outcome)]
        refused = [r for r in results if isinstance(r, opsgate.ApprovalError)]
        assert len(results) == 8
        assert len(succeeded) == 1 and succeeded[0].status == "succeeded"
        assert len(refused) == 7
        assert {r.code for r in refused} == {"approval_consumed"}
        assert w.executor.count == 1
        assert w.status(pending.approval_id) == "consumed"
        assert refusal(w.gate, pending.approval_id) == ["approval_consumed"] * 7
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


@pytest.mark.parametrize(
    "changed",
    [
        {"version": "2.4.2"},
        {"artifact_digest": "sha256:" + "cd" * 32},
        {"replicas": 3},
        {"resource": "production/app-api"},
        {"resource": "staging/app-web"},
    ],
    ids=["other-version", "other-artifact", "extra-param", "other-app", "other-environment"],
)
def test_changed_operation_with_the_old_approval_is_a_digest_mismatch(
    world: World, changed: dict[str, Any]
) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    params = {k: v for k, v in changed.items() if k != "resource"}
    other = deploy(changed.get("resource", "production/app-web"), **params)
    assert w.executor.plan(other).digest != pending.digest
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.execute(w.token, other, approval_id=pending.approval_id)
    assert exc.value.code == "digest_mismatch"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    assert refusal(w.gate, pending.approval_id) == ["digest_mismatch"]
    # The approved operation itself still runs, once.
    assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
    assert [p.digest for p in w.executor.runs] == [pending.digest]


def test_another_agent_cannot_use_someone_elses_approval(world: World) -> None:
    w = world
    rogue = w.supervisor.delegate(name="rogue-agent", capabilities=DEPLOY_SCOPE)
    rogue_token = w.credential(rogue)
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, rogue_token)
    assert exc.value.code == "approval_not_yours"
    with pytest.raises(opsgate.ApprovalError) as direct:
        w.gate.execute(rogue_token, deploy(), approval_id=pending.approval_id)
    assert direct.value.code == "approval_not_yours"
    # Even the supervisor that delegated the requester cannot spend it.
    with pytest.raises(opsgate.ApprovalError) as parent:
        w.gate.resume(pending.approval_id, w.credential(w.supervisor))
    assert parent.value.code == "approval_not_yours"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    assert refusal(w.gate, pending.approval_id) == ["approval_not_yours"] * 3
    assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"


# -- resume re-runs steps 1-4 on fresh state -----------------------------------------------------


def test_resume_with_a_revoked_credential_is_refused(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.credential_manager.revoke(w.credential_.jti, reason="rotated out")
    with pytest.raises(opsgate.InvalidCredential) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "revoked"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    assert "credential.rejected" in audit_types(w.gate)


def test_resume_by_a_suspended_agent_is_refused(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.agents.suspend("devops-supervisor", reason="incident review")  # cascades
    with pytest.raises(opsgate.InvalidCredential) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "revoked"  # suspension revokes every live credential
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"


def test_an_approval_asked_for_before_a_suspension_is_not_honoured_after_reinstatement(
    world: World,
) -> None:
    """Suspending an agent (or cutting its credentials) cuts what it asked for before:
    once reinstated it must ask again, so the approval of a request an untrusted agent
    (or a leaked credential) made is never used."""
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.agents.suspend("devops-supervisor", reason="incident review")
    w.gate.agents.reinstate("devops-supervisor", reason="review closed")
    fresh = w.credential()
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, fresh)
    assert exc.value.code == "approval_outlived"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"  # not consumed
    # Asked for again after the reinstatement, it waits for and then gets its approval.
    again = w.gate.execute(fresh, deploy())
    assert isinstance(again, PendingApproval)
    w.approve(again.approval_id, JOHN)
    done = w.gate.resume(again.approval_id, fresh)
    assert isinstance(done, opsgate.Outcome) and done.status == "succeeded"
    assert w.executor.count == 1


def test_an_approval_asked_for_before_the_agents_credentials_were_revoked_is_not_honoured(
    world: World,
) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.credential_manager.revoke_agent(w.agent.did, reason="credential leaked")
    fresh = w.credential()
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, fresh)
    assert exc.value.code == "approval_outlived"
    assert w.executor.count == 0


def test_resume_when_policy_now_denies_is_refused(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.load_policies(policy("production_frozen.yaml"))
    with pytest.raises(opsgate.OperationError) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "operation_denied"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    assert "operation.denied" in audit_types(w.gate)


def test_resume_when_policy_now_needs_more_approvals_is_refused_and_audited(
    world: World,
) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    w.gate.load_policies(policy("two_approvals.yaml"))
    before = w.gate.audit.count()
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "approval_insufficient"
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    # Every refusal is an audit event.
    assert w.gate.audit.count() > before, "approval_insufficient refusal was not audited"
    assert "approval_insufficient" in refusal(w.gate, pending.approval_id)


def test_resume_with_a_forged_token_reveals_nothing_about_approvals(world: World) -> None:
    """Step 1 comes first: an unauthenticated caller cannot probe approval ids."""
    w = world
    pending = request_approval(w)
    forged = w.token[:-4] + ("AAAA" if not w.token.endswith("AAAA") else "BBBB")
    for target in (pending.approval_id, "apr_000000000000000000000000"):
        with pytest.raises(opsgate.OpsgateError) as exc:
            w.gate.resume(target, forged)
        assert isinstance(exc.value, opsgate.InvalidCredential), (
            f"resume({target!r}) with a forged token raised {exc.value!r} before authenticating"
        )
    assert w.status(pending.approval_id) == "pending"


def test_resume_of_an_unknown_approval_is_audited(world: World) -> None:
    before = world.gate.audit.count()
    with pytest.raises(opsgate.ApprovalError) as exc:
        world.gate.resume("apr_000000000000000000000000", world.token)
    assert exc.value.code == "approval_not_found"
    assert world.gate.audit.count() > before, "a refused resume left no audit event"


# -- concurrency of decisions ------------------------------------------------------------------


def _john_stalls_after_reading_decisions(
    w: World, approval_id: str, verb: str = "approve", second: Any = None
) -> tuple[Any, Any]:
    """John's decision reads the request and its decisions, then pauses; `second` runs
    meanwhile (on SQLite it waits for John's write lock; on PostgreSQL it commits)."""
    with Stall(w.gate, "FROM approval_decisions", "approver-john") as stall:
        thread, out = run_in_thread("approver-john", lambda: getattr(w, verb)(approval_id, JOHN))
        assert stall.stalled.wait(10)
        try:
            other: Any = second()
        except Exception as exc:
            other = exc
        thread.join(30)
    return out[0], other


def test_a_deny_racing_an_approval_is_never_overwritten(
    tmp_path: Path, database_url: str | None
) -> None:
    """One deny denies, also when it lands while an approval is being decided."""
    w = open_world(tmp_path / "state", database_url=database_url)
    try:
        pending = request_approval(w)
        _john, jane = _john_stalls_after_reading_decisions(
            w, pending.approval_id, second=lambda: w.deny(pending.approval_id, JANE)
        )
        recorded = dict(decisions_in_db(w.gate, pending.approval_id))
        status = w.status(pending.approval_id)
        if recorded.get(JANE) == "deny":
            assert status == "denied", f"a recorded deny ended {status!r}: {recorded}"
            with pytest.raises(opsgate.ApprovalError) as exc:
                w.gate.resume(pending.approval_id, w.token)
            assert exc.value.code == "approval_denied"
        else:  # SQLite: the deny waited for John's transaction and found it decided
            assert isinstance(jane, opsgate.ApprovalError) and jane.code == "approval_approved"
            assert status == "approved"
        assert w.executor.count == 0
    finally:
        w.gate.close()


def test_two_approvers_deciding_at_once_reach_the_quorum(
    tmp_path: Path, database_url: str | None
) -> None:
    w = open_world(tmp_path / "state", "two_approvals.yaml", database_url=database_url)
    try:
        pending = request_approval(w)
        john, jane = _john_stalls_after_reading_decisions(
            w, pending.approval_id, second=lambda: w.approve(pending.approval_id, JANE)
        )
        assert not isinstance(john, Exception), john
        assert not isinstance(jane, Exception), jane
        assert sorted(decisions_in_db(w.gate, pending.approval_id)) == [
            (JANE, "approve"),
            (JOHN, "approve"),
        ]
        assert w.status(pending.approval_id) == "approved", "two approvals, yet not approved"
    finally:
        w.gate.close()


def test_one_approver_deciding_twice_at_once_is_refused_as_already_decided(
    tmp_path: Path, database_url: str | None
) -> None:
    w = open_world(tmp_path / "state", "two_approvals.yaml", database_url=database_url)
    try:
        pending = request_approval(w)
        first, second = _john_stalls_after_reading_decisions(
            w, pending.approval_id, second=lambda: w.approve(pending.approval_id, JOHN)
        )
        results = [first, second]
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], opsgate.ApprovalError), (
            f"a duplicate decision surfaced as {errors[0]!r}"
        )
        assert errors[0].code == "already_decided"
        assert decisions_in_db(w.gate, pending.approval_id) == [(JOHN, "approve")]
        assert w.status(pending.approval_id) == "pending"
        assert "already_decided" in refusal(w.gate, pending.approval_id)
    finally:
        w.gate.close()


# -- waiting and listing -------------------------------------------------------------------------


def test_wait_for_approval_returns_when_decided_and_times_out_while_pending(
    world: World,
) -> None:
    w = world
    pending = request_approval(w)
    started = time.monotonic()
    assert w.gate.wait_for_approval(pending.approval_id, timeout=0.3).status == "pending"
    assert time.monotonic() - started >= 0.3
    timer = threading.Timer(0.2, lambda: w.approve(pending.approval_id, JANE))
    timer.start()
    try:
        assert w.gate.wait_for_approval(pending.approval_id, timeout=10).status == "approved"
    finally:
        timer.join()


def test_list_filters_by_status(world: World) -> None:
    w = world
    a = request_approval(w)
    b = request_approval(w, deploy(version="2.5.0"))
    c = request_approval(w, deploy(version="2.6.0"))
    w.approve(a.approval_id, JOHN)
    w.deny(b.approval_id, JOHN)
    ids = lambda status: [r.id for r in w.gate.approvals.list(status=status)]  # noqa: E731
    assert ids("approved") == [a.approval_id]
    assert ids("denied") == [b.approval_id]
    assert ids("pending") == [c.approval_id]
    assert len(w.gate.approvals.list()) == 3


# -- policy files: no open doors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "invalid_min_zero.yaml",
        "invalid_negative_min.yaml",
        "invalid_no_approvers.yaml",
        "invalid_empty_approvers.yaml",
        "invalid_min_above_approvers.yaml",
        "invalid_empty_group.yaml",
        "invalid_lookalike_approver.yaml",
    ],
)
def test_approval_rule_without_real_approvers_is_a_load_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(opsgate.PolicyError) as exc:
        opsgate.Gate.open(tmp_path / "state", policies=policy(name))
    assert exc.value.code == "policy_approvers"
    assert name in str(exc.value)
    # Loading it into a running gate fails the same way and keeps the old policies.
    w = open_world(tmp_path / "other")
    try:
        with pytest.raises(opsgate.PolicyError):
            w.gate.load_policies(policy(name))
        assert isinstance(w.gate.execute(w.token, deploy()), PendingApproval)
        assert w.executor.count == 0
    finally:
        w.gate.close()


# -- a deny after the quorum cancels the approval until it is used ----------------------------


class Recorder:
    """A notifier (outside the unit under test) that keeps what it was asked to send."""

    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, event: str, request: Any, text: str) -> None:
        self.sent.append((event, request.status, text))


def test_a_deny_after_the_quorum_cancels_the_approved_request(world: World) -> None:
    w = world
    recorder = Recorder()
    w.gate.approvals.dispatcher.notifiers = [recorder]
    pending = request_approval(w)
    assert w.approve(pending.approval_id, JOHN).status == "approved"
    cancelled = w.deny(pending.approval_id, JANE, comment="wrong release")
    assert cancelled.status == "denied"
    assert [(d.approver, d.decision) for d in cancelled.decisions] == [
        (JOHN, "approve"),
        (JANE, "deny"),
    ]
    for attempt in (
        lambda: w.gate.resume(pending.approval_id, w.token),
        lambda: w.gate.execute(w.token, deploy(), approval_id=pending.approval_id),
    ):
        with pytest.raises(opsgate.ApprovalError) as exc:
            attempt()
        assert exc.value.code == "approval_denied"
    assert w.executor.count == 0
    denied = [
        e
        for e in audit_events(w.gate, "approval.denied_by")
        if e["approval"] == pending.approval_id
    ]
    assert len(denied) == 1
    assert denied[0]["actor"] == JANE and denied[0]["status"] == "denied"
    assert denied[0]["cancelled"] is True
    w.gate.approvals.dispatcher.flush()
    events = [e for e, _, _ in recorder.sent]
    assert events == ["approval.requested", "approval.approved", "approval.cancelled"]
    assert "cancelled by jane@company.com" in recorder.sent[-1][2]
    assert w.gate.audit.verify().ok


def test_the_approver_who_approved_can_withdraw_it(world: World) -> None:
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    withdrawn = w.deny(pending.approval_id, JOHN, comment="approved the wrong one")
    assert withdrawn.status == "denied"
    assert decisions_in_db(w.gate, pending.approval_id) == [(JOHN, "approve"), (JOHN, "deny")]
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, w.token)
    assert exc.value.code == "approval_denied"
    # Approving again, or denying twice, is still refused.
    for decide in (w.approve, w.deny):
        with pytest.raises(opsgate.ApprovalError) as again:
            decide(pending.approval_id, JOHN)
        assert again.value.code == "approval_denied"
    assert w.executor.count == 0


def test_a_pending_request_can_be_withdrawn_by_the_approver_who_approved(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", "two_approvals.yaml")
    try:
        pending = request_approval(w)
        assert w.approve(pending.approval_id, JOHN).status == "pending"
        assert w.deny(pending.approval_id, JOHN).status == "denied"
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.approve(pending.approval_id, JANE)
        assert exc.value.code == "approval_denied"
    finally:
        w.gate.close()


def test_an_approval_cannot_be_cancelled_once_it_ran_or_expired(world: World) -> None:
    w = world
    used = request_approval(w)
    w.approve(used.approval_id, JOHN)
    assert w.gate.resume(used.approval_id, w.token).status == "succeeded"
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.deny(used.approval_id, JANE)
    assert exc.value.code == "approval_consumed"
    assert w.status(used.approval_id) == "consumed"

    stale = request_approval(w, deploy(version="9.9.9"))
    w.approve(stale.approval_id, JOHN)
    later = w.gate.approvals.get(stale.approval_id).expires_at + 1
    with pytest.raises(opsgate.ApprovalError) as late:
        w.gate.approvals.deny(
            stale.approval_id, approver=JANE, token=w.approver_tokens[JANE], now=later
        )
    assert late.value.code == "approval_expired"
    assert w.gate.approvals.get(stale.approval_id, now=later).status == "expired"
    assert refusal(w.gate, used.approval_id) == ["approval_consumed"]
    assert refusal(w.gate, stale.approval_id) == ["approval_expired"]


@pytest.mark.parametrize("case", ATTACKS, ids=[c["id"] for c in ATTACKS])
def test_a_deny_after_the_quorum_by_anyone_not_eligible_changes_nothing(
    attack_world: World, case: dict[str, Any]
) -> None:
    """Only an authenticated, listed approver outside the sponsor chain can cancel."""
    w = attack_world
    runs_before = w.executor.count
    pending = request_approval(w, deploy(version=f"cancel-{case['id']}"))
    assert w.approve(pending.approval_id, JANE).status == "approved"
    target = case.get("approval", pending.approval_id)
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.approvals.deny(
            target, approver=case["approver"], token=_presented(w, case), comment="cancel"
        )
    assert exc.value.code == case["code"], exc.value
    assert w.status(pending.approval_id) == "approved"
    assert decisions_in_db(w.gate, pending.approval_id) == [(JANE, "approve")]
    assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
    assert w.executor.count == runs_before + 1


def test_a_deny_racing_a_resume_either_cancels_it_or_comes_too_late(
    tmp_path: Path, database_url: str | None
) -> None:
    """Exactly one of {executed, denied}: never a run of a denied request, never both."""
    w = open_world(tmp_path / "state", database_url=database_url)
    try:
        outcomes: dict[str, int] = {"executed": 0, "denied": 0}
        for round_ in range(6):
            pending = request_approval(w, deploy(version=f"race-{round_}"))
            w.approve(pending.approval_id, JOHN)
            runs = w.executor.count
            barrier = threading.Barrier(2)
            results: dict[str, Any] = {}

            def resume(pid: str = pending.approval_id) -> None:
                barrier.wait()
                try:
                    results["resume"] = w.gate.resume(pid, w.token)
                except opsgate.OpsgateError as exc:
                    results["resume"] = exc

            def deny(pid: str = pending.approval_id) -> None:
                barrier.wait()
                try:
                    results["deny"] = w.deny(pid, JANE)
                except opsgate.OpsgateError as exc:
                    results["deny"] = exc

            threads = [threading.Thread(target=resume), threading.Thread(target=deny)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            status = w.status(pending.approval_id)
            ran = w.executor.count - runs
            if isinstance(results["resume"], opsgate.Outcome):
                assert ran == 1 and status == "consumed", (status, results)
                assert isinstance(results["deny"], opsgate.ApprovalError)
                assert results["deny"].code == "approval_consumed"
                outcomes["executed"] += 1
            else:
                assert ran == 0 and status == "denied", (status, results)
                assert results["resume"].code == "approval_denied", results
                assert results["deny"].status == "denied"
                outcomes["denied"] += 1
        assert sum(outcomes.values()) == 6
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_a_deny_holding_the_request_wins_over_a_resume(
    tmp_path: Path, database_url: str | None
) -> None:
    """The deny has read the approved request when the resume arrives: the resume must
    not run it (it waits for the deny and finds it denied)."""
    w = open_world(tmp_path / "state", database_url=database_url)
    try:
        pending = request_approval(w)
        w.approve(pending.approval_id, JOHN)
        with Stall(w.gate, "FROM approval_decisions", "approver-jane", seconds=0.5) as stall:
            thread, out = run_in_thread("approver-jane", lambda: w.deny(pending.approval_id, JANE))
            assert stall.stalled.wait(10)
            with pytest.raises(opsgate.ApprovalError) as exc:
                w.gate.resume(pending.approval_id, w.token)
            thread.join(30)
        assert exc.value.code == "approval_denied"
        assert out[0].status == "denied"
        assert w.executor.count == 0
        assert w.status(pending.approval_id) == "denied"
    finally:
        w.gate.close()


# -- approver tokens expire and rotate ------------------------------------------------------------

DAY = 86400.0


def test_an_approver_token_expires_after_its_lifetime(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", "two_rules.yaml", approvers=(JOHN,))
    try:
        issued = time.time() - DAY + 60  # a one-day token with a minute left
        token = w.gate.approvals.add_approver(SAM, ttl_days=1, now=issued)
        assert w.gate.approvals.get_approver(SAM).token_expires_at == pytest.approx(
            issued + DAY, abs=1e-3
        )
        pending = request_approval(w, deploy("production/payments"))
        w.approve(pending.approval_id, JOHN)
        expired_at = issued + DAY
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.approvals.approve(pending.approval_id, approver=SAM, token=token, now=expired_at)
        assert exc.value.code == "approver_token_expired"
        assert token not in str(exc.value)
        # A wrong token for an expired approver says only "unauthenticated".
        with pytest.raises(opsgate.ApprovalError) as wrong:
            w.gate.approvals.approve(
                pending.approval_id, approver=SAM, token=token[:-1], now=expired_at
            )
        assert wrong.value.code == "approver_unauthenticated"
        assert w.status(pending.approval_id) == "pending"
        assert decisions_in_db(w.gate, pending.approval_id) == [(JOHN, "approve")]
        assert refusal(w.gate, pending.approval_id) == [
            "approver_token_expired",
            "approver_unauthenticated",
        ]
        # A moment earlier the same token worked.
        assert (
            w.gate.approvals.approve(
                pending.approval_id, approver=SAM, token=token, now=expired_at - 1
            ).status
            == "approved"
        )
    finally:
        w.gate.close()


def test_an_expired_token_cannot_approve_or_deny_and_rotation_restores_it(world: World) -> None:
    w = world
    old = w.gate.approvals.rotate_approver_token(JOHN, ttl_days=1, now=time.time() - DAY + 60)
    pending = request_approval(w)
    expires = w.gate.approvals.get_approver(JOHN).token_expires_at
    for decide in (w.gate.approvals.approve, w.gate.approvals.deny):
        with pytest.raises(opsgate.ApprovalError) as exc:
            decide(pending.approval_id, approver=JOHN, token=old, now=expires)
        assert exc.value.code == "approver_token_expired"
    assert w.status(pending.approval_id) == "pending"
    assert decisions_in_db(w.gate, pending.approval_id) == []
    # A rotation gives a fresh lifetime from now and kills the old token at once.
    new = w.gate.approvals.rotate_approver_token(JOHN, ttl_days=30)
    rotated = w.gate.approvals.get_approver(JOHN)
    assert rotated.token_expires_at == pytest.approx(rotated.token_issued_at + 30 * DAY, abs=1e-3)
    assert rotated.token_issued_at == pytest.approx(time.time(), abs=5)
    with pytest.raises(opsgate.ApprovalError) as stale:
        w.gate.approvals.approve(pending.approval_id, approver=JOHN, token=old)
    assert stale.value.code == "approver_unauthenticated"  # the old token is dead at once
    assert w.gate.approvals.approve(pending.approval_id, approver=JOHN, token=new).status == (
        "approved"
    )
    rotations = audit_events(w.gate, "approver.token_rotated")
    assert rotations[-1]["approver"] == JOHN
    assert rotations[-1]["token_expires_at"] == pytest.approx(rotated.token_expires_at, abs=1e-3)
    for record in w.gate.audit.tail(10_000):
        assert new not in str(record.event) and old not in str(record.event)


def test_the_default_token_lifetime_comes_from_the_configuration(tmp_path: Path) -> None:
    w = open_world(tmp_path / "a", approvers=(JOHN,))
    short = open_world(tmp_path / "b", approvers=(JOHN,), approvals={"token_ttl_days": 7})
    try:
        for world_, days in ((w, 90), (short, 7)):
            a = world_.gate.approvals.get_approver(JOHN)
            assert a.token_expires_at - a.token_issued_at == pytest.approx(days * DAY, abs=1e-3)
            added = audit_events(world_.gate, "approver.added")[-1]
            assert added["token_expires_at"] == pytest.approx(a.token_expires_at, abs=1e-3)
        with pytest.raises(opsgate.ConfigError):
            opsgate.Gate.open(tmp_path / "c", approvals={"token_ttl_days": 0})
    finally:
        w.gate.close()
        short.gate.close()


@pytest.mark.parametrize("ttl", [0, -1, 3651, 10**30, 1.5, True, "30"])
def test_a_token_lifetime_outside_whole_days_1_to_3650_is_refused(world: World, ttl: Any) -> None:
    before = world.gate.approvals.list_approvers()
    for call in (
        lambda: world.gate.approvals.add_approver("sam@company.com", ttl_days=ttl),
        lambda: world.gate.approvals.rotate_approver_token(JOHN, ttl_days=ttl),
    ):
        with pytest.raises(opsgate.ApprovalError) as exc:
            call()
        assert exc.value.code == "token_ttl_invalid"
        if type(ttl) is int:  # the number itself, not its type
            assert exc.value.message.endswith(f"got {ttl}"), exc.value.message
    assert world.gate.approvals.list_approvers() == before
    # John's token was not replaced.
    pending = request_approval(world)
    assert world.approve(pending.approval_id, JOHN).status == "approved"


def test_approvers_are_listed_with_their_token_age_and_expiry(world: World) -> None:
    w = world
    t0 = time.time() - 10 * DAY
    w.gate.approvals.add_approver("sam@company.com", ttl_days=30, now=t0)
    now = time.time()
    listed = {a.email: a for a in w.gate.approvals.list_approvers()}
    assert sorted(listed) == [JANE, JOHN, "sam@company.com"]
    sam = listed["sam@company.com"]
    assert sam.status(now) == "active"
    assert sam.token_age_days(now) == pytest.approx(10, abs=0.01)
    assert sam.status(t0 + 30 * DAY) == "expired"
    row = sam.to_dict(now)
    assert row["approver"] == "sam@company.com" and row["token_age_days"] == 10.0
    assert row["status"] == "active" and row["token_expires_at"].startswith("20")
    assert "token" not in row and "token_hash" not in row


def test_existing_approvers_get_the_default_expiry_when_the_schema_is_upgraded(
    tmp_path: Path, database_url: str | None
) -> None:
    """A database from before token expiry: its tokens expire 90 days after creation."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, text

    from opsgate.store import MIGRATIONS, Store

    state = tmp_path / "state"
    state.mkdir()
    store = Store.for_state_dir(state, database_url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(store.url)
    created = time.time() - 100 * DAY
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        conn.execute(
            text(
                "INSERT INTO approvers (email, token_hash, created_at) "
                "VALUES ('old@company.com', :h, :t), ('new@company.com', :h, :n)"
            ),
            {"h": "0" * 64, "t": created, "n": time.time()},
        )
        conn.commit()
    engine.dispose()
    store.dispose()
    # The database holds no gate yet: creating one in it is init's explicit act.
    with opsgate.Gate.init(state, database_url=database_url) as gate:
        old = gate.approvals.get_approver("old@company.com")
        assert old.token_issued_at == pytest.approx(created, abs=1e-3)
        assert old.token_expires_at == pytest.approx(created + 90 * DAY, abs=1e-3)
        assert old.status(time.time()) == "expired"
        assert gate.approvals.get_approver("new@company.com").status(time.time()) == "active"


# -- sponsors far up the chain and the earliest expiry ---------------------------------------------


@pytest.mark.parametrize("levels_up", [1, 2, 3])
def test_the_sponsor_of_any_ancestor_cannot_approve(tmp_path: Path, levels_up: int) -> None:
    """A requester at depth 3: the sponsors of its parent, grandparent and root are all
    barred, not only the nearest one (every approval attack elsewhere is two levels)."""
    sponsors = ["root-owner@company.com", "lead-one@company.com", "lead-two@company.com"]
    path = tmp_path / "chain.yaml"
    path.write_text(
        "policies:\n"
        "  - name: approve-production-deployments\n"
        "    rules:\n"
        "      - condition: \"action == 'deploy' and environment == 'production'\"\n"
        "        action: require_approval\n"
        "        approvers: [sre-team@company.com]\n"
        "groups:\n"
        f"  sre-team@company.com: [{JOHN}, {', '.join(sponsors)}]\n",
        encoding="utf-8",
    )
    w = open_world(tmp_path / "state", path, approvers=(JOHN, *sponsors))
    try:
        root = w.gate.register_agent("root", DEPLOY_SCOPE, sponsor=sponsors[0], trust_score=920)
        one = root.delegate(name="level-one", capabilities=DEPLOY_SCOPE, sponsor=sponsors[1])
        two = one.delegate(name="level-two", capabilities=DEPLOY_SCOPE, sponsor=sponsors[2])
        three = two.delegate(
            name="level-three", capabilities=DEPLOY_SCOPE, sponsor="owner-three@company.com"
        )
        assert w.gate.agents.state(three.did).depth == 3
        pending = w.gate.execute(w.credential(three), deploy())
        assert isinstance(pending, PendingApproval)
        barred = sponsors[3 - levels_up]  # 1 up: level-two's sponsor; 3 up: the root's
        for decide in (w.approve, w.deny):
            with pytest.raises(opsgate.ApprovalError) as exc:
                decide(pending.approval_id, barred)
            assert exc.value.code == "self_approval"
        assert w.status(pending.approval_id) == "pending"
        assert decisions_in_db(w.gate, pending.approval_id) == []
        assert refusal(w.gate, pending.approval_id) == ["self_approval", "self_approval"]
        assert w.approve(pending.approval_id, JOHN).status == "approved"
    finally:
        w.gate.close()


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [("2h", "10m", 600), ("10m", "2h", 600), (None, "2h", 3600), ("30m", None, 1800)],
    ids=["shorter-second", "shorter-first", "default-is-shorter", "default-is-longer"],
)
def test_with_several_matched_rules_the_approval_expires_at_the_earliest(
    tmp_path: Path, first: str | None, second: str | None, expected: int
) -> None:
    def rule(condition: str, group: str, expires_in: str | None) -> str:
        extra = f"        expires_in: {expires_in}\n" if expires_in else ""
        return (
            f'      - condition: "{condition}"\n'
            "        action: require_approval\n"
            f"        approvers: [{group}]\n" + extra
        )

    path = tmp_path / "two-expiries.yaml"
    path.write_text(
        "policies:\n"
        "  - name: production\n"
        "    rules:\n"
        + rule("action == 'deploy' and environment == 'production'", "sre-team@company.com", first)
        + "  - name: payments\n"
        "    rules:\n"
        + rule("resource == 'production/payments'", "security@company.com", second)
        + "groups:\n"
        f"  sre-team@company.com: [{JOHN}, {JANE}]\n"
        f"  security@company.com: [{SAM}]\n",
        encoding="utf-8",
    )
    w = open_world(tmp_path / "state", path, approvers=(JOHN, JANE, SAM))
    try:
        pending = request_approval(w, deploy("production/payments"))
        req = w.gate.approvals.get(pending.approval_id)
        assert len(req.requirements) == 2
        assert req.expires_at - req.created_at == pytest.approx(expected, abs=1e-3)
        w.approve(pending.approval_id, JOHN)
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.approvals.approve(
                pending.approval_id,
                approver=SAM,
                token=w.approver_tokens[SAM],
                now=req.created_at + expected + 1,
            )
        assert exc.value.code == "approval_expired"
    finally:
        w.gate.close()


# -- flooding the approvers ---------------------------------------------------------------


def test_an_agent_cannot_flood_the_approvers_with_pending_requests(tmp_path: Path) -> None:
    """Each request is announced to every approver: an agent looping on a production
    deploy (or burying one request among many look-alikes) is stopped at
    approvals.max_pending_per_agent waiting requests, until one is decided or expires."""
    w = open_world(tmp_path / "state")  # the default limit: 10
    other = w.supervisor.delegate(name="other-agent", capabilities=DEPLOY_SCOPE)
    try:
        ids = [request_approval(w, deploy(noise=f"try {i}")).approval_id for i in range(10)]
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.execute(w.token, deploy(noise="try 10"))
        assert exc.value.code == "approval_limit"
        assert [r.id for r in w.gate.approvals.list(status="pending")] == ids
        refused = audit_events(w.gate, "operation.refused")[-1]
        assert refused["code"] == "approval_limit" and refused["actor"] == w.agent.did
        assert w.executor.count == 0
        # Another agent is not held back by this one's requests.
        assert isinstance(
            w.gate.execute(w.credential(other), deploy(noise="other")), PendingApproval
        )
        # A decided request frees its place; an approved one waiting to run does not count.
        w.deny(ids[0], JOHN)
        w.approve(ids[1], JOHN)
        request_approval(w, deploy(noise="try 11"))
        request_approval(w, deploy(noise="try 12"))
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.execute(w.token, deploy(noise="try 13"))
        assert exc.value.code == "approval_limit"
        # Expired ones free their places too.
        later = w.gate.approvals.get(ids[-1]).expires_at + 1
        fresh = w.credential(now=later - 60)
        assert isinstance(w.gate.execute(fresh, deploy(noise="try 14"), now=later), PendingApproval)
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_requests_cut_with_the_agents_credentials_free_their_places(tmp_path: Path) -> None:
    """Requests asked for before the agent's credentials were cut can never run
    (approval_outlived): they must not keep a reinstated agent from asking again."""
    w = open_world(tmp_path / "state", approvals={"max_pending_per_agent": 2})
    try:
        request_approval(w, deploy(noise="1"))
        request_approval(w, deploy(noise="2"))
        w.gate.credential_manager.revoke_agent(w.agent.did, reason="credential leaked")
        assert isinstance(w.gate.execute(w.credential(), deploy(noise="3")), PendingApproval)
    finally:
        w.gate.close()


def test_the_pending_limit_comes_from_the_configuration(tmp_path: Path) -> None:
    w = open_world(tmp_path / "state", approvals={"max_pending_per_agent": 2})
    try:
        request_approval(w, deploy(noise="1"))
        request_approval(w, deploy(noise="2"))
        with pytest.raises(opsgate.ApprovalError) as exc:
            w.gate.execute(w.token, deploy(noise="3"))
        assert exc.value.code == "approval_limit"
        assert w.gate.audit.verify().ok
    finally:
        w.gate.close()


def test_the_pending_limit_is_configured_within_bounds(tmp_path: Path) -> None:
    for bad in (0, -1, 10_001, 2.5, "many"):
        with pytest.raises(opsgate.ConfigError):
            opsgate.Gate.open(tmp_path / f"c{bad}", approvals={"max_pending_per_agent": bad})


def test_an_alias_that_lengthens_a_capability_past_the_limit_is_refused_typed(
    tmp_path: Path, database_url: str | None
) -> None:
    """`deploy:prod/<app>` of 256 characters is 262 once `prod` reads `production`: the
    canonical capability the approval request stores must keep the grammar's limit
    (PostgreSQL refused the row: internal_error, a 500 over HTTP, and no request)."""
    w = open_world(
        tmp_path / "state",
        database_url=database_url,
        environments={"production": {"aliases": ["prod"], "protected": True}, "staging": {}},
    )
    try:
        op = deploy("prod/" + "a" * (256 - len("deploy:prod/")))
        assert len(op.capability) == 256
        with pytest.raises(opsgate.CapabilityError) as exc:
            w.gate.execute(w.token, op)
        assert exc.value.code == "capability_malformed"
        assert "longer than 256" in exc.value.message
        assert w.gate.approvals.list() == []
        refused = audit_events(w.gate, "operation.refused")[-1]
        assert refused["code"] == "capability_malformed"
        # Within the limit once canonical, it is an ordinary request.
        fits = deploy("prod/" + "a" * (256 - len("deploy:production/")))
        assert isinstance(w.gate.execute(w.token, fits), PendingApproval)
    finally:
        w.gate.close()


def test_resume_after_the_policy_shortened_the_approvals_life_is_refused(
    world: World, tmp_path: Path
) -> None:
    """Resuming re-decides with the current policy: an approval given under a rule that
    let it live an hour is too old 20 minutes later once that rule says 10 minutes
    (the operator who shortens it means the approvals already given too)."""
    w = world
    pending = request_approval(w)
    w.approve(pending.approval_id, JOHN)
    created = w.gate.approvals.get(pending.approval_id).created_at
    shorter = tmp_path / "ten-minutes.yaml"
    shorter.write_text(
        policy("policies.yaml")
        .read_text(encoding="utf-8")
        .replace(
            'approvers: ["sre-team@company.com"]\n',
            'approvers: ["sre-team@company.com"]\n        expires_in: 10m\n',
        ),
        encoding="utf-8",
    )
    assert "expires_in: 10m" in shorter.read_text(encoding="utf-8")
    w.gate.load_policies(shorter)
    later = created + 20 * 60
    with pytest.raises(opsgate.ApprovalError) as exc:
        w.gate.resume(pending.approval_id, w.credential(now=later - 60), now=later)
    assert exc.value.code == "approval_insufficient"
    assert "10 min" in exc.value.message
    assert w.executor.count == 0
    assert w.status(pending.approval_id) == "approved"
    assert "approval_insufficient" in refusal(w.gate, pending.approval_id)
    # Within the shorter life, or under the rule it was given under, it runs.
    w.gate.load_policies(policy("policies.yaml"))
    outcome = w.gate.resume(pending.approval_id, w.credential(now=later - 60), now=later)
    assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded"
