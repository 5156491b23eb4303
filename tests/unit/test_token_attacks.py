"""Token attacks as data (tests/data/token_attacks.yaml), driven by one parametrized test.

Each case starts from a freshly issued genuine credential that verifies, applies one
named mutator and asserts that the gate refuses the result with InvalidCredential and
the expected `.code`, and that the refusal is audited. Forged tokens are signed with
real keys (the gate's own private key included), so a refusal proves that the claim
check itself is enforced, not only the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

import opsgate
from opsgate.audit.summary import SUMMARY_EVENT
from opsgate.identity import keys
from opsgate.identity.records import record_bytes
from opsgate.store import schema

CASES_FILE = Path(__file__).parents[1] / "data" / "token_attacks.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
SCOPE = ["deploy:production"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@dataclass
class Attack:
    """Everything a mutator may use: the gate, the agents and the genuine credential."""

    gate: opsgate.Gate
    supervisor: opsgate.Agent
    agent: opsgate.Agent
    credential: opsgate.Credential
    tmp_path: Path
    gate_kid: str
    gate_key: Ed25519PrivateKey
    rotated: tuple[str, Ed25519PrivateKey] | None = None
    _other: opsgate.Gate | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        return self.credential.token

    @property
    def header(self) -> dict[str, Any]:
        return json.loads(unb64(self.token.split(".")[0]))

    @property
    def claims(self) -> dict[str, Any]:
        return json.loads(unb64(self.token.split(".")[1]))

    def other_gate(self) -> opsgate.Gate:
        """A second gate in another state dir whose agents carry the same names."""
        if self._other is None:
            other = opsgate.Gate.open(self.tmp_path / "other-gate")
            sup = other.register_agent(
                "devops-supervisor",
                capabilities=["deploy:staging", "deploy:production"],
                sponsor="platform-team@company.com",
                trust_score=920,
            )
            sup.delegate(name="deploy-agent", capabilities=["deploy:production"])
            self._other = other
        return self._other

    def rotate(self) -> None:
        if self.rotated is None:
            self.gate.rotate_keys()
            self.rotated = self.gate.keyring.signer()
            assert self.rotated[0] != self.gate_kid

    def values(self) -> dict[str, Any]:
        unknown = Ed25519PrivateKey.generate().public_key()
        agent_public = keys.public_key_from_did(self.agent.did)
        values: dict[str, Any] = {
            "iat": self.claims["iat"],
            "exp": self.claims["exp"],
            "now": time.time(),
            "jti": self.credential.jti,
            "kid": self.gate_kid,
            "supervisor_did": self.supervisor.did,
            "unknown_did": keys.did_from_public_key(unknown),
            "unknown_jkt": keys.jwk_thumbprint(unknown),
            "agent_jkt": keys.jwk_thumbprint(agent_public),
            "agent_jwk": keys.public_jwk(agent_public),
            "pad5000": "x" * 5000,
        }
        return values

    def resolve(self, value: Any) -> Any:
        """Replace "$name", "$name+N" and "$name-N" by values of this attack."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, str) or not value.startswith("$"):
            return value
        if value == "$other_issuer":
            return self.other_gate().gate_id
        values = self.values()
        for op in ("+", "-"):
            if op in value:
                name, offset = value[1:].split(op, 1)
                delta = float(offset)
                return values[name] + (delta if op == "+" else -delta)
        return values[value[1:]]

    def signing_key(self, which: str) -> Ed25519PrivateKey:
        if which == "gate":
            return self.gate_key
        if which == "rotated":
            self.rotate()
            assert self.rotated is not None
            return self.rotated[1]
        if which == "agent":
            return self.gate.agents.private_key(self.agent.did)
        if which == "supervisor":
            return self.gate.agents.private_key(self.supervisor.did)
        if which == "other_gate":
            return self.other_gate().keyring.signer()[1]
        raise AssertionError(f"unknown key {which!r}")

    def kid(self, which: Any) -> Any:
        if which == "gate":
            return self.gate_kid
        if which == "rotated":
            self.rotate()
            assert self.rotated is not None
            return self.rotated[0]
        return self.resolve(which)


def sign(key: Ed25519PrivateKey, header_b64: str, payload_b64: str) -> str:
    signature = key.sign(f"{header_b64}.{payload_b64}".encode("ascii"))
    return f"{header_b64}.{payload_b64}.{b64(signature)}"


# -- gate actions: change the gate's state, leave the token alone -----------------------


