"""Identity: did:key agents, registration refusals, key files, signed delegation records."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import replace
from typing import Any

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select

import opsgate
from opsgate.identity import keys
from opsgate.identity.records import Link, record_bytes, verify_chain
from opsgate.store import schema


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _agent_rows(gate: opsgate.Gate) -> int:
    with gate.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.agents)).scalar_one())


def _row(gate: opsgate.Gate, did: str) -> Any:
    with gate.store.read() as conn:
        return conn.execute(select(schema.agents).where(schema.agents.c.did == did)).one()


# -- did:key ---------------------------------------------------------------------------------------


def test_agent_id_is_a_did_key_of_its_ed25519_key(gate: opsgate.Gate, deploy_agent: Any) -> None:
    did = deploy_agent.did
    assert did.startswith("did:key:z6Mk")
    raw = base58.b58decode(did[len("did:key:z") :])
    assert raw[:2] == b"\xed\x01" and len(raw) == 34  # multicodec ed25519-pub + 32 bytes
    private = gate.agents.private_key(did)
    assert keys.public_bytes(private.public_key()) == raw[2:]
    assert keys.public_bytes(keys.public_key_from_did(did)) == raw[2:]
    assert keys.did_from_public_key(private.public_key()) == did
    # RFC 7638 thumbprint, computed by hand
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64(raw[2:])}, separators=(",", ":"))
    assert keys.jwk_thumbprint(raw[2:]) == _b64(hashlib.sha256(jwk.encode()).digest())


def test_did_key_known_vector() -> None:
    # W3C did:key test vector (Ed25519)
    did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    public = keys.public_key_from_did(did)
    assert keys.did_from_public_key(public) == did
    assert len(keys.public_bytes(public)) == 32


@pytest.mark.parametrize(
    "did",
    [
        "did:web:example.com",
        "did:key:",
        "did:key:z",
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooW0",  # '0' is not base58
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1, not Ed25519
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDoo",  # too short
        "did:key:m6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",  # not base58btc
        "did:key:z" + "1" * 100,
    ],
)
def test_malformed_did_key_is_refused(did: str) -> None:
    with pytest.raises(opsgate.InvalidCredential) as info:
        keys.public_key_from_did(did)
    assert info.value.code == "bad_did"


# -- registration refusals -------------------------------------------------------------------------

REGISTRATION_REFUSALS = [
    # (overrides, error, code)
    ({"name": ""}, opsgate.AgentError, "invalid_name"),
    ({"name": "has space"}, opsgate.AgentError, "invalid_name"),
    ({"name": "-leading-dash"}, opsgate.AgentError, "invalid_name"),
    ({"name": "x" * 65}, opsgate.AgentError, "invalid_name"),
    ({"name": "../etc"}, opsgate.AgentError, "invalid_name"),
    ({"name": None}, opsgate.AgentError, "invalid_name"),
    # A token pasted as a name would be listed in clear to everyone who lists agents.
    ({"name": "opsg_apr_" + "A1b2" * 8}, opsgate.AgentError, "invalid_name"),
    ({"name": "eyJhbGciOiJFZERTQSJ9"}, opsgate.AgentError, "invalid_name"),
    ({"sponsor": "not-an-email"}, opsgate.AgentError, "invalid_email"),
    ({"sponsor": ""}, opsgate.AgentError, "invalid_email"),
    ({"sponsor": None}, opsgate.AgentError, "invalid_email"),
    ({"sponsor": "a@b"}, opsgate.AgentError, "invalid_email"),
    ({"capabilities": ["deploy:*"]}, opsgate.CapabilityError, "capability_unrestricted"),
    ({"capabilities": ["read:**"]}, opsgate.CapabilityError, "capability_unrestricted"),
    ({"capabilities": ["*:production"]}, opsgate.CapabilityError, "capability_malformed"),
    ({"capabilities": "deploy:staging"}, opsgate.CapabilityError, "capability_malformed"),
    ({"capabilities": []}, opsgate.CapabilityError, "capability_malformed"),
    ({"capabilities": ["Deploy:staging"]}, opsgate.CapabilityError, "capability_malformed"),
    ({"capabilities": [["deploy:staging"]]}, opsgate.CapabilityError, "capability_malformed"),
    ({"trust_score": 1001}, opsgate.AgentError, "trust_score_invalid"),
    ({"trust_score": -1}, opsgate.AgentError, "trust_score_invalid"),
    ({"trust_score": True}, opsgate.AgentError, "trust_score_invalid"),
    ({"trust_score": "900"}, opsgate.AgentError, "trust_score_invalid"),
    ({"trust_score": 900.5}, opsgate.AgentError, "trust_score_invalid"),
    ({"ttl": 0}, opsgate.OpsgateError, "ttl_invalid"),
    ({"ttl": -5}, opsgate.OpsgateError, "ttl_invalid"),
    ({"did": "did:web:example.com"}, opsgate.AgentError, "bad_did"),
    ({"did": 5}, opsgate.AgentError, "bad_did"),
    (
        {"did": ["did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"]},
        opsgate.AgentError,
        "bad_did",
    ),
    ({"name": "devops-supervisor"}, opsgate.AgentError, "agent_exists"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    REGISTRATION_REFUSALS,
    ids=[
        f"{next(iter(o))}={str(next(iter(o.values())))[:30]}" for o, _, _ in REGISTRATION_REFUSALS
    ],
)
def test_registration_refusals(
    gate: opsgate.Gate,
    supervisor: Any,
    overrides: dict[str, Any],
    error: type[Exception],
    code: str,
) -> None:
    args: dict[str, Any] = {
        "name": "new-agent",
        "capabilities": ["deploy:staging"],
        "sponsor": "ops@company.com",
    }
    args.update(overrides)
    count, head = _agent_rows(gate), gate.audit.head()
    keys_before = set((gate.state_dir / "agent-keys").iterdir())
    with pytest.raises(error) as info:
        gate.register_agent(**args)
    assert info.value.code == code
    assert _agent_rows(gate) == count
    assert set((gate.state_dir / "agent-keys").iterdir()) == keys_before
    assert gate.audit.head() == head


def test_registration_is_audited_and_the_record_is_signed_by_the_gate(
    gate: opsgate.Gate, supervisor: Any
) -> None:
    event = gate.audit.tail(1, event_type="agent.registered")[0]
    assert event.event["agent"] == supervisor.did and event.actor == "operator"
    row = _row(gate, supervisor.did)
    assert row.signer.startswith("gate:")
    record = json.loads(row.record)
    assert record["did"] == supervisor.did and record["depth"] == 0
    assert record["capabilities"] == supervisor.capabilities
    jwk = next(k for k in gate.jwks()["keys"] if k["kid"] == row.signer[5:])
    public = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
    public.verify(_unb64(row.signature), row.record.encode())  # raises if not the gate's


def test_delegation_record_is_signed_by_the_parent_did(
    gate: opsgate.Gate, supervisor: Any, deploy_agent: Any
) -> None:
    row = _row(gate, deploy_agent.did)
    assert row.signer == supervisor.did and row.parent_did == supervisor.did
    record = json.loads(row.record)
    assert record["parent"] == supervisor.did and record["depth"] == 1
    assert record["capabilities"] == ["deploy:staging", "deploy:production"]
    # Anyone can check it from the parent's id alone.
    raw = base58.b58decode(supervisor.did[len("did:key:z") :])[2:]
    Ed25519PublicKey.from_public_bytes(raw).verify(_unb64(row.signature), row.record.encode())


# -- key files -------------------------------------------------------------------------------------


def test_private_keys_are_owner_only(gate: opsgate.Gate, deploy_agent: Any) -> None:
    files = list((gate.state_dir / "agent-keys").iterdir())
    files += list((gate.state_dir / "gate-keys").iterdir())
    assert len(files) >= 3
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (gate.state_dir / "agent-keys").stat().st_mode & 0o077 == 0
    assert gate.state_dir.stat().st_mode & 0o077 == 0


def test_readable_private_key_is_refused(gate: opsgate.Gate, deploy_agent: Any) -> None:
    path = next(p for p in (gate.state_dir / "agent-keys").iterdir() if p.stem in deploy_agent.did)
    os.chmod(path, 0o644)
    with pytest.raises(opsgate.ConfigError) as info:
        gate.agents.private_key(deploy_agent.did)
    assert info.value.code == "key_permissions"
    with pytest.raises(opsgate.ConfigError):
        deploy_agent.delegate("child", ["deploy:staging"])


def test_agent_with_its_own_key_elsewhere(gate: opsgate.Gate) -> None:
    private = Ed25519PrivateKey.generate()
    did = keys.did_from_public_key(private.public_key())
    agent = gate.register_agent("external", ["deploy:staging"], sponsor="ops@company.com", did=did)
    assert agent.did == did
    with pytest.raises(opsgate.AgentError) as info:
        gate.agents.private_key(did)
    assert info.value.code == "key_not_held"
    with pytest.raises(opsgate.AgentError) as info:
        agent.delegate("child", ["deploy:staging"])
    assert info.value.code == "key_not_held"
    cred = gate.credential_manager.issue_credential(did, ["deploy:staging"])
    assert gate.credential_manager.verify(cred.token).sub == did


# -- chain verification (pure) ---------------------------------------------------------------------


@pytest.fixture
def chain(gate: opsgate.Gate, supervisor: Any, deploy_agent: Any) -> list[Link]:
    canary = deploy_agent.delegate("canary", ["deploy:staging/app-web"])
    return [
        Link(r.did, r.name, r.parent_did, r.record, r.signature, r.signer)
        for r in (_row(gate, a.did) for a in (supervisor, deploy_agent, canary))
    ]


def _verify(gate: opsgate.Gate, links: list[Link], max_depth: int = 3) -> Any:
    return verify_chain(links, gate_key=gate.keyring.public, max_depth=max_depth)


def _expect_broken(gate: opsgate.Gate, links: list[Link], **kw: Any) -> None:
    with pytest.raises(opsgate.DelegationError) as info:
        _verify(gate, links, **kw)
    assert info.value.code == "chain_invalid"


def test_verify_chain_returns_the_proven_grant(gate: opsgate.Gate, chain: list[Link]) -> None:
    grant = _verify(gate, chain)
    assert grant.did == chain[-1].did and grant.depth == 2
    assert grant.capabilities == ("deploy:staging/app-web",)


def test_verify_chain_refuses_broken_links(gate: opsgate.Gate, chain: list[Link]) -> None:
    root, mid, leaf = chain
    parent_key = gate.agents.private_key(mid.did)

    def resigned(link: Link, change: dict[str, Any], key: Ed25519PrivateKey) -> Link:
        record = json.loads(link.record)
        record.update(change)
        body = record_bytes(record)
        return Link(
            link.did, link.name, link.parent_did, body.decode(), _b64(key.sign(body)), link.signer
        )

    _expect_broken(gate, [])
    _expect_broken(gate, [mid, leaf])  # no operator-registered root
    _expect_broken(gate, [root, leaf])  # a link is missing
    _expect_broken(gate, [root, mid, leaf], max_depth=1)
    _expect_broken(gate, [root, mid, replace(leaf, record=leaf.record + " ")])  # not canonical
    _expect_broken(gate, [replace(root, signer="gate:unknown-kid"), mid, leaf])
    _expect_broken(gate, [root, mid, replace(leaf, signer=root.did)])
    _expect_broken(gate, [root, mid, replace(leaf, name="someone-else")])
    # validly signed by the real parent key, but not a narrowing of the parent
    _expect_broken(
        gate, [root, mid, resigned(leaf, {"capabilities": ["migrate:database"]}, parent_key)]
    )
    _expect_broken(gate, [root, mid, resigned(leaf, {"capabilities": ["deploy:*"]}, parent_key)])
    _expect_broken(gate, [root, mid, resigned(leaf, {"depth": 1}, parent_key)])
    # signed by someone else
    _expect_broken(gate, [root, mid, resigned(leaf, {}, Ed25519PrivateKey.generate())])
    assert _verify(gate, [root, mid, resigned(leaf, {}, parent_key)]).did == leaf.did


def test_chain_outliving_its_parent_is_refused(gate: opsgate.Gate) -> None:
    root = gate.register_agent("r", ["deploy:staging"], sponsor="ops@company.com", ttl=600)
    child = root.delegate("c", ["deploy:staging"], ttl=300)
    links = [
        Link(r.did, r.name, r.parent_did, r.record, r.signature, r.signer)
        for r in (_row(gate, a.did) for a in (root, child))
    ]
    assert _verify(gate, links).did == child.did
    record = json.loads(links[1].record)
    record["expires_at"] = record["expires_at"] + 3600
    body = record_bytes(record)
    forged = replace(
        links[1], record=body.decode(), signature=_b64(gate.agents.private_key(root.did).sign(body))
    )
    _expect_broken(gate, [links[0], forged])
    record["expires_at"] = None
    body = record_bytes(record)
    forged = replace(
        links[1], record=body.decode(), signature=_b64(gate.agents.private_key(root.did).sign(body))
    )
    _expect_broken(gate, [links[0], forged])


def test_a_secret_shaped_name_is_refused_for_a_delegate_too_and_not_echoed(
    gate: opsgate.Gate, supervisor: Any
) -> None:
    token = "opsg_apr_" + "Zq8x" * 10
    count = _agent_rows(gate)
    with pytest.raises(opsgate.AgentError) as info:
        supervisor.delegate(name=token, capabilities=["deploy:staging"])
    assert info.value.code == "invalid_name" and token not in str(info.value)
    assert _agent_rows(gate) == count
