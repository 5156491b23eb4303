"""Helpers for the HTTP API tests: an app over a World, and an agent that signs
requests (with hooks to break every part of a proof)."""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from helpers import DEPLOY_SCOPE, World, open_world

from opsgate.config import ServerConfig
from opsgate.credentials.proof import ProofRequest, token_hash
from opsgate.identity.keys import b64url
from opsgate.operations.base import Operation
from opsgate.server import create_app
from opsgate.server.dpop import body_request, make_assertion, public_jwk_of

BASE = "http://testserver"


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def sign(
    key: Ed25519PrivateKey, header: dict[str, Any], claims: dict[str, Any], signature: bool = True
) -> str:
    h = b64url(orjson.dumps(header))
    p = b64url(orjson.dumps(claims))
    s = b64url(key.sign(f"{h}.{p}".encode())) if signature else ""
    return f"{h}.{p}.{s}"


def proof_parts(
    key: Ed25519PrivateKey,
    method: str,
    path: str,
    token: str,
    request: ProofRequest,
    *,
    now: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": public_jwk_of(key)}
    jti = b64url(secrets.token_bytes(16))
    claims = {
        "jti": jti,
        "htm": method,
        "htu": BASE + path,
        "iat": int(time.time() if now is None else now),
        "ath": token_hash(token),
        "req": request.digest_for(token, jti),
    }
    return header, claims


@dataclass
class Api:
    world: World
    client: TestClient
    operator_token: str

    @property
    def gate(self) -> Any:
        return self.world.gate

    def agent_key(self, agent: Any = None) -> Ed25519PrivateKey:
        return self.gate.agents.private_key((agent or self.world.agent).did)

    def credential(self, agent: Any = None, scope: list[str] | None = None) -> str:
        key = self.agent_key(agent)
        r = self.client.post(
            "/v1/credentials",
            json={
                "assertion": make_assertion(key, BASE, time.time()),
                "scope": scope or DEPLOY_SCOPE,
            },
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def agent_call(
        self,
        method: str,
        path: str,
        token: str,
        body: dict[str, Any] | None = None,
        *,
        request: ProofRequest | None = None,
        key: Ed25519PrivateKey | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raw = b"" if body is None else orjson.dumps(body)
        req = request or body_request(method, path, raw)
        header, claims = proof_parts(key or self.agent_key(), method, path, token, req)
        proof = sign(key or self.agent_key(), header, claims)
        h = {"Authorization": f"DPoP {token}", "DPoP": proof, **(headers or {})}
        if body is not None:
            h["Content-Type"] = "application/json"
        return self.client.request(method, path, content=raw or None, headers=h)

    def execute(self, token: str, op: Operation, approval_id: str | None = None) -> Any:
        body = {
            "action": op.action,
            "resource": op.resource,
            "params": op.params,
            "dry_run": op.dry_run,
            "approval_id": approval_id,
        }
        return self.agent_call(
            "POST", "/v1/operations", token, body, request=ProofRequest.execute(op, approval_id)
        )

    def operator(self) -> dict[str, str]:
        return {"Authorization": basic("ops", self.operator_token)}

    def approver(self, email: str = "john@company.com") -> dict[str, str]:
        return {"Authorization": basic(email, self.world.approver_tokens[email])}


def open_api(state_dir: Path, *, direct_authorize: bool = True, **server: Any) -> Api:
    world = open_world(state_dir)
    operator_token = world.gate.operators.add("ops")
    settings = ServerConfig(external_url=BASE, **server)
    client = TestClient(create_app(world.gate, settings, direct_authorize=direct_authorize))
    return Api(world, client, operator_token)


@contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[int]:
    """A real uvicorn server for `app` on 127.0.0.1, on a thread of this process: its
    port while it runs, stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not srv.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=20)


def count_authorize_calls(monkeypatch: Any) -> list[int]:
    """Calls of the authorize endpoint made by the direct route (the router keeps its
    own reference to the function, so its calls are not counted)."""
    from opsgate.server.routes import operations

    calls: list[int] = []
    endpoint = operations.authorize

    async def counted(request: Any) -> Any:
        calls.append(1)
        return await endpoint(request)

    monkeypatch.setattr(operations, "authorize", counted)
    return calls
