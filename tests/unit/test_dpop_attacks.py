"""DPoP attacks as data (tests/data/dpop_attacks.yaml): each breaks one part of a
valid request to the HTTP API and must get its exact code and status; nothing runs,
and a genuine credential's refusal is charged to its agent as misuse, once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DATA, audit_events, deploy, stored_trust
from server_helpers import Api, open_api, proof_parts, sign

from opsgate.credentials.proof import ProofRequest
from opsgate.identity.keys import b64url
from opsgate.operations.base import Operation
from opsgate.secrets.value import SecretValue

CASES = yaml.safe_load((DATA / "dpop_attacks.yaml").read_text())["cases"]
OPERATION = deploy("staging/app-web")
OPERATION_BODY = {
    "action": OPERATION.action,
    "resource": OPERATION.resource,
    "params": OPERATION.params,
    "dry_run": False,
    "approval_id": None,
}


def _apply(target: dict[str, Any], changes: dict[str, Any] | None) -> None:
    for key, value in (changes or {}).items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def attack(api: Api, case: dict[str, Any], token: str) -> Any:
    """Send the case's request; returns the (last) response."""
    agent_key = api.agent_key()
    attacker = Ed25519PrivateKey.generate()
    key = attacker if case.get("key") == "attacker" else agent_key
    op = deploy("staging/app-web", noise="other") if case.get("body") == "other" else OPERATION
    header, claims = proof_parts(key, "POST", "/v1/operations", token, ProofRequest.execute(op))
    _apply(header, case.get("header"))
    _apply(header["jwk"], case.get("jwk"))
    _apply(claims, case.get("claims"))
    if "iat_offset" in case:
        claims["iat"] += case["iat_offset"]
    signer = attacker if case.get("signer") == "attacker" else key
    proof = sign(signer, header, claims, signature=case.get("signature", True))
    headers: list[tuple[str, str]] = [
        ("Authorization", f"{case.get('scheme', 'DPoP')} {token}"),
        ("Content-Type", "application/json"),
    ]
    headers += [("DPoP", proof)] * case.get("proofs", 1)
    if "host" in case:
        headers.append(("Host", case["host"]))
    body = OPERATION_BODY
    import orjson

    raw = orjson.dumps(body)
    times = 2 if case.get("replay") else 1
    response = None
    for _ in range(times):
        response = api.client.post("/v1/operations", content=raw, headers=headers)
    return response


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_dpop_attack(tmp_path: Path, case: dict[str, Any]) -> None:
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    token = api.credential()
    if case.get("token") == "forged":
        head, body, _ = token.split(".")
        token = f"{head}.{body}.{'A' * 86}"
    before = stored_trust(api.gate, did)
    response = attack(api, case, token)
    expect = case["expect"]
    assert response.status_code == expect["status"], response.text
    data = response.json()
    assert data["code"] == expect["code"], data
    assert set(data) == {"error", "code", "message"}
    ran = 1 if case.get("replay") else 0  # the first of a replayed pair is genuine
    assert api.world.executor.count == ran
    misuse = api.gate.config.trust.deltas.credential_misuse
    charged = stored_trust(api.gate, did) - before
    if expect["charged"]:
        success = api.gate.config.trust.deltas.success if ran else 0
        assert charged == misuse + success
    else:
        assert charged == 0
    rejected = audit_events(api.gate, "credential.rejected")
    if case.get("token") == "forged":  # proves no agent: counted in the refusal summary
        assert api.gate.credential_manager.unproven_refusals.flush()
        (summary,) = audit_events(api.gate, "credential.rejected_summary")
        assert summary["codes"] == {expect["code"]: 1}
    else:
        assert rejected and rejected[-1]["code"] == expect["code"]


