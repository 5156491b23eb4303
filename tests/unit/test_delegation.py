"""Delegation: escalation cases as data (tests/data/delegation_cases.yaml) and cascades."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

import opsgate
from opsgate import errors
from opsgate.store import schema

CASES_FILE = Path(__file__).parents[1] / "data" / "delegation_cases.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
ROOT_CAPABILITIES = [
    "deploy:staging",
    "deploy:production",
    "read:secrets",
    "write:secrets",
    "migrate:database",
    "read:monitoring",
]


def build_tree(gate: opsgate.Gate) -> dict[str, opsgate.Agent]:
    root = gate.register_agent(
        "devops-supervisor",
        capabilities=ROOT_CAPABILITIES,
        sponsor="platform-team@company.com",
        trust_score=920,
        ttl=timedelta(hours=2),
    )
    app = root.delegate(
        "app-deployer",
        ["deploy:production/app-web", "read:secrets/production/app", "read:monitoring"],
        trust_score=700,
    )
    level2 = app.delegate("level2", ["deploy:production/app-web", "read:secrets/production/app"])
    level3 = level2.delegate("level3", ["deploy:production/app-web"])
    short = root.delegate("short-lived", ["deploy:staging"], ttl=600)
    paused = root.delegate("paused", ["deploy:staging"])
    retired = root.delegate("retired", ["deploy:staging"])
    gate.agents.suspend(paused.did, reason="under investigation")
    gate.agents.revoke(retired.did, reason="decommissioned")
    agents = [root, app, level2, level3, short, paused, retired]
    return {a.name: a for a in agents}


TREE = ["devops-supervisor", "app-deployer", "level2", "level3", "short-lived", "paused", "retired"]


@pytest.fixture(scope="module")
def tree_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The case tree, built once; each case opens its own copy of the state dir."""
    path = tmp_path_factory.mktemp("delegation") / "state"
    with opsgate.Gate.open(path) as gate:
        build_tree(gate)
    return path


@pytest.fixture
def tree_gate(tree_template: Path, tmp_path: Path) -> Iterator[opsgate.Gate]:
    path = tmp_path / "state"
    shutil.copytree(tree_template, path)
    with opsgate.Gate.open(path) as gate:
        yield gate


def agent_count(gate: opsgate.Gate) -> int:
    with gate.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.agents)).scalar_one())


def key_files(gate: opsgate.Gate) -> set[str]:
    return {p.name for p in (gate.state_dir / "agent-keys").iterdir()}


def concrete(capability: str) -> str:
    """A concrete capability inside a (possibly wildcard) grant (a wildcard may stand
    where an environment goes, `secrets/<env>/...`: fill in a declared one)."""
    return capability.replace("/**", "/staging/y").replace("/*", "/staging")


