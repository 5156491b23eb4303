"""Every endpoint refuses missing, malformed, expired, revoked and wrong-role
credentials with its exact code and status (table-driven), and nothing happens."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import DEPLOY_SCOPE, deploy
from server_helpers import Api, basic, open_api

from opsgate.credentials.proof import ProofRequest

DAY = 86_400
OP = deploy("staging/app-web")
EXECUTE = {
    "action": "deploy",
    "resource": "staging/app-web",
    "params": OP.params,
    "dry_run": False,
    "approval_id": None,
}

# (role, method, path, body, proof request for agents or None for a body digest)
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None, ProofRequest | None]] = [
    ("agent", "POST", "/v1/credentials/renew", {}, None),
    ("agent", "POST", "/v1/credentials/revoke", {}, None),
    ("agent", "POST", "/v1/operations", EXECUTE, ProofRequest.execute(OP)),
    ("agent", "POST", "/v1/approvals/apr_x/resume", {}, ProofRequest.resume("apr_x")),
    (
        "agent",
        "POST",
        "/v1/authorize",
        {"capability": "deploy:staging", "params": None},
        ProofRequest.authorize("deploy:staging"),
    ),
    ("agent", "GET", "/v1/operations/approvals/apr_x", None, None),
    ("agent", "GET", "/v1/operations/1", None, None),
    ("approver", "GET", "/v1/approvals", None, None),
    ("approver", "GET", "/v1/approvals/apr_x", None, None),
    ("approver", "POST", "/v1/approvals/apr_x/approve", {}, None),
    ("approver", "POST", "/v1/approvals/apr_x/deny", {}, None),
    ("operator", "GET", "/v1/agents", None, None),
    ("operator", "GET", "/v1/agents/deploy-agent", None, None),
    (
        "operator",
        "POST",
        "/v1/agents",
        {"name": "n", "capabilities": ["deploy:staging"], "sponsor": "a@b.co"},
        None,
    ),
    (
        "operator",
        "POST",
        "/v1/agents/devops-supervisor/delegate",
        {"name": "n", "capabilities": ["deploy:staging"]},
        None,
    ),
    ("operator", "POST", "/v1/agents/deploy-agent/suspend", {"reason": "r"}, None),
    ("operator", "POST", "/v1/agents/deploy-agent/reinstate", {"reason": "r"}, None),
    ("operator", "GET", "/v1/audit/tail", None, None),
    ("operator", "GET", "/v1/audit/export", None, None),
    ("operator", "GET", "/v1/audit/verify", None, None),
    ("operator", "POST", "/v1/policy/explain", {"action": "deploy", "resource": "staging/x"}, None),
    ("operator", "GET", "/metrics", None, None),
    ("operator_or_approver", "GET", "/v1/trust", None, None),
    ("operator_or_approver", "GET", "/v1/trust/deploy-agent/history", None, None),
]

FAULTS = ["missing", "malformed", "expired", "revoked", "wrong_role"]

EXPECT: dict[tuple[str, str], tuple[int, str]] = {
    ("agent", "missing"): (401, "credential_missing"),
    ("agent", "malformed"): (401, "malformed"),
    ("agent", "expired"): (401, "expired"),
    ("agent", "revoked"): (401, "revoked"),
    ("agent", "wrong_role"): (403, "wrong_role"),
    ("approver", "missing"): (401, "credential_missing"),
    ("approver", "malformed"): (401, "authorization_malformed"),
    ("approver", "expired"): (401, "approver_token_expired"),
    ("approver", "revoked"): (401, "approver_unauthenticated"),
    ("approver", "wrong_role"): (403, "wrong_role"),
    ("operator", "missing"): (401, "credential_missing"),
    ("operator", "malformed"): (401, "authorization_malformed"),
    ("operator", "expired"): (401, "operator_token_expired"),
    ("operator", "revoked"): (401, "operator_unauthenticated"),
    ("operator", "wrong_role"): (403, "wrong_role"),
}
EXPECT.update({("operator_or_approver", f): EXPECT[("operator", f)] for f in FAULTS})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Api:
    # Generous limits: this table sends many refusals from one address on purpose.
    api = open_api(tmp_path_factory.mktemp("roles") / "state", refusal_burst=100_000)
    past = time.time() - 3 * DAY
    gate = api.gate
    api.expired_approver = gate.approvals.add_approver("old@company.com", ttl_days=1, now=past)  # type: ignore[attr-defined]
    api.rotated_approver = gate.approvals.add_approver("rot@company.com")  # type: ignore[attr-defined]
    gate.approvals.rotate_approver_token("rot@company.com")
    api.expired_operator = gate.operators.add("old-ops", ttl_days=1, now=past)  # type: ignore[attr-defined]
    api.revoked_operator = gate.operators.add("gone-ops")  # type: ignore[attr-defined]
    gate.operators.revoke("gone-ops")
    cm = gate.credential_manager
    api.expired_token = cm.issue_credential(  # type: ignore[attr-defined]
        api.world.agent.did, DEPLOY_SCOPE, 1, now=time.time() - 3600
    ).token
    revoked = cm.issue_credential(api.world.agent.did, DEPLOY_SCOPE, 15)
    cm.revoke(revoked.jti)
    api.revoked_token = revoked.token  # type: ignore[attr-defined]
    api.agent_token = api.credential()  # type: ignore[attr-defined]
    return api


def _send(api: Api, role: str, fault: str, method: str, path: str, body: Any, req: Any) -> Any:
    headers: dict[str, str] = {}
    if role == "agent":
        token = {"expired": api.expired_token, "revoked": api.revoked_token}.get(  # type: ignore[attr-defined]
            fault, "not-a-credential"
        )
        if fault == "missing":
            return api.client.request(method, path, json=body)
        if fault == "wrong_role":
            headers = api.operator()
        else:
            return api.agent_call(method, path, token, body, request=req)
    elif fault == "missing":
        pass
    elif fault == "malformed":
        headers = {"Authorization": "Basic %%%not-base64"}
    elif fault == "wrong_role":
        return api.agent_call(method, path, api.agent_token, body, request=req)  # type: ignore[attr-defined]
    elif role == "approver":
        secret = {
            "expired": ("old@company.com", api.expired_approver),  # type: ignore[attr-defined]
            "revoked": ("rot@company.com", api.rotated_approver),
        }[fault]  # type: ignore[attr-defined]
        headers = {"Authorization": basic(*secret)}
    else:
        secret = {
            "expired": ("old-ops", api.expired_operator),  # type: ignore[attr-defined]
            "revoked": ("gone-ops", api.revoked_operator),
        }[fault]  # type: ignore[attr-defined]
        headers = {"Authorization": basic(*secret)}
    return api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{m} {p}" for _, m, p, _, _ in ENDPOINTS])
def test_refused(api: Api, endpoint: Any, fault: str) -> None:
    role, method, path, body, req = endpoint
    head = api.gate.audit.head()[0]
    runs = api.world.executor.count
    r = _send(api, role, fault, method, path, body, req)
    status, code = EXPECT[(role, fault)]
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert api.world.executor.count == runs
    # Nothing changed: at most the refusal itself is on record.
    changed = {e.type for e in api.gate.audit.events(after_seq=head)}
    assert changed <= {"credential.rejected", "approval.refused", "trust.changed"}, changed


def test_wrong_role_with_the_other_human_token(api: Api) -> None:
    """An approver token on an operator endpoint, and the reverse, are wrong_role."""
    approver = {
        "Authorization": basic("john@company.com", api.world.approver_tokens["john@company.com"])
    }
    r = api.client.get("/v1/agents", headers=approver)
    assert (r.status_code, r.json()["code"]) == (403, "wrong_role")
    r = api.client.get("/v1/approvals", headers={"Authorization": basic("ops", api.operator_token)})
    assert (r.status_code, r.json()["code"]) == (403, "wrong_role")


AGENT_POSTS = [e for e in ENDPOINTS if e[0] == "agent" and e[1] == "POST"]
AGENT_POSTS.append(("agent", "POST", "/v1/tool-calls", {}, None))


@pytest.mark.parametrize("body", [b"{}", b"not json", b'{"unknown": 1}'])
@pytest.mark.parametrize("endpoint", AGENT_POSTS, ids=[f"{m} {p}" for _, m, p, _, _ in AGENT_POSTS])
def test_a_human_token_on_an_agent_endpoint_is_the_wrong_role_whatever_the_body(
    api: Api, endpoint: Any, body: bytes
) -> None:
    """The role is checked before the body: an operator's or approver's token sent to
    an agent's endpoint is told `wrong_role`, not a complaint about the body."""
    _, method, path, _, _ = endpoint
    john = basic("john@company.com", api.world.approver_tokens["john@company.com"])
    for headers in (api.operator(), {"Authorization": john}):
        headers = {**headers, "Content-Type": "application/json"}
        r = api.client.request(method, path, content=body, headers=headers)
        assert (r.status_code, r.json()["code"]) == (403, "wrong_role"), (path, r.text)


