"""What an operator does on the CLI (or over HTTP) is the operator's: audited with the
operator as the actor and charged to no agent; `creds revoke` of an id this gate never issued is
`not_found`; `creds revoke --agent` says it leaves the agent active; and `agents
suspend|reinstate|revoke` count only the agents whose status changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import audit_events
from server_helpers import open_api
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.errors import CredentialError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(state: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--state-dir", str(state), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    with opsgate.Gate.init(s) as gate:
        sup = gate.register_agent(
            "sup",
            ["deploy:staging", "deploy:production"],
            sponsor="ops@company.com",
            trust_score=920,
        )
        a = sup.delegate("a", ["deploy:staging", "deploy:production"])
        b = a.delegate("b", ["deploy:staging"])
        b.delegate("c", ["deploy:staging"])
        a.delegate("d", ["deploy:staging"])
    return s


def _scores(state: Path) -> dict[str, int]:
    with opsgate.Gate.open(state, create=False) as gate:
        return {a.name: a.trust_score for a in gate.agents.list()}


# -- N7: an operator's typo is the operator's ---------------------------------------------------


@pytest.mark.parametrize(
    "scope", ["deploy:productoin", "read:secrets/db", "deploy:*", "deploy:staging/../x"]
)
def test_an_operators_refused_issue_is_audited_as_the_operators_and_charges_nothing(
    state: Path, scope: str
) -> None:
    before = _scores(state)
    code, out, err = run(state, "creds", "issue", "a", "-s", scope)
    assert code == 1 and out == ""
    assert err.startswith("error [")
    assert _scores(state) == before
    with opsgate.Gate.open(state, create=False) as gate:
        refused = audit_events(gate, "credential.refused")
        assert len(refused) == 1
        assert refused[0]["actor"].startswith("operator:")
        assert refused[0]["agent"] == gate.agents.get("a").did
        assert audit_events(gate, "trust.changed") == []


def test_an_agent_asking_for_more_than_its_grants_is_still_charged(state: Path) -> None:
    with opsgate.Gate.open(state, create=False) as gate:
        a = gate.agents.get("a")
        before = a.trust_score
        with pytest.raises(CredentialError) as info:
            gate.credential_manager.issue_credential(a.did, ["read:secrets/db"])
        assert info.value.code == "scope_not_covered"
        assert a.trust_score < before
        assert audit_events(gate, "credential.refused")[-1]["actor"] == a.did


def test_a_credential_the_operator_issues_names_the_operator_and_the_agent(state: Path) -> None:
    code, out, err = run(state, "creds", "issue", "a", "-s", "deploy:staging", "--json")
    assert code == 0, err
    issued = json.loads(out)
    with opsgate.Gate.open(state, create=False) as gate:
        event = audit_events(gate, "credential.issued")[-1]
        assert event["jti"] == issued["jti"]
        assert event["actor"].startswith("operator:")
        assert event["agent"] == gate.agents.get("a").did
        assert gate.credential_manager.verify(issued["token"]).sub == event["agent"]


@pytest.mark.parametrize("who", ["", "   ", 5])
def test_requested_by_must_name_someone(state: Path, who: object) -> None:
    with opsgate.Gate.open(state, create=False) as gate:
        head = gate.audit.head()
        with pytest.raises(CredentialError) as info:
            gate.credential_manager.issue_credential(
                gate.agents.get("a").did,
                ["deploy:staging"],
                requested_by=who,  # type: ignore[arg-type]
            )
        assert info.value.code == "operator_invalid"
        assert gate.audit.head() == head


# -- N8: revoking an id never issued ------------------------------------------------------------


def test_revoking_a_jti_never_issued_is_not_found_and_changes_nothing(state: Path) -> None:
    with opsgate.Gate.open(state, create=False) as gate:
        cred = gate.credential_manager.issue_credential(
            gate.agents.get("a").did, ["deploy:staging"]
        )
        head = gate.audit.head()
    # Never issued; a LIKE wildcard in a jti ("_") must not match another credential.
    for jti in ["A" * 22, cred.jti[:-1] + ("B" if cred.jti[-1] != "B" else "C"), "_" * 22]:
        code, out, err = run(state, "creds", "revoke", jti)
        assert code == 1 and out == "", (jti, out)
        assert err.startswith("error [not_found]"), err
    with opsgate.Gate.open(state, create=False) as gate:
        assert gate.audit.head()[0] == head[0]
        assert gate.credential_manager.verify(cred.token).jti == cred.jti
        with pytest.raises(CredentialError) as info:
            gate.credential_manager.revoke("Z" * 22)
        assert info.value.code == "not_found"
    code, out, err = run(state, "creds", "revoke", cred.jti)
    assert code == 0 and cred.jti in out, err
    code, out, err = run(state, "creds", "revoke", cred.jti)  # idempotent
    assert code == 0, err


def test_a_credential_issued_by_another_gate_is_not_found_here(state: Path, tmp_path: Path) -> None:
    with opsgate.Gate.init(tmp_path / "other") as other:
        agent = other.register_agent("x", ["deploy:staging"], sponsor="ops@company.com")
        foreign = other.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    code, _, err = run(state, "creds", "revoke", foreign.jti)
    assert code == 1 and err.startswith("error [not_found]")


# -- N9: what revoke --agent does, said where it is used ----------------------------------------


def test_creds_revoke_agent_says_the_agent_stays_active_and_points_at_suspend(state: Path) -> None:
    code, out, _ = run(state, "creds", "revoke", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "can get new ones" in text and "agents suspend" in text
    code, out, err = run(state, "creds", "revoke", "--agent", "a", "--reason", "rotate")
    assert code == 0, err
    said = " ".join(out.split())
    assert "remain active" in said and "opsgate agents suspend" in said
    # ... which is true: the agent gets a new credential right away.
    code, _, err = run(state, "creds", "issue", "a", "-s", "deploy:staging")
    assert code == 0, err
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`creds revoke --agent` cuts off the credentials" in readme
    assert "To stop an agent, `opsgate agents suspend` it" in readme


# -- N10: counts of what changed ------------------------------------------------------------------


def test_suspend_reinstate_and_revoke_count_what_changed(state: Path) -> None:
    def did(name: str) -> str:
        with opsgate.Gate.open(state, create=False) as gate:
            return gate.agents.get(name).did

    assert run(state, "agents", "revoke", "c", "--reason", "gone")[1].strip() == (
        "revoked 1 agent(s)"
    )
    assert run(state, "agents", "suspend", "b", "--reason", "look")[1].strip() == (
        "suspended 1 agent(s)"  # b; c was revoked before
    )
    code, out, err = run(state, "agents", "suspend", "a", "--reason", "look")
    assert code == 0, err
    assert out.strip() == "suspended 2 agent(s)"  # a and d; b, c unchanged
    code, out, err = run(state, "agents", "suspend", "a", "--reason", "again")
    assert out.strip() == "suspended 0 agent(s)"
    code, out, err = run(state, "agents", "reinstate", "a", "--reason", "fine")
    assert out.strip() == "reinstated 2 agent(s)", err  # a and d; b has its own suspension
    code, out, err = run(state, "agents", "reinstate", "a", "--reason", "fine again")
    assert out.strip() == "reinstated 0 agent(s)", err
    code, out, err = run(state, "agents", "revoke", "a", "--reason", "done")
    assert out.strip() == "revoked 3 agent(s)", err  # a, b (suspended), d; c already
    with opsgate.Gate.open(state, create=False) as gate:
        events = audit_events(gate, "agent.revoked")
        assert set(events[-1]["affected"]) == {did("a"), did("b"), did("d")}
        assert set(events[-1]["credentials_revoked"]) == {did(n) for n in "abcd"}
        assert all(e["actor"].startswith("operator:") for e in events)
        assert {a.name: a.status for a in gate.agents.list()} == {
            "sup": "active",
            "a": "revoked",
            "b": "revoked",
            "c": "revoked",
            "d": "revoked",
        }


def test_revoke_finds_issued_credentials_on_both_stores(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(tmp_path / "s", database_url=database_url) as gate:
        agent = gate.register_agent("a", ["deploy:staging"], sponsor="ops@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        twin = cred.jti[:5] + "_" + cred.jti[6:]  # "_" is a LIKE wildcard
        for jti in ("A" * 22, twin if twin != cred.jti else "B" * 22):
            with pytest.raises(CredentialError) as info:
                gate.credential_manager.revoke(jti)
            assert info.value.code == "not_found"
        gate.credential_manager.revoke(cred.jti)
        with pytest.raises(opsgate.InvalidCredential) as refused:
            gate.credential_manager.verify(cred.token)
        assert refused.value.code == "revoked"


# -- who handed out a token is on the record ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "event"),
    [
        (("approvers", "add", "rev@company.com"), "approver.added"),
        (("approvers", "rotate", "rev@company.com"), "approver.token_rotated"),
        (("operators", "add", "ops"), "operator.added"),
        (("operators", "rotate", "ops"), "operator.token_rotated"),
    ],
)
def test_handing_out_an_approver_or_operator_token_names_the_operator(
    state: Path, args: tuple[str, ...], event: str
) -> None:
    """Who registered an approver (someone who may approve production) or an
    operator is the operator on the CLI, as for every other operator act."""
    if args[1] == "rotate":
        assert run(state, args[0], "add", args[2])[0] == 0
    code, out, err = run(state, *args)
    assert code == 0, err
    token = out.strip()
    with opsgate.Gate.open(state, create=False) as gate:
        events = audit_events(gate, event)
    assert events[-1]["actor"].startswith("operator:"), events[-1]
    assert token not in json.dumps(events)


# -- an operator's registration or delegation is the operator's ----------------------------------


def test_an_operators_refused_delegations_are_the_operators_and_charge_nothing(
    state: Path,
) -> None:
    """A delegation beyond the parent's grants asked for on the CLI is the operator's
    mistake: six of them used to cost the parent 6 x 75 trust, suspending it, its
    subtree and every credential they held, audited as the agent's escalation."""
    before = _scores(state)
    for i in range(6):
        code, _, err = run(state, "agents", "delegate", "b", f"x{i}", "-c", "deploy:production")
        assert code == 1 and "delegation_not_covered" in err
    assert _scores(state) == before
    with opsgate.Gate.open(state, create=False) as gate:
        b = gate.agents.get("b")
        assert b.status == "active" and gate.agents.get("c").status == "active"
        refused = gate.audit.tail(6, event_type="delegation.refused")
        assert not gate.audit.tail(10, event_type="trust.changed")
    assert len(refused) == 6
    assert all(r.actor.startswith("operator:") and r.event["agent"] == b.did for r in refused)


