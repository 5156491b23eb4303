"""Inputs at the edges: absurd times and lifetimes, secrets in the wrong argument,
revocations given other clocks. Each is refused with a typed error and changes
nothing, or holds its promise whatever times callers pass."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import opsgate
from opsgate.errors import CredentialError, DelegationError, OpsgateError, shown
from opsgate.store import schema

SCOPE = ["deploy:production"]


def _snapshot(gate: opsgate.Gate) -> tuple[Any, ...]:
    with gate.store.read() as conn:
        agents = conn.execute(select(func.count()).select_from(schema.agents)).scalar_one()
    keys = sorted(p.name for p in (gate.state_dir / "agent-keys").iterdir())
    return agents, keys, gate.audit.head()[0]


def _types(gate: opsgate.Gate, after: int) -> list[str]:
    return [r.type for r in gate.audit.events(after_seq=after)]


# -- lifetimes and times ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl",
    [timedelta(days=365 * 9000), timedelta.max, 1e12, 10**400, 101 * 366 * 86_400],
    ids=["9000y", "timedelta.max", "1e12", "10**400", "101y"],
)
def test_agent_lifetimes_beyond_a_century_are_refused_before_anything_is_written(
    gate: opsgate.Gate, supervisor: Any, ttl: Any
) -> None:
    head = gate.audit.head()[0]
    before = _snapshot(gate)
    with pytest.raises(DelegationError) as info:
        gate.register_agent("long-lived", ["deploy:staging"], sponsor="ops@company.com", ttl=ttl)
    assert info.value.code == "ttl_invalid"
    with pytest.raises(DelegationError) as info:
        supervisor.delegate(name="long-child", capabilities=["deploy:staging"], ttl=ttl)
    assert info.value.code == "ttl_invalid"
    agents, keys, _ = _snapshot(gate)
    assert (agents, keys) == before[:2]
    assert "agent.registered" not in _types(gate, head)
    assert "agent.delegated" not in _types(gate, head)
    # listing still works, also from a fresh gate on the same state
    assert [a.name for a in gate.agents.list()] == ["devops-supervisor"]
    with opsgate.Gate.open(gate.state_dir) as again:
        assert [a.name for a in again.agents.list()] == ["devops-supervisor"]


def test_a_century_is_allowed(gate: opsgate.Gate) -> None:
    agent = gate.register_agent(
        "centenarian", ["deploy:staging"], sponsor="ops@company.com", ttl=timedelta(days=36_500)
    )
    assert agent.expires_at is not None and agent.expires_at.year >= 2100
    assert gate.agents.get("centenarian").did == agent.did


@pytest.mark.parametrize(
    "now",
    [
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
        1e300,
        10**400,
        -1.0,
        float("nan"),
        float("-inf"),
    ],
    ids=["year-9999", "1e300", "10**400", "before-1970", "nan", "-inf"],
)
def test_times_out_of_range_are_refused_everywhere_before_anything_is_written(
    gate: opsgate.Gate, deploy_agent: Any, now: Any
) -> None:
    cm = gate.credential_manager
    cred = cm.issue_credential(deploy_agent.did, SCOPE)
    head = gate.audit.head()
    calls = {
        "issue": lambda: cm.issue_credential(deploy_agent.did, SCOPE, now=now),
        "verify": lambda: cm.verify(cred.token, now=now),
        "authorize": lambda: gate.authorize(cred.token, "deploy:production/app", now=now),
        "revoke": lambda: cm.revoke(cred.jti, now=now),
        "revoke_agent": lambda: cm.revoke_agent(deploy_agent.did, now=now),
        "suspend": lambda: gate.agents.suspend(deploy_agent.did, now=now),
        "register": lambda: gate.register_agent(
            "timeless", ["deploy:staging"], sponsor="ops@company.com", now=now
        ),
    }
    for name, call in calls.items():
        with pytest.raises(OpsgateError) as info:
            call()
        assert info.value.code == "invalid_time", name
    assert gate.audit.head() == head
    assert cm.verify(cred.token).jti == cred.jti


@pytest.mark.parametrize(
    ("ttl", "code"),
    [(10**400, "ttl_too_long"), (1e-9, "ttl_invalid"), (1 / 61, "ttl_invalid")],
    ids=["10**400", "1e-9", "under-a-second"],
)
def test_credential_lifetimes_that_cannot_work_are_refused(
    gate: opsgate.Gate, deploy_agent: Any, ttl: float, code: str
) -> None:
    head = gate.audit.head()[0]
    with pytest.raises(CredentialError) as info:
        gate.credential_manager.issue_credential(deploy_agent.did, SCOPE, ttl_minutes=ttl)
    assert info.value.code == code
    assert "credential.issued" not in _types(gate, head)


def test_one_second_is_the_shortest_credential(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cm = gate.credential_manager
    t = time.time()
    cred = cm.issue_credential(deploy_agent.did, SCOPE, ttl_minutes=1 / 60, now=t)
    assert cm.verify(cred.token, now=t).jti == cred.jti
    assert cred.expires_at - cred.issued_at == timedelta(seconds=1)


# -- revocations whatever the clocks say -------------------------------------------------------


def test_revoke_agent_covers_a_credential_stamped_after_the_call(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    """Every credential issued so far, even one whose `now` was set in the future."""
    cm = gate.credential_manager
    t = time.time()
    ahead = cm.issue_credential(deploy_agent.did, SCOPE, now=t + 3)
    cm.revoke_agent(deploy_agent.did, now=t)
    for at in (t + 3, t + 4, t + 60):
        with pytest.raises(opsgate.InvalidCredential) as info:
            cm.verify(ahead.token, now=at)
        assert info.value.code == "revoked"
    later = cm.issue_credential(deploy_agent.did, SCOPE, now=t + 5)
    assert cm.verify(later.token, now=t + 5).jti == later.jti


def test_a_revocation_given_a_past_time_survives_reopening(
    tmp_path: Path, gate: opsgate.Gate, deploy_agent: Any
) -> None:
    cm = gate.credential_manager
    cred = cm.issue_credential(deploy_agent.did, SCOPE)
    cm.revoke(cred.jti, now=datetime.now(UTC) - timedelta(hours=2))
    with opsgate.Gate.open(gate.state_dir) as again:
        with pytest.raises(opsgate.InvalidCredential) as info:
            again.credential_manager.verify(cred.token)
        assert info.value.code == "revoked"


# -- secrets in the wrong argument -------------------------------------------------------------


def _pem(gate: opsgate.Gate) -> str:
    return next((gate.state_dir / "agent-keys").glob("*.pem")).read_text()


def _body(pem: str) -> str:
    """The base64 of the key, which must never be copied anywhere."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def test_a_private_key_passed_as_an_argument_is_never_echoed(
    gate: opsgate.Gate, supervisor: Any, deploy_agent: Any
) -> None:
    pem = _pem(gate)
    secret = _body(pem)
    attempts = {
        "delegate capabilities": lambda: supervisor.delegate(name="x", capabilities=[pem]),
        "delegate name": lambda: supervisor.delegate(name=pem, capabilities=["deploy:staging"]),
        "delegate did": lambda: supervisor.delegate(
            name="x", capabilities=["deploy:staging"], did=pem
        ),
        "get": lambda: gate.agents.get(pem),
        "register name": lambda: gate.register_agent(pem, ["deploy:staging"], sponsor="a@b.io"),
        "register sponsor": lambda: gate.register_agent("x", ["deploy:staging"], sponsor=pem),
        "register did": lambda: gate.register_agent(
            "x", ["deploy:staging"], sponsor="ops@company.com", did=pem
        ),
        "issue agent": lambda: gate.credential_manager.issue_credential(pem, SCOPE),
        "issue scope": lambda: gate.credential_manager.issue_credential(deploy_agent.did, [pem]),
        "revoke": lambda: gate.credential_manager.revoke(pem),
        "authorize": lambda: gate.authorize(
            gate.credential_manager.issue_credential(deploy_agent.did, SCOPE).token, pem
        ),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OpsgateError) as info:
            attempt()
        text = f"{info.value} {info.value!r} {info.value.detail}"
        assert secret[20:40] not in text, name
        assert "PRIVATE KEY" not in text, name
    for record in gate.audit.events():
        assert secret[20:40] not in str(record.event), record.type