HUMAN_ENDPOINTS = [e for e in ENDPOINTS if e[0] != "agent"]


@pytest.mark.parametrize(
    "endpoint", HUMAN_ENDPOINTS, ids=[f"{m} {p}" for _, m, p, _, _ in HUMAN_ENDPOINTS]
)
def test_basic_credentials_that_are_not_ascii_are_malformed(api: Api, endpoint: Any) -> None:
    """Header bytes beyond ASCII in Basic credentials: 401 authorization_malformed (they
    were a 500, before any credential was checked)."""
    _, method, path, body, _ = endpoint
    r = api.client.request(method, path, json=body, headers={"Authorization": b"Basic \xff\xfe"})
    assert (r.status_code, r.json()["code"]) == (401, "authorization_malformed"), r.text


@pytest.mark.parametrize("after_seq", [2**63, 10**30])
def test_an_export_after_a_seq_no_database_holds_is_invalid(api: Api, after_seq: int) -> None:
    """It was a 200 whose stream broke off empty (the database refused the number)."""
    r = api.client.get(f"/v1/audit/export?after_seq={after_seq}", headers=api.operator())
    assert (r.status_code, r.json()["code"]) == (422, "request_invalid"), r.text


def test_each_role_gets_in(api: Api) -> None:
    """The controls: the right credential opens each kind of endpoint."""
    assert api.client.get("/v1/agents", headers=api.operator()).status_code == 200
    assert api.client.get("/v1/approvals", headers=api.approver()).status_code == 200
    assert api.client.get("/v1/trust", headers=api.approver()).status_code == 200
    token = api.credential()
    r = api.agent_call(
        "POST",
        "/v1/authorize",
        token,
        {"capability": "deploy:staging", "params": None},
        request=ProofRequest.authorize("deploy:staging"),
    )
    assert r.status_code == 200 and r.json()["effect"] == "allow"