def test_an_agent_delegating_beyond_its_grants_is_still_charged(state: Path) -> None:
    with opsgate.Gate.open(state, create=False) as gate:
        b = gate.agents.get("b")
        before = b.trust_score
        with pytest.raises(opsgate.DelegationError):
            b.delegate("x", ["deploy:production"])
        assert gate.agents.get("b").trust_score < before


def test_a_registration_or_delegation_on_the_cli_names_the_operator(state: Path) -> None:
    code, _, err = run(
        state, "agents", "register", "r", "-c", "deploy:staging", "--sponsor", "ops@company.com"
    )
    assert code == 0, err
    code, _, err = run(state, "agents", "delegate", "a", "a2", "-c", "deploy:staging")
    assert code == 0, err
    with opsgate.Gate.open(state, create=False) as gate:
        registered = gate.audit.tail(1, event_type="agent.registered")[0]
        delegated = gate.audit.tail(1, event_type="agent.delegated")[0]
        a = gate.agents.get("a")
    assert registered.actor.startswith("operator:"), registered
    assert delegated.actor.startswith("operator:") and delegated.event["parent"] == a.did


def test_over_http_the_operator_is_named_and_the_parent_is_not_charged(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    gate = api.gate
    sup = gate.agents.get("devops-supervisor")
    for i in range(6):  # a trust score above the parent's: trust_above_parent
        r = api.client.post(
            "/v1/agents/devops-supervisor/delegate",
            json={"name": f"x{i}", "capabilities": ["deploy:staging"], "trust_score": 1000},
            headers=api.operator(),
        )
        assert r.status_code == 422 and r.json()["code"] == "trust_above_parent", r.text
    after = gate.agents.get("devops-supervisor")
    assert after.status == "active" and after.trust_score == sup.trust_score
    refused = gate.audit.tail(6, event_type="delegation.refused")
    assert all(r.actor == "operator:ops" and r.event["agent"] == sup.did for r in refused)
    r = api.client.post(
        "/v1/agents",
        json={"name": "n1", "capabilities": ["deploy:staging"], "sponsor": "a@company.com"},
        headers=api.operator(),
    )
    assert r.status_code == 201, r.text
    r = api.client.post(
        "/v1/agents/devops-supervisor/delegate",
        json={"name": "n2", "capabilities": ["deploy:staging"]},
        headers=api.operator(),
    )
    assert r.status_code == 201, r.text
    assert gate.audit.tail(1, event_type="agent.registered")[0].actor == "operator:ops"
    delegated = gate.audit.tail(1, event_type="agent.delegated")[0]
    assert delegated.actor == "operator:ops" and delegated.event["parent"] == sup.did


def test_an_unnamed_operator_is_refused(state: Path) -> None:
    with opsgate.Gate.open(state, create=False) as gate:
        with pytest.raises(opsgate.AgentError) as info:
            gate.register_agent("r", ["deploy:staging"], "ops@company.com", actor=" ")
        assert info.value.code == "operator_invalid"
        with pytest.raises(opsgate.AgentError) as info:
            gate.agents.get("a").delegate("a3", ["deploy:staging"], requested_by="")
        assert info.value.code == "operator_invalid"
