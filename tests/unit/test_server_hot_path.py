"""The authorize route's shortcuts answer exactly as the long way: the proof's path,
the JSON depth check, the remembered subs, the per-agent refusal budget and the route
taken before FastAPI's stack (under a root path too)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from server_helpers import BASE, count_authorize_calls, open_api, proof_parts, sign
from starlette.requests import Request

from opsgate.config import ServerConfig
from opsgate.credentials.proof import ProofRequest
from opsgate.identity.keys import b64url
from opsgate.server import create_app
from opsgate.server.context import unverified_sub
from opsgate.server.limits import json_depth_ok
from opsgate.server.paths import request_path


def _request(path: str, host: bytes = b"gate.example") -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogatepass"),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", host)],
            "server": ("127.0.0.1", 8080),
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    path=st.text(min_size=0, max_size=30).map(lambda s: "/" + s),
    host=st.sampled_from([b"gate.example", b"gate.example:8443", b"bad host/x?#", b""]),
)
def test_the_proofs_path_is_the_urls_path(path: str, host: bytes) -> None:
    """Whatever the path and the Host header, the path a proof's htu is checked
    against is the one Starlette's request URL gives."""
    request = _request(path, host)
    assert request_path(request) == request.url.path


@pytest.mark.parametrize(
    "path", ["/v1/authorize", "/gate/v1/authorize", "//x", "/a?b", "/a#b", "/a\\b", "/é", "/a b"]
)
def test_the_proofs_path_for_named_paths(path: str) -> None:
    request = _request(path)
    assert request_path(request) == request.url.path


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=_JSON, limit=st.integers(min_value=0, max_value=6))
def test_the_depth_check_counts_nesting_not_brackets_in_strings(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert json_depth_ok(raw, limit) == (_depth(value) <= limit)


def _token(payload: object) -> str:
    return "eyJhbGciOiJFZERTQSJ9." + b64url(orjson.dumps(payload)) + "." + "A" * 86


def test_a_remembered_sub_is_the_same_answer() -> None:
    agent = _token({"sub": "did:key:z6MkAgent"})
    none = _token({"iss": "x"})
    long = _token({"sub": "x" * 65})
    for _ in range(2):  # the second time from memory
        assert unverified_sub(agent) == "did:key:z6MkAgent"
        assert unverified_sub(none) is None
        assert unverified_sub(long) is None
        assert unverified_sub("not.a-token") is None


def _authorize(api: Any, token: str, capability: str = "deploy:staging/app") -> Any:
    key = api.agent_key()
    header, claims = proof_parts(
        key, "POST", "/v1/authorize", token, ProofRequest.authorize(capability, None)
    )
    return api.client.post(
        "/v1/authorize",
        content=orjson.dumps({"capability": capability}),
        headers={"Authorization": f"DPoP {token}", "DPoP": sign(key, header, claims)},
    )


def test_an_agent_out_of_refusals_is_refused_before_its_request_is_read(tmp_path: Path) -> None:
    """An agent whose refusals used up its budget is answered 429 whatever it sends,
    from any address, and nothing of the request reaches the gate."""
    api = open_api(tmp_path / "state", refusal_burst=3, refusal_rate=0.01)
    token = api.credential()
    assert _authorize(api, token).status_code == 200
    limiter = api.client.app.state.ctx.limiter  # type: ignore[attr-defined]
    for _ in range(3):
        limiter.charge(f"agent:{api.world.agent.did}", time.monotonic())
    head = api.gate.audit.head()[0]
    r = _authorize(api, token)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    assert api.gate.audit.head()[0] == head  # nothing decided, nothing recorded


def test_the_direct_route_is_taken_under_a_root_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served under a root path, POST <root>/v1/authorize is the direct route; other
    methods and paths stay with the router."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    calls = count_authorize_calls(monkeypatch)
    client = TestClient(
        create_app(api.gate, ServerConfig(external_url=BASE + "/gate")), root_path="/gate"
    )
    key = api.agent_key()
    capability = "deploy:staging/app"
    header, claims = proof_parts(
        key, "POST", "/v1/authorize", token, ProofRequest.authorize(capability, None)
    )
    claims["htu"] = BASE + "/gate/v1/authorize"
    r = client.post(
        "/v1/authorize",
        content=orjson.dumps({"capability": capability}),
        headers={"Authorization": f"DPoP {token}", "DPoP": sign(key, header, claims)},
    )
    assert r.status_code == 200, r.text
    assert r.json()["effect"] == "allow"
    assert calls == [1]
    assert client.get("/v1/authorize").status_code == 405
    assert client.post("/v1/authorize/", content=b"{}").status_code == 404
    assert calls == [1]


def test_an_unexpected_failure_is_the_same_500_either_way(tmp_path: Path) -> None:
    """An exception no one expected becomes the server-error middleware's 500 (no
    detail of it in the answer) on the direct route as through the router."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail of the failure")

    answers = []
    for direct in (True, False):
        api = open_api(tmp_path / f"state-{direct}", direct_authorize=direct)
        api.client.app.state.ctx.agent_auth = broken  # type: ignore[attr-defined]
        client = TestClient(api.client.app, raise_server_exceptions=False)
        r = client.post("/v1/authorize", content=b"{}", headers={"Authorization": "DPoP x"})
        answers.append((r.status_code, r.text, r.headers.get("content-type")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 500
    assert "secret detail" not in answers[0][1]


def test_only_credential_sized_tokens_are_remembered() -> None:
    """Junk as long as the largest header allowed is answered but not kept: the memory
    of subs (and of credential hashes) cannot be filled with it."""
    from opsgate.credentials import proof as proof_module
    from opsgate.server import context

    huge = _token({"sub": "did:key:z6MkHuge", "pad": "x" * 6000})
    assert unverified_sub(huge) == "did:key:z6MkHuge"
    assert context._SUBS.get(huge) is None
    proof_module.token_hash(huge)
    assert huge not in proof_module._ATH