def test_case_file_is_well_formed() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    refused = [c for c in CASES if c.get("error")]
    assert len(refused) >= 12
    assert len(CASES) - len(refused) >= 3
    for case in CASES:
        assert set(case) <= {
            "id",
            "parent",
            "name",
            "capabilities",
            "ttl",
            "trust_score",
            "error",
            "code",
        }, case["id"]
        if case.get("error"):
            assert issubclass(getattr(errors, case["error"]), opsgate.OpsgateError)
            assert case["code"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_delegation_case(tree_gate: opsgate.Gate, case: dict[str, Any]) -> None:
    gate = tree_gate
    parent = gate.agents.get(case["parent"])
    name = case.get("name", "child")
    kwargs: dict[str, Any] = {}
    if "ttl" in case:
        kwargs["ttl"] = case["ttl"]
    if "trust_score" in case:
        kwargs["trust_score"] = case["trust_score"]
    agents_before, keys_before = agent_count(gate), key_files(gate)
    head = gate.audit.head()[0]

    if case.get("error"):
        error = getattr(errors, case["error"])
        with pytest.raises(error) as info:
            parent.delegate(name, case["capabilities"], **kwargs)
        assert type(info.value) is error
        assert info.value.code == case["code"], info.value.message
        # Nothing was created: no agent row, no private key left behind.
        assert agent_count(gate) == agents_before
        assert key_files(gate) == keys_before
        if error in (errors.DelegationError, errors.CapabilityError):
            refused = gate.audit.tail(1, event_type="delegation.refused")
            assert refused and refused[0].seq > head
            assert refused[0].event["code"] == case["code"]
            assert refused[0].actor == parent.did
        return

    t = time.time()
    child = parent.delegate(name, case["capabilities"], **kwargs)
    expected_caps = list(dict.fromkeys(case["capabilities"]))
    assert child.capabilities == expected_caps
    assert child.parent_did == parent.did and child.depth == parent.depth + 1
    assert child.depth <= gate.config.limits.max_delegation_depth
    assert child.status == "active"
    assert child.to_dict()["chain_valid"] is True
    assert child.trust_score <= parent.effective_trust
    assert child.trust_score == case.get("trust_score", parent.effective_trust)
    assert parent.expires_at is not None and child.expires_at is not None
    assert child.expires_at <= parent.expires_at
    if "ttl" in case:
        assert child.expires_at.timestamp() == pytest.approx(t + case["ttl"], abs=5)
    assert agent_count(gate) == agents_before + 1
    delegated = gate.audit.tail(1, event_type="agent.delegated")[0]
    assert delegated.seq > head and delegated.event["agent"] == child.did
    # The child can use what it was given, and nothing its parent kept back.
    cm = gate.credential_manager
    cred = cm.issue_credential(child.did, expected_caps)
    assert cm.verify(cred.token).sub == child.did
    decision = gate.authorize(cred.token, concrete(expected_caps[0]))
    assert decision.violation is None, decision.reasons  # in scope and granted
    with pytest.raises(opsgate.CredentialError) as info:
        cm.issue_credential(child.did, ["migrate:database"])
    assert info.value.code == "scope_not_covered"


# -- cascades ------------------------------------------------------------------------------------


@pytest.fixture
def family(gate: opsgate.Gate) -> dict[str, opsgate.Agent]:
    """root → a → b → c, and a → d."""
    root = gate.register_agent(
        "root", ROOT_CAPABILITIES, sponsor="platform-team@company.com", trust_score=920
    )
    a = root.delegate("a", ["deploy:staging", "read:secrets"])
    b = a.delegate("b", ["deploy:staging"])
    c = b.delegate("c", ["deploy:staging"])
    d = a.delegate("d", ["read:secrets"])
    return {x.name: x for x in (root, a, b, c, d)}


def _creds(gate: opsgate.Gate, family: dict[str, opsgate.Agent]) -> dict[str, str]:
    cm = gate.credential_manager
    out = {}
    for name, agent in family.items():
        token = cm.issue_credential(agent.did, [agent.capabilities[0]]).token
        cm.verify(token)  # verified once: cached
        out[name] = token
    return out


def _refused(gate: opsgate.Gate, token: str) -> str:
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(token)
    return info.value.code


def test_suspension_cascades_and_stops_credentials_on_the_next_call(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    tokens = _creds(gate, family)
    affected = gate.agents.suspend("a", reason="anomaly")
    assert set(affected) == {family[n].did for n in "abcd"}
    for n in "abcd":
        assert family[n].status == "suspended"
        assert _refused(gate, tokens[n]) in ("revoked", "agent_suspended")
        with pytest.raises(opsgate.CredentialError) as info:
            gate.credential_manager.issue_credential(family[n].did, [family[n].capabilities[0]])
        assert info.value.code == "agent_suspended"
        with pytest.raises(opsgate.DelegationError) as dinfo:
            family[n].delegate(f"{n}-child", [family[n].capabilities[0]])
        assert dinfo.value.code == "agent_suspended"
    assert gate.credential_manager.verify(tokens["root"]).sub == family["root"].did


def test_reinstating_restores_only_cascaded_descendants(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    gate.agents.suspend("b", reason="own investigation")  # b, and c by cascade from b
    gate.agents.suspend("a", reason="anomaly")  # a, and d by cascade from a
    assert {n: family[n].status for n in "abcd"} == dict.fromkeys("abcd", "suspended")

    restored = gate.agents.reinstate("a", reason="false positive")
    assert set(restored) == {family["a"].did, family["d"].did}
    assert family["a"].status == "active" and family["d"].status == "active"
    assert family["b"].status == "suspended"  # its own suspension stands
    assert family["c"].status == "suspended"  # suspended because of b, not of a

    gate.agents.reinstate("b", reason="cleared")
    assert family["b"].status == "active" and family["c"].status == "active"


def test_reinstated_agent_needs_fresh_credentials(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    tokens = _creds(gate, family)
    gate.agents.suspend("a", reason="anomaly")
    gate.agents.reinstate("a", reason="false positive")
    assert _refused(gate, tokens["b"]) == "revoked"  # suspension revoked what was out there
    time.sleep(0.002)
    cm = gate.credential_manager
    fresh = cm.issue_credential(family["b"].did, ["deploy:staging"])
    assert cm.verify(fresh.token).sub == family["b"].did


@pytest.mark.parametrize("reason", ["", "   ", None, 42])
def test_reinstatement_needs_a_reason(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent], reason: Any
) -> None:
    gate.agents.suspend("a", reason="anomaly")
    head = gate.audit.head()
    with pytest.raises(opsgate.AgentError) as info:
        gate.agents.reinstate("a", reason=reason)
    assert info.value.code == "reason_required"
    assert family["a"].status == "suspended" and family["d"].status == "suspended"
    assert gate.audit.head() == head


def test_child_cannot_be_reinstated_under_a_suspended_parent(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    gate.agents.suspend("a", reason="anomaly")
    with pytest.raises(opsgate.AgentError) as info:
        gate.agents.reinstate("b", reason="looks fine")
    assert info.value.code == "parent_inactive"
    assert family["b"].status == "suspended"


def test_revocation_cascades_and_is_final(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    tokens = _creds(gate, family)
    gate.agents.suspend("b", reason="own investigation")
    affected = gate.agents.revoke("a", reason="compromised")
    assert set(affected) == {family[n].did for n in "abcd"}
    for n in "abcd":
        assert family[n].status == "revoked"
        assert _refused(gate, tokens[n]) in ("revoked", "agent_revoked")
    for n in "ab":
        with pytest.raises(opsgate.AgentError) as info:
            gate.agents.reinstate(n, reason="please")
        assert info.value.code in ("agent_revoked", "parent_inactive")
    with pytest.raises(opsgate.AgentError) as info:
        gate.agents.reinstate("a", reason="please")
    assert info.value.code == "agent_revoked"
    assert family["root"].status == "active"


def test_effective_trust_is_capped_by_ancestors(
    gate: opsgate.Gate, family: dict[str, opsgate.Agent]
) -> None:
    low = family["a"].delegate("low", ["deploy:staging"], trust_score=600)
    lower = low.delegate("lower", ["deploy:staging"])
    assert lower.trust_score == 600
    assert lower.effective_trust == min(
        gate.trust_score(d) for d in (family["root"].did, family["a"].did, low.did, lower.did)
    )