def _edit_agent_row(a: Attack, did: str, **values: Any) -> None:
    with a.gate.store.write() as conn:
        conn.execute(update(schema.agents).where(schema.agents.c.did == did).values(**values))
    a.gate.state.invalidate_agent(did)


def _agent_row(a: Attack, did: str) -> Any:
    with a.gate.store.read() as conn:
        return conn.execute(select(schema.agents).where(schema.agents.c.did == did)).one()


def _edit_parent_record(a: Attack) -> None:
    record = json.loads(_agent_row(a, a.supervisor.did).record)
    record["capabilities"].append("delete:secrets")
    _edit_agent_row(a, a.supervisor.did, record=record_bytes(record).decode("utf-8"))


def _edit_child_signature(a: Attack) -> None:
    sig = bytearray(unb64(_agent_row(a, a.agent.did).signature))
    sig[10] ^= 0x01
    _edit_agent_row(a, a.agent.did, signature=b64(bytes(sig)))


def _widen_child_record(a: Attack) -> None:
    """Re-signed with the parent's real key, but granting what the parent never held."""
    record = json.loads(_agent_row(a, a.agent.did).record)
    record["capabilities"].append("delete:secrets")
    body = record_bytes(record)
    signature = b64(a.gate.agents.private_key(a.supervisor.did).sign(body))
    _edit_agent_row(a, a.agent.did, record=body.decode("utf-8"), signature=signature)


def _swap_child_signer(a: Attack) -> None:
    _edit_agent_row(a, a.agent.did, signer=f"gate:{a.gate_kid}")


def _reparent_child(a: Attack) -> None:
    other = a.gate.register_agent(
        "other-root", capabilities=["deploy:production"], sponsor="ops@company.com"
    )
    _edit_agent_row(a, a.agent.did, parent_did=other.did)


GATE_ACTIONS: dict[str, Callable[[Attack], Any]] = {
    "none": lambda a: None,
    "revoke_jti": lambda a: a.gate.credential_manager.revoke(a.credential.jti, reason="attack"),
    "revoke_agent_credentials": lambda a: a.gate.credential_manager.revoke_agent(a.agent.did),
    "revoke_parent_credentials": lambda a: a.gate.credential_manager.revoke_agent(a.supervisor.did),
    "suspend_agent": lambda a: a.gate.agents.suspend(a.agent.did, reason="attack"),
    "suspend_parent": lambda a: a.gate.agents.suspend(a.supervisor.did, reason="attack"),
    "revoke_agent": lambda a: a.gate.agents.revoke(a.agent.did, reason="attack"),
    "edit_parent_record": _edit_parent_record,
    "edit_child_signature": _edit_child_signature,
    "widen_child_record": _widen_child_record,
    "swap_child_signer": _swap_child_signer,
    "reparent_child": _reparent_child,
}


# -- mutators: genuine credential in, attack token out -----------------------------------


def m_gate_action(a: Attack, action: str) -> object:
    GATE_ACTIONS[action](a)
    return a.token


def m_unsigned(a: Attack, signature: str, alg: str = "none") -> object:
    header = b64(compact_json({"alg": alg, "typ": "JWT", "kid": a.gate_kid}))
    return f"{header}.{a.token.split('.')[1]}.{signature}"