def test_shown_quotes_names_and_hides_anything_key_shaped() -> None:
    assert shown("deploy:production/app-web") == "'deploy:production/app-web'"
    assert shown("x" * 65) == "<65 characters, not shown>"
    assert shown("a\nb") == "<3 characters, not shown>"
    assert shown("-----BEGIN PRIVATE KEY-----") == "<27 characters, not shown>"
    assert shown(None) == "<NoneType>" and shown(42) == "<int>"


# -- defaults ------------------------------------------------------------------------------------


def test_a_new_agent_starts_below_production_trust_but_clear_of_suspension(
    gate: opsgate.Gate,
) -> None:
    agent = gate.register_agent("newcomer", ["deploy:staging"], sponsor="ops@company.com")
    cfg = gate.config.trust
    assert cfg.suspend_below < agent.trust_score < cfg.approval_below
    # one refused escalation costs a policy violation, not the whole subtree
    with pytest.raises(OpsgateError):
        agent.delegate(name="wider", capabilities=["deploy:production"])
    assert agent.trust_score == cfg.default_score + cfg.deltas.policy_violation
    assert agent.status == "active"


def test_a_default_score_below_the_suspension_line_is_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "opsgate.yaml").write_text("trust: {default_score: 400}\n")
    with pytest.raises(opsgate.ConfigError):
        opsgate.Gate.open(state)


@pytest.mark.parametrize("state_dir", [123, "", "bad\x00path", b"bytes"], ids=repr)
def test_an_unusable_state_dir_is_a_config_error(state_dir: Any) -> None:
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(state_dir)
    assert info.value.code == "state_dir_invalid"


def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(opsgate.ConfigError):
        opsgate.Gate.open(path)
    assert path.read_text() == "not a directory"
