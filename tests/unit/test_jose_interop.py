"""Credentials as other JOSE implementations see them: the algorithm names (`EdDSA`,
RFC 8037, and the fully specified `Ed25519`, RFC 9864) and integer NumericDates.

Each third-party check uses nothing but the token and the gate's JWK Set (and the
issuer and audience a relying party is told), as a service in another language would.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, UnsupportedAlgorithmError
from joserfc.jwk import KeySet

import opsgate
from opsgate.config import Limits
from opsgate.credentials import jws
from opsgate.errors import ConfigError

SCOPE = ["deploy:production"]
TIME_CLAIMS = ("iat", "nbf", "exp")


def _part(token: str, index: int) -> dict[str, Any]:
    text = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _open(path: Path, **limits: Any) -> opsgate.Gate:
    gate = opsgate.Gate.open(path, limits=limits) if limits else opsgate.Gate.open(path)
    if not gate.agents.list():
        gate.register_agent(
            "deploy-agent", SCOPE, sponsor="platform-team@company.com", trust_score=900
        )
    return gate


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[opsgate.Gate]:
    with _open(tmp_path / "state") as g:
        yield g


def _issue(gate: opsgate.Gate, now: float | None = None) -> opsgate.Credential:
    did = gate.agents.get("deploy-agent").did
    return gate.credential_manager.issue_credential(did, SCOPE, now=now)


def strict_numeric_dates(claims: dict[str, Any]) -> None:
    """What a verifier that maps NumericDate onto an integer type demands."""
    for name in TIME_CLAIMS:
        assert type(claims[name]) is int, (name, claims[name])


# -- integer NumericDate ---------------------------------------------------------------------


def test_time_claims_are_integers_even_for_a_fractional_now(gate: opsgate.Gate) -> None:
    t = 1_900_000_000.987
    cred = _issue(gate, now=t)
    claims = _part(cred.token, 1)
    strict_numeric_dates(claims)
    # The raw JSON holds no fraction either (a decoder that sees "1.0" may still refuse).
    raw = base64.urlsafe_b64decode(cred.token.split(".")[1] + "==").decode()
    assert '"iat":1900000000,' in raw and '"exp":1900000900,' in raw
    assert claims["iat"] == claims["nbf"] == 1_900_000_000  # never after the issuance
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert cred.issued_at.timestamp() == claims["iat"]
    assert cred.expires_at.timestamp() == claims["exp"]
    assert gate.credential_manager.verify(cred.token, now=t).jti == cred.jti


def test_a_strict_verifier_accepts_the_credential_with_the_jwks_alone(
    gate: opsgate.Gate,
) -> None:
    cred = _issue(gate)
    jwks = json.loads(json.dumps(gate.jwks()))  # as published: plain JSON
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(cred.token)["kid"]]
    claims = jwt.decode(
        cred.token,
        key=key,
        algorithms=["EdDSA"],
        audience="opsgate",
        issuer=gate.gate_id,
        options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"], "strict_aud": True},
    )
    strict_numeric_dates(claims)
    assert claims["sub"] == gate.agents.get("deploy-agent").did and claims["scope"] == SCOPE


# -- algorithm names -------------------------------------------------------------------------


def test_the_default_is_eddsa_which_pyjwt_and_joserfc_both_verify(gate: opsgate.Gate) -> None:
    cred = _issue(gate)
    assert _part(cred.token, 0)["alg"] == "EdDSA"
    assert {k["alg"] for k in gate.jwks()["keys"]} == {"EdDSA"}
    keyset = KeySet.import_key_set(gate.jwks())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        token = jose_jwt.decode(cred.token, keyset, algorithms=["EdDSA"])
    strict_numeric_dates(token.claims)
    # The price of the default: joserfc calls EdDSA deprecated (RFC 9864).
    assert any("RFC 9864" in str(w.message) for w in seen)


def test_ed25519_when_configured_verifies_with_joserfc_and_no_warning(tmp_path: Path) -> None:
    with _open(tmp_path / "state", signing_algorithm="Ed25519") as gate:
        cred = _issue(gate)
        assert _part(cred.token, 0) == {"alg": "Ed25519", "kid": cred.kid, "typ": "JWT"}
        jwks = gate.jwks()
        assert {k["alg"] for k in jwks["keys"]} == {"Ed25519"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            token = jose_jwt.decode(cred.token, KeySet.import_key_set(jwks), algorithms=["Ed25519"])
        strict_numeric_dates(token.claims)
        assert token.claims["iss"] == gate.gate_id
        assert gate.credential_manager.verify(cred.token).jti == cred.jti
        # joserfc binds the name to the key: the same signature is no Ed448 or EdDSA token
        with pytest.raises((BadSignatureError, UnsupportedAlgorithmError)):
            jose_jwt.decode(cred.token, KeySet.import_key_set(jwks), algorithms=["Ed448"])


def test_pyjwt_does_not_know_ed25519_which_is_why_eddsa_is_the_default(tmp_path: Path) -> None:
    """PyJWT 2.15.1 (pinned) has no `Ed25519` algorithm: a JWK Set whose keys say
    `alg: Ed25519` holds no key it can use. If this ever passes PyJWT's check, the
    default in `Limits.signing_algorithm` deserves another look."""
    with _open(tmp_path / "state", signing_algorithm="Ed25519") as gate:
        cred = _issue(gate)
        with pytest.raises(jwt.PyJWKSetError):
            jwt.PyJWKSet.from_dict(gate.jwks())
        key = jwt.PyJWK.from_dict({**gate.jwks()["keys"][0], "alg": "EdDSA"})
        with pytest.raises(jwt.InvalidAlgorithmError):
            jwt.decode(cred.token, key=key, algorithms=["Ed25519"], audience="opsgate")


def test_the_gate_verifies_both_names_for_its_own_key(gate: opsgate.Gate) -> None:
    cred = _issue(gate)
    kid, key = gate.keyring.signer()
    claims = _part(cred.token, 1)
    for alg in ("EdDSA", "Ed25519"):
        token = jws.encode(claims, key, kid, alg)
        assert gate.credential_manager.verify(token).jti == cred.jti, alg


@pytest.mark.parametrize(("allowed", "refused"), [(["EdDSA"], "Ed25519"), (["Ed25519"], "EdDSA")])
def test_an_algorithm_left_out_of_the_allow_list_is_refused(
    tmp_path: Path, allowed: list[str], refused: str
) -> None:
    with _open(tmp_path / "state", allowed_algorithms=allowed, signing_algorithm=allowed[0]) as g:
        cred = _issue(g)
        assert _part(cred.token, 0)["alg"] == allowed[0]
        kid, key = g.keyring.signer()
        token = jws.encode(_part(cred.token, 1), key, kid, refused)
        with pytest.raises(opsgate.InvalidCredential) as info:
            g.credential_manager.verify(token)
        assert info.value.code == "alg_not_allowed"


@pytest.mark.parametrize(
    "limits",
    [
        {"allowed_algorithms": ["Ed448"]},
        {"allowed_algorithms": ["EdDSA", "Ed448"]},
        {"allowed_algorithms": ["none"]},
        {"allowed_algorithms": ["HS256", "EdDSA"]},
        {"allowed_algorithms": ["ED25519"]},
        {"allowed_algorithms": []},
        {"allowed_algorithms": ["EdDSA", "EdDSA"]},
        {"signing_algorithm": "Ed448"},
        {"signing_algorithm": "none"},
        {"signing_algorithm": "ed25519"},
        {"allowed_algorithms": ["EdDSA"], "signing_algorithm": "Ed25519"},
    ],
)
def test_only_ed25519_algorithm_names_can_be_configured(tmp_path: Path, limits: Any) -> None:
    with pytest.raises(ValueError):
        Limits(**limits)
    with pytest.raises(ConfigError) as info:
        opsgate.Gate.open(tmp_path / "state", limits=limits)
    assert info.value.code == "config_invalid"


def test_the_default_allow_list_holds_both_names() -> None:
    assert Limits().allowed_algorithms == ("EdDSA", "Ed25519")
    assert Limits().signing_algorithm == "EdDSA"


def test_time_claims_of_a_renewed_handle_stay_integers(gate: opsgate.Gate) -> None:
    handle = gate.agents.get("deploy-agent").credential(scope=SCOPE)
    first = handle.current()
    second = handle.current(now=time.time() + 11 * 60)
    assert second.jti != first.jti
    for cred in (first, second):
        strict_numeric_dates(_part(cred.token, 1))