def m_hmac(a: Attack, secret: str, alg: str = "HS256") -> object:
    public = a.gate_key.public_key()
    secrets = {
        "raw": keys.public_bytes(public),
        "jwk": compact_json(a.gate.jwks()["keys"][0]),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    header = b64(compact_json({"alg": alg, "typ": "JWT", "kid": a.gate_kid}))
    payload = a.token.split(".")[1]
    mac = hmac.new(secrets[secret], f"{header}.{payload}".encode("ascii"), hashlib.sha256)
    return f"{header}.{payload}.{b64(mac.digest())}"


def m_forge(
    a: Attack,
    header: dict[str, Any] | None = None,
    header_del: list[str] | None = None,
    claims: dict[str, Any] | None = None,
    claims_del: list[str] | None = None,
    key: str = "gate",
    rotate: bool = False,
    action: str | None = None,
    header_json: str | None = None,
    payload_json: str | None = None,
    tamper: dict[str, Any] | None = None,
    **kid: Any,
) -> object:
    """A new token signed with a real private key (the gate's unless `key` says otherwise);
    `tamper` changes claims after signing, keeping the signature."""
    if action is not None:
        GATE_ACTIONS[action](a)
    if rotate:
        a.rotate()
    h = a.header
    h.update(a.resolve(header or {}))
    if "kid" in kid:
        h["kid"] = a.kid(kid.pop("kid"))
    assert not kid, kid
    for name in header_del or []:
        h.pop(name, None)
    c = a.claims
    c.update(a.resolve(claims or {}))
    for name in claims_del or []:
        c.pop(name, None)
    h_b64 = b64(header_json.encode("utf-8") if header_json is not None else compact_json(h))
    p_b64 = b64(payload_json.encode("utf-8") if payload_json is not None else compact_json(c))
    token = sign(a.signing_key(key), h_b64, p_b64)
    if tamper:
        signature = token.rsplit(".", 1)[1]
        token = f"{h_b64}.{b64(compact_json({**c, **a.resolve(tamper)}))}.{signature}"
    return token


def m_tamper_header(
    a: Attack,
    header: dict[str, Any] | None = None,
    header_del: list[str] | None = None,
    reorder: bool = False,
) -> object:
    h = a.header
    h.update(header or {})
    for name in header_del or []:
        h.pop(name, None)
    if reorder:
        h = dict(reversed(list(h.items())))
    _, p, s = a.token.split(".")
    return f"{b64(compact_json(h))}.{p}.{s}"


def m_tamper_payload(
    a: Attack, claims: dict[str, Any] | None = None, claims_del: list[str] | None = None
) -> object:
    c = a.claims
    c.update(a.resolve(claims or {}))
    for name in claims_del or []:
        c.pop(name, None)
    h, _, s = a.token.split(".")
    return f"{h}.{b64(compact_json(c))}.{s}"


def m_signature(a: Attack, op: str) -> object:
    h, p, s = a.token.split(".")
    raw = bytearray(unb64(s))
    if op == "flip":
        raw[0] ^= 0x01
        s = b64(bytes(raw))
    elif op == "truncate":
        s = b64(bytes(raw[:63]))
    elif op == "extend":
        s = b64(bytes(raw) + b"\x00")
    elif op == "empty":
        s = ""
    elif op == "noncanonical":
        # 64 bytes end in a character carrying 4 unused bits; set them: same bytes, other text
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(s[-1])
        s = s[:-1] + alphabet[last | 0x01]
        assert unb64(s) == bytes(raw)
    else:
        raise AssertionError(op)
    return f"{h}.{p}.{s}"


def m_text(a: Attack, op: str) -> object:
    t = a.token
    h, p, s = t.split(".")
    edits: dict[str, Callable[[], object]] = {
        "pad": lambda: f"{h}.{p}{'=' * (-len(p) % 4 or 4)}.{s}",
        "leading_space": lambda: " " + t,
        "trailing_newline": lambda: t + "\n",
        "inner_space": lambda: f"{h}. {p}.{s}",
        "non_ascii": lambda: f"{h}.{p[:-1]}é.{s}",
        "non_base64": lambda: f"{h}.{p[:10]}+/{p[12:]}.{s}",
        "two_segments": lambda: f"{h}.{p}",
        "four_segments": lambda: f"{t}.{s}",
        "empty_segment": lambda: f"{h}..{s}",
        "oversize": lambda: t + "A" * 4096,
        "bytes": lambda: t.encode("ascii"),
        "none": lambda: None,
        "empty": lambda: "",
    }
    return edits[op]()


def m_duplicate_claim(a: Attack, name: str, value: Any) -> object:
    """A payload naming `name` twice: an attacker-chosen value first, the genuine one last."""
    first = compact_json({name: a.resolve(value)})[1:-1]
    payload = b"{" + first + b"," + compact_json(a.claims)[1:]
    assert payload.count(f'"{name}":'.encode()) == 2
    return sign(a.gate_key, b64(compact_json(a.header)), b64(payload))


def m_duplicate_header(a: Attack, name: str, value: Any) -> object:
    first = compact_json({name: value})[1:-1]
    header = b"{" + first + b"," + compact_json(a.header)[1:]
    return sign(a.gate_key, b64(header), a.token.split(".")[1])


def m_foreign_gate(a: Attack) -> object:
    other = a.other_gate()
    agent = other.agents.get("deploy-agent")
    return other.credential_manager.issue_credential(agent_id=agent.did, scope=SCOPE).token


MUTATORS: dict[str, Callable[..., object]] = {
    "gate_action": m_gate_action,
    "unsigned": m_unsigned,
    "hmac": m_hmac,
    "forge": m_forge,
    "tamper_header": m_tamper_header,
    "tamper_payload": m_tamper_payload,
    "signature": m_signature,
    "text": m_text,
    "duplicate_claim": m_duplicate_claim,
    "duplicate_header": m_duplicate_header,
    "foreign_gate": m_foreign_gate,
}


def verify_time(a: Attack, spec: str | None) -> float | None:
    if spec is None:
        return None
    for op in ("+", "-"):
        if op in spec:
            name, offset = spec.split(op, 1)
            base = a.claims[name]
            return base + float(offset) if op == "+" else base - float(offset)
    raise AssertionError(spec)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding the seed's supervisor and deploy agent, built once per module."""
    path = tmp_path_factory.mktemp("attacks") / "state"
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
    return path


@pytest.fixture
def attack(template: Path, tmp_path: Path) -> Iterator[Attack]:
    """A fresh copy of the template gate and a credential issued just now."""
    state = tmp_path / "state"
    shutil.copytree(template, state)
    gate = opsgate.Gate.open(state)
    supervisor = gate.agents.get("devops-supervisor")
    agent = gate.agents.get("deploy-agent")
    credential = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=SCOPE, ttl_minutes=15
    )
    kid, key = gate.keyring.signer()
    a = Attack(gate, supervisor, agent, credential, tmp_path, kid, key)
    yield a
    if a._other is not None:
        a._other.close()
    gate.close()


