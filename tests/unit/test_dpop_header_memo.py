"""The DPoP check remembers proof headers it found well formed (an agent's proofs all
carry the same one): remembering must never let a proof through that the full check
refuses. Each test first gets a header remembered, then tries to ride on it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from server_helpers import BASE, proof_parts, sign

from opsgate.credentials.proof import ProofRequest
from opsgate.errors import InvalidCredential
from opsgate.identity.keys import b64url, jwk_thumbprint, public_bytes
from opsgate.server import dpop

TOKEN = "header.payload.signature"
REQUEST = ProofRequest.authorize("deploy:staging/app", None)
RULES = dpop.ProofRules(
    external_url=BASE,
    allowed_algorithms=("EdDSA",),
    window_seconds=60,
    leeway_seconds=5,
    replay_skew_seconds=5,
)


def _jkt(key: Ed25519PrivateKey) -> str:
    return jwk_thumbprint(public_bytes(key.public_key()))


def _check(proof: str, key: Ed25519PrivateKey, rules: dpop.ProofRules = RULES) -> None:
    seen: list[str] = []

    def use_once(jti: str, iat: float, window: float, bad: Any) -> None:
        if jti in seen:
            raise bad("proof was already used", code="proof_replayed")
        seen.append(jti)

    dpop.check_dpop(
        [proof],
        method="POST",
        path="/v1/authorize",
        token=TOKEN,
        jkt=_jkt(key),
        request=REQUEST,
        rules=rules,
        now=time.time(),
        use_once=use_once,
    )


def _proof(key: Ed25519PrivateKey, signer: Ed25519PrivateKey | None = None, **header: Any) -> str:
    head, claims = proof_parts(key, "POST", "/v1/authorize", TOKEN, REQUEST)
    head.update(header)
    return sign(signer or key, head, claims)


def _refused(proof: str, key: Ed25519PrivateKey, rules: dpop.ProofRules = RULES) -> str:
    with pytest.raises(InvalidCredential) as caught:
        _check(proof, key, rules)
    return caught.value.code


def test_a_remembered_header_still_needs_its_own_signature() -> None:
    """The same header text (the agent's key) on a proof the attacker signed."""
    agent, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _check(_proof(agent), agent)  # the header is remembered now
    forged = _proof(agent, signer=attacker)
    assert forged.split(".")[0] == _proof(agent).split(".")[0]
    assert _refused(forged, agent) == "dpop_bad_signature"


def test_a_remembered_header_is_checked_against_the_rules_in_force() -> None:
    """An algorithm allowed when the header was first seen is refused under rules
    that no longer allow it."""
    agent = Ed25519PrivateKey.generate()
    proof = _proof(agent)
    _check(proof, agent)
    strict = dataclasses.replace(RULES, allowed_algorithms=("Ed448",))
    assert _refused(_proof(agent), agent, strict) == "dpop_alg_not_allowed"
    _check(_proof(agent), agent)  # and allowed again under the first rules


def test_a_remembered_key_is_still_matched_to_the_credential() -> None:
    """A header remembered for one agent's key does not bind another's credential."""
    agent, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _check(_proof(agent), agent)
    assert _refused(_proof(agent), other) == "dpop_key_mismatch"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"typ": "JWT"}, "dpop_bad_type"),
        ({"alg": "none"}, "dpop_alg_not_allowed"),
        ({"kid": "extra"}, "dpop_malformed"),
    ],
)
def test_a_faulty_header_is_refused_every_time_and_never_remembered(
    header: dict[str, Any], code: str
) -> None:
    agent = Ed25519PrivateKey.generate()
    proof = _proof(agent, **header)
    assert _refused(proof, agent) == code
    assert _refused(proof, agent) == code
    assert proof.split(".")[0] not in dpop._PROOF_HEADERS


def test_a_private_jwk_is_refused_every_time() -> None:
    agent = Ed25519PrivateKey.generate()
    head, claims = proof_parts(agent, "POST", "/v1/authorize", TOKEN, REQUEST)
    head["jwk"] = {**head["jwk"], "d": b64url(b"\x01" * 32)}
    proof = sign(agent, head, claims)
    assert _refused(proof, agent) == "dpop_private_key"
    assert _refused(proof, agent) == "dpop_private_key"


def test_a_remembered_header_with_a_malformed_signature_is_malformed() -> None:
    """The signature's encoding is checked on every proof, remembered header or not."""
    agent = Ed25519PrivateKey.generate()
    _check(_proof(agent), agent)
    h, p, _ = _proof(agent).split(".")
    assert _refused(f"{h}.{p}.{'A' * 85}B", agent) == "dpop_malformed"


def test_duplicate_members_are_refused_in_the_header_and_the_claims() -> None:
    agent = Ed25519PrivateKey.generate()
    head, claims = proof_parts(agent, "POST", "/v1/authorize", TOKEN, REQUEST)
    h = b64url(orjson.dumps(head)[:-1] + b',"typ":"dpop+jwt"}')
    p = b64url(orjson.dumps(claims))
    proof = f"{h}.{p}.{b64url(agent.sign(f'{h}.{p}'.encode()))}"
    assert _refused(proof, agent) == "dpop_malformed"
    h = b64url(orjson.dumps(head))
    _check(sign(agent, head, claims), agent)  # this header is remembered now
    jti = claims["jti"]
    p = b64url(orjson.dumps(claims)[:-1] + f',"jti":"{jti}"}}'.encode())
    proof = f"{h}.{p}.{b64url(agent.sign(f'{h}.{p}'.encode()))}"
    assert _refused(proof, agent) == "dpop_malformed"


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dpop, "_PROOF_HEADERS_MAX", 3)
    monkeypatch.setattr(dpop, "_PROOF_HEADERS", {})
    for _ in range(10):
        agent = Ed25519PrivateKey.generate()
        _check(_proof(agent), agent)
        assert len(dpop._PROOF_HEADERS) <= 3
