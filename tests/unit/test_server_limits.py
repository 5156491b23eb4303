"""Client assertions, request limits, refusal rate limits and a forged-token flood."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DEPLOY_SCOPE
from server_helpers import BASE, open_api, sign

from opsgate.identity.keys import b64url, b64url_decode, did_from_public_key
from opsgate.server.dpop import make_assertion
from opsgate.server.limits import json_depth_ok


def assertion(key: Ed25519PrivateKey, **changes: Any) -> str:
    did = did_from_public_key(key.public_key())
    now = int(time.time())
    claims = {
        "iss": did,
        "sub": did,
        "aud": BASE,
        "iat": now,
        "exp": now + 30,
        "jti": b64url(b"0123456789abcdef" + now.to_bytes(8, "big")),
    }
    header = {"typ": "JWT", "alg": "EdDSA"}
    for k, v in changes.items():
        if k.endswith("_in"):  # seconds from now, read when the test runs
            claims[k[:-3]] = now + v
        elif k.startswith("h_"):
            header[k[2:]] = v
        elif v is None:
            claims.pop(k)
        else:
            claims[k] = v
    return sign(key, header, claims)


ASSERTION_CASES = [
    ("audience of another gate", {"aud": "http://other.example"}, 401, "bad_audience"),
    (
        "expired",
        {"iat_in": -300, "exp_in": -240},
        401,
        "assertion_expired",
    ),
    ("lives too long", {"exp_in": 3600}, 401, "assertion_lifetime"),
    (
        "issued in the future",
        {"iat_in": 120, "exp_in": 150},
        401,
        "assertion_not_yet_valid",
    ),
    (
        "iss differs from sub",
        {"sub": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"},
        401,
        "assertion_malformed",
    ),
    ("missing jti", {"jti": None}, 401, "assertion_malformed"),
    ("extra claim", {"scope": "x"}, 401, "assertion_malformed"),
    ("alg none", {"h_alg": "none"}, 401, "alg_not_allowed"),
    ("extra header", {"h_kid": "x"}, 401, "assertion_malformed"),
]


@pytest.mark.parametrize("case", ASSERTION_CASES, ids=[c[0] for c in ASSERTION_CASES])
def test_assertion_refused(tmp_path: Path, case: Any) -> None:
    api = open_api(tmp_path / "state")
    _, changes, status, code = case
    key = api.agent_key()
    r = api.client.post(
        "/v1/credentials", json={"assertion": assertion(key, **changes), "scope": DEPLOY_SCOPE}
    )
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert not [e for e in api.gate.audit.tail(100) if e.type == "credential.issued"][1:]


def test_assertion_is_single_use_and_signed_by_the_did(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    key = api.agent_key()
    a = make_assertion(key, BASE, time.time())
    body = {"assertion": a, "scope": DEPLOY_SCOPE}
    first = api.client.post("/v1/credentials", json=body)
    assert first.status_code == 201
    assert first.json()["agent"] == api.world.agent.did
    again = api.client.post("/v1/credentials", json=body)
    assert (again.status_code, again.json()["code"]) == (401, "assertion_replayed")
    # Signed by another key while naming the agent's did: refused before anything else.
    impostor = Ed25519PrivateKey.generate()
    did = api.world.agent.did
    forged = sign(
        impostor,
        {"typ": "JWT", "alg": "EdDSA"},
        {
            "iss": did,
            "sub": did,
            "aud": BASE,
            "iat": int(time.time()),
            "exp": int(time.time()) + 30,
            "jti": "x" * 22,
        },
    )
    r = api.client.post("/v1/credentials", json={"assertion": forged, "scope": DEPLOY_SCOPE})
    assert (r.status_code, r.json()["code"]) == (401, "bad_signature")


def test_an_assertion_of_no_agent_writes_nothing(tmp_path: Path) -> None:
    """Anyone can make a key and sign a valid client assertion with it: its single-use
    id was recorded (a durable write) before the gate found that no agent holds the
    key, and the 404 that followed is not a refusal the limiter counts, so strangers'
    assertions were unlimited writes. An assertion of no agent is refused first."""
    from sqlalchemy import func, select

    from opsgate.store import schema

    api = open_api(tmp_path / "state")

    def used() -> int:
        with api.gate.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.used_proofs)).scalar())

    before = used()
    for path, extra in (
        ("/v1/credentials", {"scope": DEPLOY_SCOPE}),
        ("/v1/credentials/grants", {}),
    ):
        for _ in range(5):
            stranger = make_assertion(Ed25519PrivateKey.generate(), BASE, time.time())
            r = api.client.post(path, json={"assertion": stranger, **extra})
            assert (r.status_code, r.json()["code"]) == (404, "agent_not_found"), path
    assert used() == before
    # An agent's own assertion is still used once.
    assertion = make_assertion(api.agent_key(), BASE, time.time())
    r = api.client.post("/v1/credentials", json={"assertion": assertion, "scope": DEPLOY_SCOPE})
    assert r.status_code == 201, r.text
    assert used() == before + 1
    r = api.client.post("/v1/credentials", json={"assertion": assertion, "scope": DEPLOY_SCOPE})
    assert (r.status_code, r.json()["code"]) == (401, "assertion_replayed")


def test_assertion_of_an_unknown_or_suspended_agent(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    stranger = Ed25519PrivateKey.generate()
    r = api.client.post(
        "/v1/credentials",
        json={"assertion": make_assertion(stranger, BASE, time.time()), "scope": DEPLOY_SCOPE},
    )
    assert (r.status_code, r.json()["code"]) == (404, "agent_not_found")
    api.gate.agents.suspend(api.world.agent.did, reason="test")
    r = api.client.post(
        "/v1/credentials",
        json={
            "assertion": make_assertion(api.agent_key(), BASE, time.time()),
            "scope": DEPLOY_SCOPE,
        },
    )
    assert (r.status_code, r.json()["code"]) == (403, "agent_suspended")
    # A scope wider than the grants: refused, and the credential is bound to the key.
    r = api.client.post(
        "/v1/credentials",
        json={
            "assertion": make_assertion(api.agent_key(api.world.supervisor), BASE, time.time()),
            "scope": ["deploy:production-eu"],
        },
    )
    assert (r.status_code, r.json()["code"]) == (403, "scope_not_covered")


def test_body_and_json_limits(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state", max_body_bytes=2048, max_json_depth=8)
    big = {"assertion": "x" * 4096, "scope": []}
    r = api.client.post("/v1/credentials", json=big)
    assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
    # Streamed without a length: still cut at the limit.
    r = api.client.post(
        "/v1/credentials",
        content=iter([b"{" + b" " * 3000 + b"}"]),
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
    deep = b'{"assertion": "a", "scope": ' + b"[" * 20 + b"]" * 20 + b"}"
    r = api.client.post("/v1/credentials", content=deep)
    assert (r.status_code, r.json()["code"]) == (422, "json_too_deep")
    r = api.client.post("/v1/credentials", content=b"{not json")
    assert (r.status_code, r.json()["code"]) == (422, "json_invalid")
    r = api.client.post("/v1/credentials", json={"assertion": "a", "scope": [], "admin": True})
    assert (r.status_code, r.json()["code"]) == (422, "request_invalid")


def test_json_depth_scanner_skips_strings() -> None:
    assert json_depth_ok(b'{"a": "[[[[[[[[[[[[[[[["}', 2)
    assert not json_depth_ok(b'{"a": [[[1]]]}', 3)
    assert json_depth_ok(b'{"a": "\\"[[[[", "b": [1]}', 2)


def test_refusals_are_rate_limited_per_address(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state", refusal_burst=5, refusal_rate=0.5, metrics_public=True)
    forged = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0." + "A" * 86
    codes = []
    for _ in range(8):
        r = api.client.post(
            "/v1/authorize",
            json={"capability": "deploy:staging"},
            headers={"Authorization": f"DPoP {forged}", "DPoP": "x"},
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    # Unauthenticated endpoints stay open; the metrics count the refusals by code.
    assert api.client.get("/healthz").status_code == 200
    text = api.client.get("/metrics").text  # public here: the address is out of tokens
    assert 'opsgate_refusals_total{code="rate_limited"} 3.0' in text


def test_forged_flood_writes_few_rows(tmp_path: Path) -> None:
    """2,000 forged credentials from one address: the limiter answers nearly all of
    them before the kernel, so audit rows stay near the burst, not one per request."""
    api = open_api(tmp_path / "state")
    head = api.gate.audit.head()[0]
    for i in range(2000):
        forged = f"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4{i}In0." + "A" * 86
        api.client.post(
            "/v1/authorize",
            json={"capability": "deploy:staging"},
            headers={"Authorization": f"DPoP {forged}", "DPoP": "x"},
        )
    rows = api.gate.audit.head()[0] - head
    burst = api.gate.config.server.refusal_burst
    assert rows <= burst + 10, rows


def test_metrics_and_readiness(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    assert api.client.get("/readyz").json() == {"status": "ready"}
    token = api.credential()
    from helpers import deploy

    api.execute(token, deploy("staging/app-web"))
    pending = api.execute(token, deploy())
    assert pending.status_code == 202
    assert pending.json()["status"] == "approval_pending"
    text = api.client.get("/metrics", headers=api.operator()).text
    assert 'opsgate_decisions_total{effect="allow"} 1.0' in text
    assert 'opsgate_decisions_total{effect="require_approval"} 1.0' in text
    assert "opsgate_pending_approvals 1.0" in text
    assert f"opsgate_audit_head_seq {float(api.gate.audit.head()[0])}" in text
    assert 'opsgate_trust_score{agent="deploy-agent"}' in text
    assert "opsgate_operation_seconds_count 2.0" in text
    # Another app on the same gate has its own registry (no clash, no sharing).
    from opsgate.config import ServerConfig
    from opsgate.server import create_app

    create_app(api.gate, ServerConfig(external_url=BASE))


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_assertion_time_beyond_any_float_is_malformed(tmp_path: Path, claim: str) -> None:
    """An integer iat or exp too large for a float, in an assertion signed by any key
    (no credential needed), is refused assertion_malformed (it was a 500)."""
    api = open_api(tmp_path / "state")
    key = Ed25519PrivateKey.generate()
    text = assertion(key, **{claim: 0})
    h, p, _ = text.split(".")
    payload = b64url_decode(p).decode().replace(f'"{claim}":0', f'"{claim}":1{"0" * 400}')
    p = b64url(payload.encode())
    forged = f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"
    r = api.client.post("/v1/credentials", json={"assertion": forged, "scope": DEPLOY_SCOPE})
    assert (r.status_code, r.json()["code"]) == (401, "assertion_malformed"), r.text


def test_a_refused_body_or_credential_carries_no_input_in_its_exception_chain(
    tmp_path: Path,
) -> None:
    """What a request held (a secret value too long to accept, Basic credentials that
    do not decode) stays out of the refusal's exception chain, where a traceback that
    any logger prints would show it."""
    import traceback

    from opsgate.errors import OpsgateError
    from opsgate.server.routes.operations import ExecuteBody

    api = open_api(tmp_path / "state")
    ctx = api.client.app.state.ctx  # type: ignore[attr-defined]
    secret = "s3cret-" + "x" * 1_048_576
    body = b'{"action": "write", "resource": "secrets/staging/db", "secret": "%s"}' % (
        secret.encode()
    )
    refusals = []
    for raw in (body, b'{"secret": "s3cret-not-json'):
        with pytest.raises(OpsgateError) as info:
            ctx.parse(raw, ExecuteBody)
        refusals.append(info.value)

    class Req:
        headers = type("H", (), {"getlist": staticmethod(lambda _: ["Basic " + "s3cret/w=="])})()
        client = None
        state = type("S", (), {})()

    with pytest.raises(OpsgateError) as info:
        ctx._basic(Req(), "operator", "\x00")
    refusals.append(info.value)
    for exc in refusals:
        assert exc.__cause__ is None and exc.__suppress_context__
        shown = "".join(traceback.format_exception(exc))
        assert "s3cret" not in shown, shown[:300]