def test_misuse_is_charged_once_per_credential(tmp_path: Path) -> None:
    """Three bad proofs with one stolen credential cost its agent one charge."""
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    token = api.credential()
    before = stored_trust(api.gate, did)
    for _ in range(3):
        r = attack(api, {"key": "attacker"}, token)
        assert r.json()["code"] == "dpop_key_mismatch"
    assert stored_trust(api.gate, did) - before == api.gate.config.trust.deltas.credential_misuse


def test_a_valid_request_runs(tmp_path: Path) -> None:
    """The control: the same request unbroken runs once."""
    api = open_api(tmp_path / "state")
    r = attack(api, {}, api.credential())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    assert api.world.executor.count == 1


def test_cases_are_checked(tmp_path: Path) -> None:
    """A wrong expectation fails the runner: the table cannot pass vacuously."""
    api = open_api(tmp_path / "state")
    r = attack(api, {"claims": {"htm": "GET"}}, api.credential())
    assert r.json()["code"] != "dpop_stale"
    assert {c["expect"]["code"] for c in CASES} >= {
        "missing_proof",
        "dpop_multiple",
        "dpop_bad_type",
        "dpop_alg_not_allowed",
        "dpop_private_key",
        "dpop_htm_mismatch",
        "dpop_htu_mismatch",
        "dpop_stale",
        "proof_replayed",
        "dpop_ath_missing",
        "dpop_ath_mismatch",
        "dpop_key_mismatch",
        "dpop_request_mismatch",
    }


def _post_operation(api: Api, token: str, proof: str) -> Any:
    """The deploy operation sent with `proof` as its DPoP header."""
    return api.client.post(
        "/v1/operations",
        content=orjson.dumps(OPERATION_BODY),
        headers={
            "Authorization": f"DPoP {token}",
            "DPoP": proof,
            "Content-Type": "application/json",
        },
    )


def _sign_raw(key: Ed25519PrivateKey, header: dict[str, Any], payload: str) -> str:
    """A JWS over payload text as given (JSON no encoder writes: an integer of 400 digits)."""
    h = b64url(orjson.dumps(header))
    p = b64url(payload.encode())
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


@pytest.mark.parametrize("iat", ["1" + "0" * 400, "-1" + "0" * 400])
def test_an_iat_beyond_any_float_is_malformed_not_a_crash(tmp_path: Path, iat: str) -> None:
    """An integer iat too large for a float is refused dpop_malformed (it was a 500)."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    key = api.agent_key()
    req = ProofRequest.execute(OPERATION)
    header, claims = proof_parts(key, "POST", "/v1/operations", token, req)
    claims["iat"] = 0
    payload = orjson.dumps(claims).decode().replace('"iat":0', f'"iat":{iat}')
    r = _post_operation(api, token, _sign_raw(key, header, payload))
    assert (r.status_code, r.json()["code"]) == (401, "dpop_malformed"), r.text
    assert api.world.executor.count == 0


SECRET_SCOPE = ["read:secrets/staging", "write:secrets/staging"]
SECRET_PATH = "secrets/staging/db"


def _secret_write(value: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "write",
        "resource": SECRET_PATH,
        "params": {},
        "dry_run": False,
        "approval_id": None,
    }
    if value is not None:
        body["secret"] = value
    return body


def _secrets_agent(api: Api) -> tuple[Ed25519PrivateKey, str]:
    agent = api.gate.register_agent("secrets-agent", SECRET_SCOPE, "lead@company.com", 800)
    return api.agent_key(agent), api.credential(agent, SECRET_SCOPE)


def _stored(api: Api, key: Ed25519PrivateKey, token: str) -> Any:
    """The stored value read back through the API, or the read's failure code."""
    read = Operation("read", SECRET_PATH, {})
    body = {**_secret_write(None), "action": "read"}
    r = api.agent_call(
        "POST", "/v1/operations", token, body, request=ProofRequest.execute(read), key=key
    )
    assert r.status_code == 200, r.text
    detail = r.json()["detail"]
    return detail.get("value", detail.get("code"))


