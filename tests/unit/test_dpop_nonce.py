"""Server nonces (RFC 9449 §8, `server.dpop_nonce`): a proof must carry a nonce the
gate handed out in the current or the previous window. Without one the answer is
401 `use_dpop_nonce` with a fresh `DPoP-Nonce` (not charged, not rate limited, no
database work); a nonce from another gate, a forged, tampered or expired one gets
the same answer; any replica accepts any replica's nonces; the SDK retries once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import audit_types, deploy, stored_trust
from server_helpers import BASE, Api, open_api, proof_parts, sign

from opsgate.client import RemoteGate
from opsgate.config import ServerConfig
from opsgate.credentials.proof import ProofRequest
from opsgate.errors import OpsgateError
from opsgate.identity.keys import b64url
from opsgate.server import create_app
from opsgate.server.nonce import issue_nonce, nonce_key, nonce_valid

CAP = "deploy:staging/app-web"
KEY = nonce_key("opsgate:test", b"k" * 32)


def _authorize(api: Api, token: str, nonce: str | None, *, key: Any = None) -> Any:
    """POST /v1/authorize with a proof carrying `nonce` (no claim when None)."""
    signer = key or api.agent_key()
    header, claims = proof_parts(signer, "POST", "/v1/authorize", token, _request())
    if nonce is not None:
        claims["nonce"] = nonce
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": sign(signer, header, claims),
        "Content-Type": "application/json",
    }
    return api.client.post(
        "/v1/authorize", content=orjson.dumps({"capability": CAP}), headers=headers
    )


def _request() -> ProofRequest:
    return ProofRequest.authorize(CAP, None)


def _used_proofs(api: Api) -> int:
    from sqlalchemy import func, select

    from opsgate.store import schema

    with api.gate.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.used_proofs)).scalar_one())


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return open_api(tmp_path / "state", dpop_nonce=True, dpop_nonce_seconds=60)


# -- the nonce itself (pure) ------------------------------------------------------------------


def test_a_nonce_lives_for_its_window_and_the_next_only() -> None:
    t = 1_000_000.0 * 60
    nonce = issue_nonce(KEY, 60, t)
    assert nonce_valid(KEY, 60, t, nonce)
    assert nonce_valid(KEY, 60, t + 119, nonce)  # the next window
    assert not nonce_valid(KEY, 60, t + 120, nonce)  # two windows on
    assert not nonce_valid(KEY, 60, t - 1, nonce)  # issued "in the future"
    assert issue_nonce(KEY, 60, t + 59) == nonce  # one per window: every replica agrees


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "x",
        "A" * 32,
        "A" * 31 + "=",
        issue_nonce(nonce_key("opsgate:other", b"k" * 32), 60, 60_000_000.0),  # other gate
        issue_nonce(nonce_key("opsgate:test", b"j" * 32), 60, 60_000_000.0),  # other key
    ],
)
def test_a_nonce_not_issued_under_this_key_is_refused(bad: object) -> None:
    assert not nonce_valid(KEY, 60, 60_000_000.0, bad)


def test_a_tampered_window_does_not_verify() -> None:
    import struct

    from opsgate.identity.keys import b64url_decode

    raw = b64url_decode(issue_nonce(KEY, 60, 60_000_000.0))
    moved = struct.pack(">q", struct.unpack(">q", raw[:8])[0] + 1) + raw[8:]
    assert not nonce_valid(KEY, 60, 60_000_060.0, b64url(moved))


# -- over HTTP ----------------------------------------------------------------------------


def test_a_proof_without_the_nonce_gets_one_and_nothing_else_happens(api: Api) -> None:
    token = api.credential()
    did = api.world.agent.did
    before_trust, before_audit = stored_trust(api.gate, did), len(audit_types(api.gate))
    before_proofs = _used_proofs(api)
    r = _authorize(api, token, None)
    assert r.status_code == 401 and r.json()["code"] == "use_dpop_nonce", r.text
    assert 'error="use_dpop_nonce"' in r.headers["www-authenticate"]
    nonce = r.headers["dpop-nonce"]
    assert nonce_valid(api.client.app.state.ctx._nonce_key(), 60, time.time(), nonce)
    assert stored_trust(api.gate, did) == before_trust  # a protocol step, not misuse
    assert len(audit_types(api.gate)) == before_audit
    assert _used_proofs(api) == before_proofs
    ok = _authorize(api, token, nonce)
    assert ok.status_code == 200 and ok.json()["effect"] == "allow", ok.text
    assert ok.headers["dpop-nonce"] == nonce  # every answer names the current nonce


@pytest.mark.parametrize("kind", ["forged", "other gate", "expired", "wrong type"])
def test_a_bad_nonce_is_answered_with_a_fresh_one(api: Api, tmp_path: Path, kind: str) -> None:
    token = api.credential()
    ctx = api.client.app.state.ctx
    nonce: Any = {
        "forged": "A" * 32,
        "other gate": open_api(
            tmp_path / "other", dpop_nonce=True
        ).client.app.state.ctx.current_nonce(),
        "expired": ctx.current_nonce(time.time() - 180),
        "wrong type": 12345,
    }[kind]
    r = _authorize(api, token, nonce)
    assert r.status_code == 401 and r.json()["code"] == "use_dpop_nonce", r.text
    assert r.headers["dpop-nonce"] == ctx.current_nonce()


def test_the_previous_windows_nonce_is_still_accepted(api: Api) -> None:
    ctx = api.client.app.state.ctx
    token = api.credential()
    previous = ctx.current_nonce(time.time() - 60)
    assert previous != ctx.current_nonce()
    r = _authorize(api, token, previous)
    assert r.status_code == 200, r.text


def test_nonce_challenges_are_not_rate_limited_as_refusals(api: Api) -> None:
    token = api.credential()
    burst = api.gate.config.server.refusal_burst
    for _ in range(burst * 2):
        r = _authorize(api, token, None)
        assert r.status_code == 401 and r.json()["code"] == "use_dpop_nonce"
    assert _authorize(api, token, r.headers["dpop-nonce"]).status_code == 200


def test_the_signed_nonce_is_the_one_checked(api: Api) -> None:
    """A valid nonce cannot be pasted into someone else's proof: the nonce is a claim
    under the proof's signature, and a proof by another key is refused (charged)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    token = api.credential()
    nonce = api.client.app.state.ctx.current_nonce()
    r = _authorize(api, token, nonce, key=Ed25519PrivateKey.generate())
    assert r.status_code == 401 and r.json()["code"] == "dpop_key_mismatch", r.text


