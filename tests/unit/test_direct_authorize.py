"""`POST /v1/authorize` straight to its endpoint (opsgate.server.app.DirectAuthorize)
answers, records and charges exactly as through FastAPI's router: the same status,
body and protocol headers for every kind of request, good or refused, and the router
keeps everything that is not a POST to that path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import audit_types, stored_trust
from server_helpers import Api, count_authorize_calls, open_api, proof_parts, sign

from opsgate.credentials.proof import ProofRequest

ALLOWED = "deploy:staging/app"
_HEADERS = ("content-type", "www-authenticate", "retry-after", "cache-control")


def _outcomes(api: Api) -> list[tuple[Any, ...]]:
    """Requests of every kind, each as (status, body, protocol headers, whether a
    nonce came back, audit records added, trust after)."""
    token = api.credential()
    did = api.world.agent.did
    key = api.agent_key()
    out: list[tuple[Any, ...]] = []

    def send(
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        records = len(audit_types(api.gate))
        r = api.client.request(method, path, content=content, headers=headers or {})
        try:
            body: Any = r.json()
        except ValueError:
            body = r.text
        if isinstance(body, dict):
            body.pop("nonce", None)  # each gate's own (its key's): compared by presence
            detail = body.get("detail")
            if isinstance(detail, dict):
                detail.pop("nonce", None)
        kept = {h: r.headers.get(h) for h in _HEADERS}
        added = tuple(audit_types(api.gate)[records:])
        nonce = "dpop-nonce" in r.headers
        out.append((r.status_code, body, kept, nonce, added, stored_trust(api.gate, did)))

    def authorize(
        capability: str = ALLOWED,
        *,
        body: bytes | None = None,
        proof: str | None = None,
        tok: str | None = None,
        htm: str = "POST",
        htu: str = "/v1/authorize",
        iat: float | None = None,
        dpop: bool = True,
        scheme: str = "DPoP",
        nonce: bool = False,
    ) -> str:
        tok = tok or token
        claims_extra: dict[str, Any] = {}
        header, claims = proof_parts(
            key, htm, htu, tok, ProofRequest.authorize(capability, None), now=iat
        )
        if nonce:
            claims_extra["nonce"] = api.client.app.state.ctx.current_nonce()  # type: ignore[attr-defined]
        proof = proof or sign(key, header, {**claims, **claims_extra})
        headers = {"Authorization": f"{scheme} {tok}", "Content-Type": "application/json"}
        if dpop:
            headers["DPoP"] = proof
        content = orjson.dumps({"capability": capability}) if body is None else body
        send("POST", "/v1/authorize", content=content, headers=headers)
        return proof

    authorize()
    authorize("migrate:database/orders")
    authorize("not a capability")
    authorize("DEPLOY:Staging/app")
    authorize(body=b"{not json")
    authorize(body=b"[1, 2]")
    authorize(body=b'{"capability": "deploy:staging/app", "extra": 1}')
    authorize(body=b"[" * 40 + b"]" * 40)
    authorize(body=b'{"capability": "' + b"x" * 70_000 + b'"}')
    authorize(tok="not-a-token")
    authorize(scheme="Basic")
    authorize(scheme="Bearer")
    authorize(htm="GET")
    authorize(dpop=False)
    used = authorize()
    authorize(proof=used)
    authorize(iat=time.time() - 3600)
    authorize(htu="/v1/operations")
    authorize(nonce=True)
    send("POST", "/v1/authorize", content=b"{}")  # no credentials at all
    send("GET", "/v1/authorize")
    send("POST", "/v1/authorize/", content=b"{}")
    send("POST", "/v1/authorize?x=1", content=b"{}")
    api.gate.agents.suspend(did, reason="investigation")
    authorize()
    for _ in range(25):  # past the refusal burst: 429 with Retry-After
        authorize(tok="not-a-token")
    return out


def test_direct_authorize_answers_records_and_charges_as_the_router_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = open_api(tmp_path / "direct")
    routed = open_api(tmp_path / "routed", direct_authorize=False)
    calls = count_authorize_calls(monkeypatch)

    got = _outcomes(direct)
    direct_calls = len(calls)
    want = _outcomes(routed)

    assert direct_calls >= 40 and len(calls) == direct_calls  # each way was the one taken

    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"request {i}"
    statuses = {o[0] for o in got}
    assert {200, 401, 403, 404, 405, 413, 422, 429} <= statuses  # every kind was tried


def test_direct_authorize_with_server_nonces_challenges_as_the_router_does(
    tmp_path: Path,
) -> None:
    direct = open_api(tmp_path / "direct", dpop_nonce=True)
    routed = open_api(tmp_path / "routed", dpop_nonce=True, direct_authorize=False)

    got, want = _outcomes(direct), _outcomes(routed)

    assert got == want
    challenged = [o for o in got if isinstance(o[1], dict) and o[1].get("code") == "use_dpop_nonce"]
    assert challenged and all(o[3] and o[2]["www-authenticate"] for o in challenged)
    assert any(o[0] == 200 for o in got)  # a proof with the nonce is decided


def test_the_direct_route_matches_the_path_the_router_matches() -> None:
    """Under a root path, the path the router sees is the rest of it, exactly."""
    from opsgate.server.paths import route_path

    def route(path: str, root: str = "") -> str:
        return route_path({"path": path, "root_path": root})

    assert route("/v1/authorize") == "/v1/authorize"
    assert route("/gate/v1/authorize", "/gate") == "/v1/authorize"
    assert route("/v1/authorize", "/v1/authorize") == ""
    assert route("/gatex/v1/authorize", "/gate") == "/gatex/v1/authorize"
    assert route("/v1/authorize", "/other") == "/v1/authorize"