def test_a_captured_secret_write_proof_cannot_plant_another_value(tmp_path: Path) -> None:
    """The review's finding: a proof for a write of value A, sent first with value B by
    whoever saw it in transit, was accepted (B stored, the agent's own request then
    proof_replayed). The proof binds the value: B is refused like any other body, nothing
    is written, and the agent's request with the same proof still runs."""
    api = open_api(tmp_path / "state")
    key, token = _secrets_agent(api)
    honest = Operation("write", SECRET_PATH, {}, secret=SecretValue("agents-real-value"))
    header, claims = proof_parts(key, "POST", "/v1/operations", token, ProofRequest.execute(honest))
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": sign(key, header, claims),
        "Content-Type": "application/json",
    }
    evil = orjson.dumps(_secret_write("ATTACKER-CHOSEN-VALUE"))
    r = api.client.post("/v1/operations", content=evil, headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_request_mismatch"), r.text
    assert "ATTACKER-CHOSEN-VALUE" not in r.text
    assert _stored(api, key, token) == "secret_not_found"
    r = api.client.post(
        "/v1/operations", content=orjson.dumps(_secret_write("agents-real-value")), headers=headers
    )
    assert (r.status_code, r.json()["status"]) == (200, "succeeded"), r.text
    assert _stored(api, key, token) == "agents-real-value"


@pytest.mark.parametrize(
    ("signed", "sent"),
    [("value-a", "value-b"), (None, "value-b"), ("value-a", None), ("value-a", "value-a ")],
    ids=["other-value", "value-added", "value-dropped", "value-changed-by-a-space"],
)
def test_a_secret_write_proof_is_for_its_value_alone(
    tmp_path: Path, signed: str | None, sent: str | None
) -> None:
    """A proof for a write without a value does not carry one with a value, nor the
    other way round, nor any other value: refused, charged, nothing written."""
    api = open_api(tmp_path / "state")
    key, token = _secrets_agent(api)
    did = api.gate.agents.resolve("secrets-agent")
    before = stored_trust(api.gate, did)
    secret = None if signed is None else SecretValue(signed)
    request = ProofRequest.execute(Operation("write", SECRET_PATH, {}, secret=secret))
    body = _secret_write(sent)
    r = api.agent_call("POST", "/v1/operations", token, body, request=request, key=key)
    assert (r.status_code, r.json()["code"]) == (401, "dpop_request_mismatch"), r.text
    assert stored_trust(api.gate, did) - before == api.gate.config.trust.deltas.credential_misuse
    assert _stored(api, key, token) == "secret_not_found"


def _sign_bytes(key: Ed25519PrivateKey, header: dict[str, Any], payload: bytes) -> str:
    h = b64url(orjson.dumps(header))
    p = b64url(payload)
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: text.encode("utf-16"), id="utf-16"),
        pytest.param(lambda text: text.encode("utf-32-le"), id="utf-32"),
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="utf-8 with a BOM"),
        pytest.param(
            lambda text: text.replace('"htm":', '"htm":"GET","htm":', 1).encode(),
            id="duplicate member",
        ),
    ],
)
def test_a_payload_signed_as_anything_but_plain_utf8_json_is_malformed(
    tmp_path: Path, encode: Any
) -> None:
    """A proof's payload is UTF-8 JSON with no duplicate member (RFC 7519 §7.2, RFC
    7515 §4): anything else, however well signed, is refused before anything runs."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    key = api.agent_key()
    header, claims = proof_parts(
        key, "POST", "/v1/operations", token, ProofRequest.execute(OPERATION)
    )
    payload = encode(orjson.dumps(claims).decode())
    r = _post_operation(api, token, _sign_bytes(key, header, payload))
    assert (r.status_code, r.json()["code"]) == (401, "dpop_malformed"), r.text
    assert api.world.executor.count == 0
    # The same claims as plain UTF-8 run.
    r = _post_operation(api, token, _sign_bytes(key, header, orjson.dumps(claims)))
    assert r.status_code == 200, r.text