def test_another_replica_accepts_this_replicas_nonce(tmp_path: Path) -> None:
    """A second gate process's view of the same state (its own Gate, the same keys):
    no nonce state is shared, yet its nonces are valid here and the reverse."""
    from fastapi.testclient import TestClient

    import opsgate

    api = open_api(tmp_path / "state", dpop_nonce=True)
    with opsgate.Gate.open(tmp_path / "state") as replica:
        second = create_app(replica, ServerConfig(external_url=BASE, dpop_nonce=True))
        with TestClient(second) as client:
            token = api.credential()
            nonce = _authorize(api, token, None).headers["dpop-nonce"]
            assert second.state.ctx.current_nonce() == nonce
            header, claims = proof_parts(
                api.agent_key(), "POST", "/v1/authorize", token, _request()
            )
            claims["nonce"] = nonce
            r = client.post(
                "/v1/authorize",
                content=orjson.dumps({"capability": CAP}),
                headers={
                    "Authorization": f"DPoP {token}",
                    "DPoP": sign(api.agent_key(), header, claims),
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code == 200, r.text


def test_without_nonces_a_nonce_claim_is_malformed_and_no_nonce_is_offered(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    r = _authorize(api, token, "A" * 32)
    assert r.status_code == 401 and r.json()["code"] == "dpop_malformed"
    assert "dpop-nonce" not in r.headers
    assert _authorize(api, token, None).status_code == 200


# -- the SDK ---------------------------------------------------------------------------------


class _Counting(httpx.BaseTransport):
    """The test client's transport, counting requests; can replace the nonce it
    hands back with a useless one."""

    def __init__(self, inner: httpx.BaseTransport, *, spoil: bool = False) -> None:
        self.inner = inner
        self.spoil = spoil
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = self.inner.handle_request(request)
        if self.spoil and "dpop-nonce" in response.headers:
            response.headers["dpop-nonce"] = "A" * 32
        return response


def test_the_sdk_retries_once_with_the_nonce_and_then_keeps_it(api: Api) -> None:
    transport = _Counting(api.client._transport)
    with RemoteGate(BASE, api.agent_key(), transport=transport) as gate:
        cred = gate.credential(["deploy:staging", "deploy:production"])
        assert gate.authorize(cred, CAP).effect == "allow"
        assert transport.paths == ["/v1/credentials", "/v1/authorize", "/v1/authorize"]
        assert gate.execute(cred, deploy("staging/app-web")).status == "succeeded"
        assert transport.paths[3:] == ["/v1/operations"]  # the nonce it was given
    assert stored_trust(api.gate, api.world.agent.did) >= 900  # never charged


def test_the_sdk_retries_only_once(api: Api) -> None:
    transport = _Counting(api.client._transport, spoil=True)
    with RemoteGate(BASE, api.agent_key(), transport=transport) as gate:
        cred = gate.credential(["deploy:staging"])
        with pytest.raises(OpsgateError) as refused:
            gate.authorize(cred, CAP)
        assert refused.value.code == "use_dpop_nonce"
        assert transport.paths.count("/v1/authorize") == 2