def test_openapi_lists_the_endpoints(api: Api) -> None:
    paths = set(api.client.get("/openapi.json").json()["paths"])
    for _, _, path, _, _ in ENDPOINTS:
        template = (
            path.replace("apr_x", "{approval_id}")
            .replace("/operations/1", "/operations/{seq}")
            .replace("agents/deploy-agent/", "agents/{agent}/")
            .replace("agents/devops-supervisor/", "agents/{parent}/")
            .replace("trust/deploy-agent/", "trust/{agent}/")
        )
        if template == "/v1/agents/deploy-agent":
            template = "/v1/agents/{agent}"
        assert template in paths, template


@pytest.mark.parametrize("path", ["/v1/agents/", "/v1/approvals/", "/healthz/", "/ui/approvals/"])
def test_no_redirect_is_built_from_the_host_header(api: Api, path: str) -> None:
    """A path with a stray trailing slash is not redirected to a URL made from the
    request's Host header (the gate names itself only by its configured URL)."""
    r = api.client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404, r.text
    assert "evil.example" not in r.headers.get("location", "")
    assert r.json()["code"] == "not_found"


def test_the_ui_root_with_a_slash_goes_to_the_approvals_by_the_configured_url(api: Api) -> None:
    r = api.client.get("/ui/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].endswith("/ui/approvals")
    assert "evil.example" not in r.headers["location"]