def test_attack_file_is_well_formed() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 25
    for case in CASES:
        assert case["mutator"] in MUTATORS, case["id"]
        assert isinstance(case["code"], str) and case["code"], case["id"]
        assert set(case) <= {"id", "mutator", "args", "code", "now", "proven"}, case["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_token_attack_is_refused(attack: Attack, case: dict[str, Any]) -> None:
    gate = attack.gate
    # The genuine credential verifies (and is now in the verified-token cache).
    assert gate.credential_manager.verify(attack.token).sub == attack.agent.did

    token = MUTATORS[case["mutator"]](attack, **(case.get("args") or {}))
    now = verify_time(attack, case.get("now"))
    before = gate.audit.head()[0]

    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(token, now=now)
    assert info.value.code == case["code"], info.value.message

    # Charged to an agent, and audited on its own with the same code, only when the
    # gate's own signature proves the subject ...
    if case.get("proven"):
        rejected = gate.audit.tail(1, event_type="credential.rejected")
        assert rejected and rejected[-1].seq > before
        assert rejected[-1].event["code"] == case["code"]
        assert info.value.detail.get("agent") == attack.agent.did
        assert rejected[-1].actor == attack.agent.did
    else:
        # ... otherwise counted by code and written in the next summary (no row each).
        assert info.value.detail.get("agent") is None
        assert gate.audit.head()[0] == before
        assert gate.credential_manager.unproven_refusals.flush()
        summaries = [r for r in gate.audit.events(after_seq=before, event_type=SUMMARY_EVENT)]
        assert len(summaries) == 1 and summaries[0].actor is None
        assert summaries[0].event["codes"] == {case["code"]: 1}
    # The same refusal through the gate's public entry point.
    with pytest.raises(opsgate.InvalidCredential) as again:
        gate.authorize(token, "deploy:production", now=now)  # type: ignore[arg-type]
    assert again.value.code == case["code"]


# -- not attacks: the boundaries the attacks lean on ---------------------------------------


def test_credential_verifies_within_expiry_leeway(attack: Attack) -> None:
    gate, cred = attack.gate, attack.credential
    leeway = gate.config.limits.leeway_seconds
    exp = cred.expires_at.timestamp()
    for t in (exp - 1, exp, exp + leeway - 0.01):
        assert gate.credential_manager.verify(cred.token, now=t).jti == cred.jti
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(cred.token, now=exp + leeway)
    assert info.value.code == "expired"


def test_credential_verifies_within_not_before_leeway(attack: Attack) -> None:
    gate, cred = attack.gate, attack.credential
    leeway = gate.config.limits.leeway_seconds
    iat = cred.issued_at.timestamp()
    assert gate.credential_manager.verify(cred.token, now=iat - leeway + 0.01).jti == cred.jti
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(cred.token, now=iat - leeway - 0.01)
    assert info.value.code == "not_yet_valid"


def test_forged_token_with_valid_claims_is_accepted(attack: Attack) -> None:
    """Control for the forge mutator: re-signing the genuine claims changes nothing."""
    token = m_forge(attack)
    claims = attack.gate.credential_manager.verify(token)
    assert claims.jti == attack.credential.jti
    assert list(claims.scope) == SCOPE


# -- proof of possession: a stolen token without the agent's key is useless ---------------------


@pytest.fixture
def pop(template: Path, tmp_path: Path) -> Iterator[tuple[opsgate.Gate, Any, Any]]:
    """A copy of the template gate that demands proof of possession on every use."""
    state = tmp_path / "state"
    shutil.copytree(template, state)
    with opsgate.Gate.open(state, require_proof=True) as gate:
        agent = gate.agents.get("deploy-agent")
        yield gate, agent, agent.credential(scope=SCOPE)


def _proof(key: Ed25519PrivateKey, token: str, ctx: str, iat: float, **extra: Any) -> str:
    """A proof for `gate.authorize(token, ctx)`, built by hand (not with the SDK)."""
    header = b64(compact_json({"alg": "EdDSA", "typ": "opsgate-pop+jwt", **extra.pop("h", {})}))
    # The canonical request: JSON, keys sorted, no spaces; its SHA-256 is signed.
    request = json.dumps(
        {"kind": "authorize", "capability": ctx, "params": None},
        separators=(",", ":"),
        sort_keys=True,
    ).encode("utf-8")
    claims = {
        "ath": b64(hashlib.sha256(token.encode("ascii")).digest()),
        "req": b64(hashlib.sha256(request).digest()),
        "iat": iat,
        "jti": b64(os.urandom(16)),
        **extra,
    }
    return sign(key, header, b64(compact_json(claims)))


POP_CASES = [
    # (id, how the proof is made, expected code)
    ("no-proof", "none", "missing_proof"),
    ("signed-by-another-key", "other_key", "bad_proof"),
    ("signed-by-the-gate-key", "gate_key", "bad_proof"),
    ("for-another-token", "other_token", "bad_proof"),
    ("for-another-request", "other_ctx", "bad_proof"),
    ("stale", "stale", "bad_proof"),
    ("from-the-future", "future", "bad_proof"),
    ("wrong-typ", "wrong_typ", "bad_proof"),
    ("alg-none", "alg_none", "bad_proof"),
    ("not-a-jws", "garbage", "bad_proof"),
    ("replayed", "replay", "proof_replayed"),
]


@pytest.mark.parametrize(("how", "code"), [c[1:] for c in POP_CASES], ids=[c[0] for c in POP_CASES])
def test_proof_of_possession_attack_is_refused(
    pop: tuple[opsgate.Gate, Any, Any], how: str, code: str
) -> None:
    gate, agent, handle = pop
    token, ctx, now = handle.token, "deploy:production/app-web", time.time()
    key = gate.agents.private_key(agent.did)
    other = gate.credential_manager.issue_credential(agent.did, SCOPE).token
    proofs: dict[str, Callable[[], str | None]] = {
        "none": lambda: None,
        "other_key": lambda: _proof(Ed25519PrivateKey.generate(), token, ctx, now),
        "gate_key": lambda: _proof(gate.keyring.signer()[1], token, ctx, now),
        "other_token": lambda: _proof(key, other, ctx, now),
        "other_ctx": lambda: _proof(key, token, "deploy:production/app-api", now),
        "stale": lambda: _proof(key, token, ctx, now - 120),
        "future": lambda: _proof(key, token, ctx, now + 120),
        "wrong_typ": lambda: _proof(key, token, ctx, now, h={"typ": "JWT"}),
        "alg_none": lambda: _proof(key, token, ctx, now, h={"alg": "none"}),
        "garbage": lambda: "a.b.c",
        "replay": lambda: handle.authorize_proof(ctx, now=now),
    }
    proof = proofs[how]()
    if how == "replay":
        assert gate.authorize(token, ctx, proof=proof, now=now).effect
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.authorize(token, ctx, proof=proof, now=now)
    assert info.value.code == code


def test_proof_of_possession_accepted_when_genuine(pop: tuple[opsgate.Gate, Any, Any]) -> None:
    gate, agent, handle = pop
    ctx = "deploy:production/app-web"
    for _ in range(3):  # a fresh proof per request
        decision = gate.authorize(handle.token, ctx, proof=handle.authorize_proof(ctx))
        assert decision.violation is None
    key = gate.agents.private_key(agent.did)
    proof = _proof(key, handle.token, ctx, time.time())
    request = opsgate.ProofRequest.authorize(ctx)
    assert gate.credential_manager.verify(handle.token, proof=proof, proof_context=request)
