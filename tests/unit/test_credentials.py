"""Credentials: standard verification, issuance refusals, auto-renewal and revocation."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import base58
import jwt
import pytest

import opsgate
from opsgate.errors import AgentError, CapabilityError, CredentialError

SCOPE = ["deploy:production"]


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint_from_did(did: str) -> str:
    """RFC 7638 thumbprint of a did:key's Ed25519 key, computed without opsgate."""
    assert did.startswith("did:key:z6Mk")
    raw = base58.b58decode(did[len("did:key:z") :])
    assert raw[:2] == b"\xed\x01" and len(raw) == 34
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw[2:])}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")
    return _b64(hashlib.sha256(canonical).digest())


def _pyjwt_decode(gate: opsgate.Gate, token: str, **kwargs: Any) -> dict[str, Any]:
    jwks = jwt.PyJWKSet.from_dict(gate.jwks())
    key = jwks[jwt.get_unverified_header(token)["kid"]]
    options = {"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]}
    return jwt.decode(token, key=key, algorithms=["EdDSA"], options=options, **kwargs)


def _issued_count(gate: opsgate.Gate) -> int:
    return sum(1 for r in gate.audit.events() if r.type == "credential.issued")


# -- fixtures: the seed's agents, built once and copied per test --------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("credentials") / "state"
    with opsgate.Gate.open(path) as gate:
        supervisor = gate.register_agent(
            "devops-supervisor",
            capabilities=[
                "deploy:staging",
                "deploy:production",
                "read:secrets",
                "write:secrets",
                "migrate:database",
                "read:monitoring",
            ],
            sponsor="platform-team@company.com",
            trust_score=920,
        )
        supervisor.delegate(name="deploy-agent", capabilities=["deploy:staging", *SCOPE])
        supervisor.delegate(
            name="app-agent",
            capabilities=["deploy:production/app-web", "read:secrets/production/app"],
        )
    return path


@pytest.fixture
def gate(template: Path, tmp_path: Path) -> Iterator[opsgate.Gate]:
    state = tmp_path / "state"
    shutil.copytree(template, state)
    with opsgate.Gate.open(state) as g:
        yield g


@pytest.fixture
def supervisor(gate: opsgate.Gate) -> opsgate.Agent:
    return gate.agents.get("devops-supervisor")


@pytest.fixture
def deploy_agent(gate: opsgate.Gate) -> opsgate.Agent:
    return gate.agents.get("deploy-agent")


@pytest.fixture
def app_agent(gate: opsgate.Gate) -> opsgate.Agent:
    return gate.agents.get("app-agent")


# -- standard verification -------------------------------------------------------------------


def test_credential_verifies_with_pyjwt_alone(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cred = gate.credential_manager.issue_credential(
        agent_id=deploy_agent.did, scope=SCOPE, ttl_minutes=15
    )
    header = jwt.get_unverified_header(cred.token)
    assert header == {"alg": "EdDSA", "kid": cred.kid, "typ": "JWT"}
    claims = _pyjwt_decode(gate, cred.token, audience="opsgate", issuer=gate.gate_id)
    assert claims["sub"] == deploy_agent.did
    assert claims["scope"] == SCOPE
    assert claims["jti"] == cred.jti and len(_unb64(claims["jti"])) >= 16  # >= 128 bits
    assert claims["cnf"] == {"jkt": _thumbprint_from_did(deploy_agent.did)}
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == pytest.approx(15 * 60, abs=0.01)
    assert claims["exp"] == pytest.approx(cred.expires_at.timestamp(), abs=0.001)


def test_pyjwt_rejects_wrong_audience_and_issuer(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cred = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    with pytest.raises(jwt.InvalidAudienceError):
        _pyjwt_decode(gate, cred.token, audience="another-service", issuer=gate.gate_id)
    with pytest.raises(jwt.InvalidIssuerError):
        _pyjwt_decode(gate, cred.token, audience="opsgate", issuer="opsgate:someone-else")
    h, p, s = cred.token.split(".")
    claims = json.loads(_unb64(p))
    claims["scope"] = ["deploy:production", "migrate:database"]
    forged = f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    with pytest.raises(jwt.InvalidSignatureError):
        _pyjwt_decode(gate, forged, audience="opsgate", issuer=gate.gate_id)


def test_pyjwt_verifies_old_token_after_key_rotation(gate: opsgate.Gate, deploy_agent: Any) -> None:
    old = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    new_kid = gate.rotate_keys()
    new = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    assert new.kid == new_kid != old.kid
    assert {k["kid"] for k in gate.jwks()["keys"]} == {old.kid, new_kid}
    for cred in (old, new):
        assert _pyjwt_decode(gate, cred.token, audience="opsgate")["jti"] == cred.jti
        assert gate.credential_manager.verify(cred.token).jti == cred.jti


def test_credential_repr_never_shows_the_token(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cred = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    signature = cred.token.split(".")[2]
    claims = gate.credential_manager.verify(cred.token)
    handle = deploy_agent.credential(scope=SCOPE)
    for text in (repr(cred), str(cred), f"{cred}", f"{cred!r}", repr(claims), repr(handle)):
        assert cred.token not in text
        assert signature not in text
        assert handle.token not in text
        assert handle.token.split(".")[2] not in text
    assert cred.jti in repr(cred)


def test_token_never_reaches_the_audit_log(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cred = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    gate.authorize(cred.token, "deploy:production/app-web")
    with pytest.raises(opsgate.InvalidCredential):
        gate.authorize(cred.token + "x", "deploy:production/app-web")
    signature = cred.token.split(".")[2]
    for record in gate.audit.events():
        body = json.dumps(record.event)
        assert signature not in body and cred.token not in body


# -- issuance refusals -----------------------------------------------------------------------


SCOPE_REFUSALS = [
    # (agent, scope, error class, code)
    ("deploy", ["deploy:production-eu"], CredentialError, "scope_not_covered"),
    ("deploy", ["deploy:productio"], CredentialError, "scope_not_covered"),
    ("deploy", ["migrate:database"], CredentialError, "scope_not_covered"),
    ("deploy", ["deploy:production", "read:secrets"], CredentialError, "scope_not_covered"),
    ("app", ["deploy:production"], CredentialError, "scope_not_covered"),
    ("app", ["deploy:production/*"], CredentialError, "scope_not_covered"),
    ("app", ["read:secrets"], CredentialError, "scope_not_covered"),
    ("app", ["write:secrets/production/app"], CredentialError, "scope_not_covered"),
    ("deploy", ["deploy:*"], CapabilityError, "capability_unrestricted"),
    ("deploy", ["deploy:**"], CapabilityError, "capability_unrestricted"),
    ("deploy", ["Deploy:production"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:production/"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:production//app"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:production/../staging"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:prod uction"], CapabilityError, "capability_malformed"),
    ("deploy", ["deploy:production/**/x"], CapabilityError, "capability_malformed"),
    ("deploy", ["*:production"], CapabilityError, "capability_malformed"),
    ("deploy", [None], CapabilityError, "capability_malformed"),
    ("deploy", [["deploy:production"]], CapabilityError, "capability_malformed"),
    ("deploy", "deploy:production", CredentialError, "scope_invalid"),
    ("deploy", [], CredentialError, "scope_invalid"),
    ("deploy", None, CredentialError, "scope_invalid"),
    ("deploy", {"deploy:production": True}, CredentialError, "scope_invalid"),
    ("deploy", ["deploy:production"] * 65, CredentialError, "scope_invalid"),
]


@pytest.mark.parametrize(
    ("who", "scope", "error", "code"),
    SCOPE_REFUSALS,
    ids=[f"{w}-{str(s)[:40]}" for w, s, _, _ in SCOPE_REFUSALS],
)
def test_issue_refuses_scope(
    gate: opsgate.Gate,
    deploy_agent: Any,
    app_agent: Any,
    who: str,
    scope: Any,
    error: type[Exception],
    code: str,
) -> None:
    agent = deploy_agent if who == "deploy" else app_agent
    issued, head = _issued_count(gate), gate.audit.head()[0]
    with pytest.raises(error) as info:
        gate.credential_manager.issue_credential(agent_id=agent.did, scope=scope)
    assert info.value.code == code
    assert _issued_count(gate) == issued
    refused = [r for r in gate.audit.events(after_seq=head) if r.type.startswith("credential.")]
    assert [r.type for r in refused] == ["credential.refused"]
    assert refused[0].event["code"] == code and refused[0].actor == agent.did


def test_narrower_scope_than_grant_is_issued(gate: opsgate.Gate, deploy_agent: Any) -> None:
    for scope in (["deploy:production/app-web"], ["deploy:production/**"], ["deploy:staging/*"]):
        cred = gate.credential_manager.issue_credential(agent_id=deploy_agent.did, scope=scope)
        assert gate.credential_manager.verify(cred.token).scope == tuple(scope)
    cred = gate.credential_manager.issue_credential(
        agent_id=deploy_agent.did, scope=["deploy:staging", "deploy:staging"]
    )
    assert cred.scope == ["deploy:staging"]


TTL_REFUSALS = [
    (16, "ttl_too_long"),
    (15.01, "ttl_too_long"),
    (61, "ttl_too_long"),
    (10_000, "ttl_too_long"),
    (0, "ttl_invalid"),
    (0.0, "ttl_invalid"),
    (-1, "ttl_invalid"),
    (-0.5, "ttl_invalid"),
    (math.nan, "ttl_invalid"),
    (math.inf, "ttl_invalid"),
    (-math.inf, "ttl_invalid"),
    (True, "ttl_invalid"),
    (False, "ttl_invalid"),
    ("15", "ttl_invalid"),
    ([15], "ttl_invalid"),
]


@pytest.mark.parametrize(("ttl", "code"), TTL_REFUSALS, ids=[repr(t) for t, _ in TTL_REFUSALS])
def test_issue_refuses_ttl(gate: opsgate.Gate, deploy_agent: Any, ttl: Any, code: str) -> None:
    head = gate.audit.head()
    with pytest.raises(CredentialError) as info:
        gate.credential_manager.issue_credential(
            agent_id=deploy_agent.did, scope=SCOPE, ttl_minutes=ttl
        )
    assert info.value.code == code
    assert gate.audit.head() == head  # nothing issued, nothing written


def test_ttl_at_the_configured_maximum_is_issued_not_clamped(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    for ttl in (15, 0.5, 1):
        cred = gate.credential_manager.issue_credential(
            agent_id=deploy_agent.did, scope=SCOPE, ttl_minutes=ttl
        )
        assert cred.ttl_seconds == pytest.approx(ttl * 60, abs=0.002)


def test_configured_max_ttl_up_to_the_hard_ceiling(tmp_path: Any) -> None:
    with opsgate.Gate.open(tmp_path / "s", limits={"max_ttl_minutes": 60}) as gate:
        agent = gate.register_agent("a", ["deploy:staging"], sponsor="ops@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], 60)
        assert cred.ttl_seconds == pytest.approx(3600, abs=0.002)
        with pytest.raises(CredentialError) as info:
            gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], 61)
        assert info.value.code == "ttl_too_long"
    with pytest.raises(opsgate.ConfigError):
        opsgate.Gate.open(tmp_path / "s2", limits={"max_ttl_minutes": 61})


def test_issue_refuses_suspended_revoked_and_unknown_agents(
    gate: opsgate.Gate, supervisor: Any, deploy_agent: Any
) -> None:
    other = supervisor.delegate(name="other", capabilities=["deploy:staging"])
    gate.agents.suspend(deploy_agent.did, reason="investigation")
    gate.agents.revoke(other.did, reason="retired")
    issued = _issued_count(gate)
    cases = [
        (deploy_agent.did, CredentialError, "agent_suspended"),
        ("deploy-agent", CredentialError, "agent_suspended"),
        (other.did, CredentialError, "agent_revoked"),
        ("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", AgentError, "agent_not_found"),
        ("no-such-agent", AgentError, "agent_not_found"),
        ("", AgentError, "agent_not_found"),
    ]
    for ref, error, code in cases:
        scope = ["deploy:staging"]
        with pytest.raises(error) as info:
            gate.credential_manager.issue_credential(agent_id=ref, scope=scope)
        assert info.value.code == code, ref
    assert _issued_count(gate) == issued


def test_issue_refuses_expired_agent(gate: opsgate.Gate) -> None:
    t = time.time()
    agent = gate.register_agent(
        "short-lived", ["deploy:staging"], sponsor="ops@company.com", ttl=60, now=t
    )
    cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t)
    # Not past the agent (whole seconds: at most one second short of it).
    assert t + 59 < cred.expires_at.timestamp() <= t + 60
    with pytest.raises(CredentialError) as info:
        gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t + 61)
    assert info.value.code == "agent_expired"


# -- auto-renewal ------------------------------------------------------------------------------


def test_handle_renews_when_a_third_of_the_lifetime_is_left(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    issued = _issued_count(gate)
    handle = deploy_agent.credential(scope=SCOPE)
    first = handle.current()
    t0, life = first.issued_at.timestamp(), first.ttl_seconds
    assert life == pytest.approx(15 * 60, abs=0.002)
    renew_at = t0 + life * 2 / 3
    assert handle.current(now=renew_at - 1).jti == first.jti
    assert handle.renewals == 0

    second = handle.current(now=renew_at + 1)
    assert second.jti != first.jti and handle.renewals == 1
    assert handle.current(now=renew_at + 2).jti == second.jti
    assert _issued_count(gate) == issued + 2

    cm = gate.credential_manager
    # The old token stays valid until its own expiry, not a moment longer.
    exp1 = first.expires_at.timestamp()
    assert cm.verify(first.token, now=renew_at + 1).jti == first.jti
    assert cm.verify(first.token, now=exp1 - 1).jti == first.jti
    with pytest.raises(opsgate.InvalidCredential) as info:
        cm.verify(first.token, now=exp1 + gate.config.limits.leeway_seconds + 1)
    assert info.value.code == "expired"
    assert cm.verify(second.token, now=exp1 + 60).jti == second.jti

    s0, slife = second.issued_at.timestamp(), second.ttl_seconds
    third = handle.current(now=s0 + slife * 2 / 3 + 1)
    assert third.jti not in (first.jti, second.jti) and handle.renewals == 2


def test_handle_with_short_ttl_renews_on_its_own_schedule(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    handle = deploy_agent.credential(scope=SCOPE, ttl_minutes=3)
    first = handle.current()
    t0 = first.issued_at.timestamp()
    assert first.ttl_seconds == pytest.approx(180, abs=0.002)
    assert handle.current(now=t0 + 119).jti == first.jti
    assert handle.current(now=t0 + 121).jti != first.jti
    assert handle.renewals == 1


def test_handle_refuses_uncovered_scope_at_creation(deploy_agent: Any) -> None:
    with pytest.raises(CredentialError) as info:
        deploy_agent.credential(scope=["migrate:database"])
    assert info.value.code == "scope_not_covered"
    with pytest.raises(CredentialError) as info:
        deploy_agent.credential(scope=SCOPE, ttl_minutes=30)
    assert info.value.code == "ttl_too_long"


# -- revocation --------------------------------------------------------------------------------


def test_revoke_jti_takes_effect_on_the_very_next_call(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    cm = gate.credential_manager
    cred = cm.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    sibling = cm.issue_credential(agent_id=deploy_agent.did, scope=SCOPE)
    assert cm.verify(cred.token).jti == cred.jti  # cached as verified
    cm.revoke(cred.jti, reason="leaked")
    with pytest.raises(opsgate.InvalidCredential) as info:
        cm.verify(cred.token)
    assert info.value.code == "revoked"
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.authorize(cred.token, "deploy:production/app-web")
    assert info.value.code == "revoked"
    assert cm.verify(sibling.token).jti == sibling.jti  # only that one
    cm.revoke(cred.jti)  # idempotent
    revoked = [r for r in gate.audit.events() if r.type == "credential.revoked"]
    assert revoked and revoked[0].event["jti"] == cred.jti


def test_revocation_survives_reopening(tmp_path: Any) -> None:
    with opsgate.Gate.open(tmp_path / "s") as gate:
        agent = gate.register_agent("a", ["deploy:staging"], sponsor="ops@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        gate.credential_manager.revoke(cred.jti)
    with opsgate.Gate.open(tmp_path / "s") as gate:
        with pytest.raises(opsgate.InvalidCredential) as info:
            gate.credential_manager.verify(cred.token)
        assert info.value.code == "revoked"


@pytest.mark.parametrize("jti", ["", "short", "x" * 65, "has space in it 0000000", None, 5])
def test_revoke_refuses_malformed_jti(gate: opsgate.Gate, jti: Any) -> None:
    head = gate.audit.head()
    with pytest.raises(CredentialError) as info:
        gate.credential_manager.revoke(jti)
    assert info.value.code == "jti_invalid"
    assert gate.audit.head() == head


def test_revoke_agent_cascades_to_descendants(
    gate: opsgate.Gate, supervisor: Any, deploy_agent: Any
) -> None:
    cm = gate.credential_manager
    canary = deploy_agent.delegate(name="canary", capabilities=["deploy:staging"])
    t = time.time()
    creds = {
        a.name: cm.issue_credential(a.did, ["deploy:staging"], now=t)
        for a in (supervisor, deploy_agent, canary)
    }
    for c in creds.values():
        cm.verify(c.token, now=t)

    affected = cm.revoke_agent(deploy_agent.did, reason="compromised", now=t + 1)
    assert set(affected) == {deploy_agent.did, canary.did}
    for name in ("deploy-agent", "canary"):
        with pytest.raises(opsgate.InvalidCredential) as info:
            cm.verify(creds[name].token, now=t + 1)
        assert info.value.code == "revoked", name
    assert cm.verify(creds["devops-supervisor"].token, now=t + 1).sub == supervisor.did

    # A credential issued after the revocation works; the agents themselves stay active.
    for agent in (deploy_agent, canary):
        fresh = cm.issue_credential(agent.did, ["deploy:staging"], now=t + 2)
        assert cm.verify(fresh.token, now=t + 2).sub == agent.did
        assert agent.status == "active"
    event = gate.audit.tail(1, event_type="credentials.revoked_for_agent")[0]
    assert set(event.event["agents"]) == {deploy_agent.did, canary.did}


def test_revoke_agent_with_the_wall_clock(gate: opsgate.Gate, deploy_agent: Any) -> None:
    cm = gate.credential_manager
    old = cm.issue_credential(deploy_agent.did, SCOPE)
    cm.revoke_agent(deploy_agent.did)
    with pytest.raises(opsgate.InvalidCredential) as info:
        cm.verify(old.token)
    assert info.value.code == "revoked"
    time.sleep(0.002)  # a new millisecond: "every credential issued before now"
    fresh = cm.issue_credential(deploy_agent.did, SCOPE)
    assert cm.verify(fresh.token).jti == fresh.jti


# -- whole-second iat and per-agent revocation ---------------------------------------------------


def _second(offset: float) -> float:
    """A time `offset` into a whole second well in the future (fixed, so tests are exact)."""
    return 1_900_000_000 + offset


def test_revoke_agent_in_the_same_second_as_issuance(gate: opsgate.Gate, deploy_agent: Any) -> None:
    """iat is a whole second; the revocation cuts finer: what was issued before it in
    that second is revoked, what is issued after it is not dead on arrival."""
    cm = gate.credential_manager
    before = cm.issue_credential(deploy_agent.did, SCOPE, now=_second(0.2))
    cm.revoke_agent(deploy_agent.did, now=_second(0.5))
    after = cm.issue_credential(deploy_agent.did, SCOPE, now=_second(0.8))
    with pytest.raises(opsgate.InvalidCredential) as info:
        cm.verify(before.token, now=_second(0.9))
    assert info.value.code == "revoked"
    assert cm.verify(after.token, now=_second(0.9)).jti == after.jti
    # The later one is stamped with the next second, never earlier than the cut-off.
    assert before.issued_at.timestamp() == _second(0)
    assert after.issued_at.timestamp() == _second(1)
    assert after.ttl_seconds == 15 * 60
    assert cm.verify(after.token, now=_second(1.5)).jti == after.jti


def test_a_revocation_committed_elsewhere_in_the_same_second_is_not_dead_on_arrival(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    """Another replica's revocation this replica has not seen yet: the issuance's own
    audit transaction notices it and stamps the next second instead of refusing."""
    from sqlalchemy import update

    from opsgate.store import schema

    cm = gate.credential_manager
    before = cm.issue_credential(deploy_agent.did, SCOPE, now=_second(0.2))
    cm.verify(before.token, now=_second(0.3))  # the agent's state is cached
    with gate.store.write() as conn:  # what the other replica's revoke_agent committed
        conn.execute(
            update(schema.agents)
            .where(schema.agents.c.did == deploy_agent.did)
            .values(credentials_not_before=_second(0.5))
        )
    head = gate.audit.head()[0]
    after = cm.issue_credential(deploy_agent.did, SCOPE, now=_second(0.8))
    issued = [r.event for r in gate.audit.events(after_seq=head) if r.type == "credential.issued"]
    assert [e.get("revoked_on_issue", False) for e in issued] == [True, False]
    assert issued[-1]["jti"] == after.jti
    assert after.issued_at.timestamp() == _second(1)
    assert cm.verify(after.token, now=_second(0.9)).jti == after.jti
    with pytest.raises(opsgate.InvalidCredential) as info:
        cm.verify(before.token, now=_second(0.9))
    assert info.value.code == "revoked"


def test_a_revocation_a_second_or_more_ahead_is_refused_not_jumped(
    gate: opsgate.Gate, deploy_agent: Any
) -> None:
    cm = gate.credential_manager
    cm.revoke_agent(deploy_agent.did, now=_second(2.5))
    with pytest.raises(CredentialError) as info:
        cm.issue_credential(deploy_agent.did, SCOPE, now=_second(0.8))
    assert info.value.code == "revoked"
    fresh = cm.issue_credential(deploy_agent.did, SCOPE, now=_second(3.1))
    assert fresh.issued_at.timestamp() == _second(3)
    assert cm.verify(fresh.token, now=_second(3.2)).jti == fresh.jti
