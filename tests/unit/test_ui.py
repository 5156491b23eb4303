"""The approval web UI over HTTP (TestClient): headers on every page, the session
cookie's flags, CSRF on every form, sign-in and sign-out, session expiry and
rotation, the sponsor refusal, open redirects and escaping. The browser flow
against a real server process is tests/integration/test_ui_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import AGENT_SPONSOR, audit_events, deploy, open_world
from secret_helpers import open_world as secret_world
from server_helpers import Api, open_api
from sqlalchemy import update
from ui_helpers import csrf_of, sign_in

import opsgate
from opsgate.config import ServerConfig
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan
from opsgate.operations.migrate import MigrationExecutor
from opsgate.secrets.sdk import write_secret
from opsgate.server import create_app
from opsgate.server.ui import CSP
from opsgate.store import schema

JOHN = "john@company.com"
JANE = "jane@company.com"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = open_api(tmp_path / "state")
    yield a
    a.world.gate.close()


def pending(api: Api, **params: Any) -> str:
    result = api.gate.execute(api.world.token, deploy(**params))
    return str(result.approval_id)


def signed_in(api: Api, who: str = JOHN) -> TestClient:
    r = sign_in(api.client, who, api.world.approver_tokens[who])
    assert r.status_code == 303, r.text
    return api.client


def decide(client: TestClient, approval_id: str, **form: str) -> Any:
    return client.post(f"/ui/approvals/{approval_id}", data=form, follow_redirects=False)


def inline_code(html: str) -> list[str]:
    """Everything in a page that a CSP without 'unsafe-inline' would have to block."""
    found = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    found += re.findall(r"<style\b", html)
    found += re.findall(r"\sstyle=", html)
    found += re.findall(r"\son[a-z]+\s*=", html)
    found += re.findall(r"javascript:", html)
    return found


# -- headers -------------------------------------------------------------------------


def test_every_page_carries_the_csp_and_no_inline_code(api: Api) -> None:
    approval_id = pending(api)
    client = api.client
    pages = {"/ui/signin": client.get("/ui/signin")}
    signed_in(api)
    for path in (
        "/ui/approvals",
        f"/ui/approvals/{approval_id}",
        "/ui/agents",
        "/ui/agents/deploy-agent",
        "/ui/audit",
        "/ui/audit?agent=deploy-agent&type=approval.requested",
        "/ui/approvals/apr_nope",
        "/ui/static/ui.css",
        "/ui/static/ui.js",
        "/ui/static/nope.js",
        "/ui/nope",
    ):
        pages[path] = client.get(path)
    assert pages["/ui/approvals/apr_nope"].status_code == 404
    assert pages["/ui/static/nope.js"].status_code == 404
    for path, r in pages.items():
        csp = r.headers.get("content-security-policy")
        assert csp == CSP, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["frame-ancestors"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["default-src"] == "'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in r.headers  # plain http
        if r.headers.get("content-type", "").startswith("text/html"):
            assert inline_code(r.text) == [], path
    assert pages["/ui/static/ui.js"].headers["content-type"].startswith("text/javascript")
    assert pages["/ui/static/ui.css"].headers["content-type"].startswith("text/css")
    # The JSON API is not the UI's: its responses carry no page headers.
    assert "content-security-policy" not in client.get("/healthz").headers


def _page_headers_held(r: Any, where: str) -> None:
    assert r.headers.get("content-security-policy") == CSP, where
    assert r.headers["x-frame-options"] == "DENY", where
    assert r.headers["x-content-type-options"] == "nosniff", where
    assert r.headers["cache-control"] == "no-store", where
    assert r.headers["referrer-policy"] == "no-referrer", where


@pytest.mark.parametrize("how", ["mounted", "root_path"])
def test_every_ui_answer_has_its_headers_under_a_root_path(tmp_path: Path, how: str) -> None:
    """The gate's app served under a path prefix (mounted in another app, or behind a
    proxy with uvicorn's root path): /gate/ui/... is the UI and keeps every header."""
    from fastapi import FastAPI

    world = open_world(tmp_path / "state")
    approval_id = world.gate.execute(world.token, deploy()).approval_id  # type: ignore[union-attr]
    inner = create_app(world.gate, ServerConfig(external_url="http://testserver/gate"))
    if how == "mounted":
        outer = FastAPI()
        outer.mount("/gate", inner)
        client = TestClient(outer)
    else:
        client = TestClient(inner, root_path="/gate")
    for path in (
        "/gate/ui/signin",
        f"/gate/ui/approvals/{approval_id}",
        "/gate/ui/audit",
        "/gate/ui/static/ui.js",
        "/gate/ui/nope",
    ):
        _page_headers_held(client.get(path, follow_redirects=False), path)
    assert "content-security-policy" not in client.get("/gate/healthz").headers


def test_a_body_too_large_for_a_ui_form_is_refused_with_the_page_headers(api: Api) -> None:
    """The body limit answers before the UI's routes: its refusal carries the UI's
    headers too (framing, caching and sniffing rules hold on every /ui answer)."""
    big = b"email=" + b"x" * (api.gate.config.server.max_body_bytes + 10)
    for path in ("/ui/signin", "/ui/approvals/apr_x", "/ui/signout"):
        r = api.client.post(
            path,
            content=big,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413, (path, r.status_code)
        _page_headers_held(r, path)


def test_the_inline_code_check_finds_inline_code() -> None:
    assert inline_code('<p style="x"><script>1</script><a onclick="x">') != []
    assert len(inline_code('<script src="/ui/static/ui.js"></script><b>x</b>')) == 0


# A script, style sheet, frame or image from anywhere but the gate's own origin.
FOREIGN = re.compile(
    r"""<(?:script|link|iframe|img|embed|object)\b[^>]*\b(?:src|href|data)\s*=\s*["']?\s*"""
    r"""(?:[a-z][a-z0-9+.-]*:|//|\\\\)""",
    re.IGNORECASE,
)


def get_routes(routes: Any) -> Iterator[str]:
    """The path of every GET route, through included routers (all without a prefix of
    their own, as create_app includes them)."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            yield from get_routes(included.routes)
        elif "GET" in (getattr(route, "methods", None) or ()):
            yield route.path


def test_no_page_the_server_serves_loads_anything_from_another_origin(api: Api) -> None:
    """FastAPI's /docs and /redoc (Swagger UI, ReDoc) loaded unpinned scripts from a CDN
    on the gate's origin, where the session cookie lives: they are gone (404, typed),
    and every GET route the app has, asked as an approver signed in and as an operator,
    answers without a foreign script, style sheet or frame."""
    approval_id = pending(api)
    client = signed_in(api)
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = client.get(path)
        assert (r.status_code, r.json()["code"]) == (404, "not_found"), path
    values = {
        "approval_id": approval_id,
        "agent": "deploy-agent",
        "parent": "devops-supervisor",
        "seq": "1",
        "name": "ui.js",
    }
    app: Any = client.app
    paths = {
        re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)
        for path in get_routes(app.routes)
    }
    assert {"/openapi.json", "/ui/approvals", "/v1/audit/tail"} <= paths
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
    html = []
    for path in sorted(paths):
        for headers in ({}, api.operator()):
            r = client.get(path, headers=headers)
            assert r.status_code < 500, (path, r.text)
            assert FOREIGN.findall(r.text) == [], path
            if r.headers.get("content-type", "").startswith("text/html"):
                html.append(path)
    assert "/ui/approvals" in html and all(p.startswith("/ui") for p in html)


def test_the_foreign_resource_check_finds_them() -> None:
    for tag in (
        '<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js">',
        "<script src=//cdn.example/x.js>",
        '<link rel="stylesheet" href="http://cdn.example/x.css">',
        "<iframe src='data:text/html,x'>",
    ):
        assert FOREIGN.findall(tag), tag
    assert not FOREIGN.findall('<script src="/ui/static/ui.js" defer></script>')
    assert not FOREIGN.findall('<a href="https://example.com">x</a>')


# -- cookies ---------------------------------------------------------------------------


def set_cookies(r: Any) -> dict[str, str]:
    out = {}
    for header in r.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        out[name] = header
    return out


def attributes(header: str) -> set[str]:
    return {p.strip().split("=")[0].lower() for p in header.split(";")[1:]}


def test_the_session_cookie_is_httponly_strict_and_not_secure_over_plain_http(api: Api) -> None:
    r = sign_in(api.client, JOHN, api.world.approver_tokens[JOHN])
    assert r.status_code == 303 and r.headers["location"] == "/ui/approvals"
    cookie = set_cookies(r)["opsgate_session"]
    assert {"httponly", "path", "max-age"} <= attributes(cookie)
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attributes(cookie)
    assert "max-age=1800" in cookie.lower()  # ui_session_minutes, 30 by default
    # The cookie holds a random secret; the database keeps only its hash.
    secret = cookie.split(";")[0].split("=", 1)[1]
    with api.gate.store.read() as conn:
        ids = [r[0] for r in conn.execute(schema.approver_sessions.select()).all()]
    assert len(ids) == 1 and secret not in ids and len(secret) >= 40


def test_over_https_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    world = open_world(tmp_path / "state")
    try:
        url = "https://gate.example.com"
        app = create_app(world.gate, ServerConfig(external_url=url, ui_session_minutes=5))
        client = TestClient(app, base_url=url)
        r = sign_in(client, JOHN, world.approver_tokens[JOHN])
        assert r.status_code == 303
        cookie = set_cookies(r)["__Host-opsgate_session"]
        assert {"secure", "httponly"} <= attributes(cookie)
        assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert "domain" not in attributes(cookie) and "max-age=300" in cookie.lower()
        assert r.headers["strict-transport-security"].startswith("max-age=")
        page = client.get("/ui/approvals")
        assert page.status_code == 200 and JOHN in page.text
    finally:
        world.gate.close()


def test_over_https_the_sign_in_cookie_is_host_only_and_a_planted_one_is_refused(
    tmp_path: Path,
) -> None:
    """A sibling subdomain can plant a plain cookie for the gate's host, never a
    `__Host-` one: a sign-in form token derived from a planted value is refused."""
    world = open_world(tmp_path / "state")
    try:
        url = "https://gate.example.com"
        client = TestClient(create_app(world.gate, ServerConfig(external_url=url)), base_url=url)
        form = client.get("/ui/signin")
        cookie = set_cookies(form)["__Host-opsgate_signin"]
        assert {"secure", "httponly"} <= attributes(cookie)
        assert "path=/" in cookie.lower() and "domain" not in attributes(cookie)
        # What a planted cookie and a form built from it look like: refused.
        planted = TestClient(create_app(world.gate, ServerConfig(external_url=url)), base_url=url)
        planted.cookies.set("opsgate_signin", cookie.split(";")[0].split("=", 1)[1])
        r = planted.post(
            "/ui/signin",
            data={"email": JOHN, "token": world.approver_tokens[JOHN], "csrf": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert r.status_code != 303 and "__Host-opsgate_session" not in set_cookies(r)
        # The genuine form signs in, and the pre-session cookie is cleared.
        r = sign_in(client, JOHN, world.approver_tokens[JOHN])
        assert r.status_code == 303 and "__Host-opsgate_session" in set_cookies(r)
    finally:
        world.gate.close()


# -- sign in ----------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_gets_no_session(api: Api) -> None:
    for email, token in (
        (JOHN, "opsg_apr_wrong"),
        (JOHN, api.world.approver_tokens[JANE]),
        ("nobody@company.com", api.world.approver_tokens[JOHN]),
        ("not an email", "x"),
        (JOHN, ""),
    ):
        r = sign_in(api.client, email, token)
        assert r.status_code == 401, (email, r.status_code)
        assert "sign-in refused" in r.text
        assert not any(k.endswith("opsgate_session") for k in set_cookies(r))
        assert api.client.get("/ui/approvals", follow_redirects=False).status_code == 303
    refused = audit_events(api.gate, "approver.sign_in_refused")
    assert [e["code"] for e in refused][:3] == ["approver_unauthenticated"] * 3
    with api.gate.store.read() as conn:
        assert conn.execute(schema.approver_sessions.select()).all() == []


def test_a_refused_sign_in_never_files_an_event_under_what_was_typed(api: Api) -> None:
    """The address typed at sign-in is not an actor until it is a plain email: an
    agent's did, the gate's own name or an operator's label typed there lands as a
    field of an `anonymous` refusal, never among that agent's (or anyone's) events."""
    did = api.world.agent.did
    for typed in (did, "gate", "operator:root"):
        assert sign_in(api.client, typed, "x").status_code == 401
    refused = audit_events(api.gate, "approver.sign_in_refused")[-3:]
    assert [e["actor"] for e in refused] == ["anonymous"] * 3
    assert [e["presented"] for e in refused] == [did, "gate", "operator:root"]
    assert [r for r in api.gate.audit.tail(1000, actor=did) if r.type.startswith("approver")] == []
    # A refusal for a plain address is about that address's account: filed under it.
    assert sign_in(api.client, JOHN, "opsg_apr_wrong").status_code == 401
    assert audit_events(api.gate, "approver.sign_in_refused")[-1]["actor"] == JOHN


def test_the_sign_in_form_needs_its_csrf_token(api: Api) -> None:
    token = api.world.approver_tokens[JOHN]
    form = api.client.get("/ui/signin")
    good = csrf_of(form.text)
    for csrf in (None, "", "x" * 43, good[:-1] + ("A" if good[-1] != "A" else "B")):
        data = {"email": JOHN, "token": token}
        if csrf is not None:
            data["csrf"] = csrf
        r = api.client.post("/ui/signin", data=data, follow_redirects=False)
        assert r.status_code == 403 and "csrf_invalid" in r.text, csrf
    # The right token without the pre-session cookie it is bound to: refused too.
    api.client.cookies.clear()
    r = api.client.post(
        "/ui/signin", data={"email": JOHN, "token": token, "csrf": good}, follow_redirects=False
    )
    assert r.status_code == 403
    with api.gate.store.read() as conn:
        assert conn.execute(schema.approver_sessions.select()).all() == []
    assert audit_events(api.gate, "approver.signed_in") == []


def test_forms_must_be_urlencoded_with_known_fields_once(api: Api) -> None:
    form = api.client.get("/ui/signin")
    csrf = csrf_of(form.text)
    token = api.world.approver_tokens[JOHN]
    r = api.client.post(
        "/ui/signin", json={"email": JOHN, "token": token, "csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 422 and "form_invalid" in r.text
    r = api.client.post(
        "/ui/signin",
        content=f"email={JOHN}&token={token}&csrf={csrf}&csrf={csrf}",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 422
    r = api.client.post(
        "/ui/signin",
        data={"email": JOHN, "token": token, "csrf": csrf, "admin": "1"},
        follow_redirects=False,
    )
    assert r.status_code == 422


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/ui/approvals",
        "//evil.example/ui",
        "/ui/../v1/agents",
        "/ui/agents/../../v1/agents",
        "/ui/./../v1",
        "/ui/..",
        "/ui\\@evil",
        "/uievil",
        "/v1/approvals",
        "javascript:alert(1)",
    ],
)
def test_sign_in_goes_back_only_to_a_ui_page(api: Api, target: str) -> None:
    r = sign_in(api.client, JOHN, api.world.approver_tokens[JOHN], next_page=target)
    assert r.status_code == 303 and r.headers["location"] == "/ui/approvals"


def test_a_link_to_an_agent_with_a_dot_in_its_name_survives_sign_in(api: Api) -> None:
    """Agent names may hold '.', so its page's link must survive the sign-in detour."""
    r = api.client.get("/ui/agents/deploy.v2", follow_redirects=False)
    assert r.headers["location"] == "/ui/signin?next=/ui/agents/deploy.v2"
    r = sign_in(api.client, JOHN, api.world.approver_tokens[JOHN], "/ui/agents/deploy.v2")
    assert r.status_code == 303 and r.headers["location"] == "/ui/agents/deploy.v2"


def test_a_link_to_one_approval_leads_there_after_sign_in(api: Api) -> None:
    approval_id = pending(api)
    r = api.client.get(f"/ui/approvals/{approval_id}", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/ui/signin?next=/ui/approvals/{approval_id}"
    page = api.client.get(r.headers["location"])
    assert f'value="/ui/approvals/{approval_id}"' in page.text
    r = sign_in(api.client, JOHN, "opsg_apr_wrong", f"/ui/approvals/{approval_id}")
    assert r.status_code == 401 and f'value="/ui/approvals/{approval_id}"' in r.text
    r = sign_in(api.client, JOHN, api.world.approver_tokens[JOHN], f"/ui/approvals/{approval_id}")
    assert r.headers["location"] == f"/ui/approvals/{approval_id}"


# -- what the approval page shows ---------------------------------------------------------


def test_the_approval_page_shows_exactly_what_would_run(api: Api) -> None:
    approval_id = pending(api)
    client = signed_in(api)
    listing = client.get("/ui/approvals")
    assert approval_id in listing.text and "deploy production/app-web 2.4.1" in listing.text
    html = client.get(f"/ui/approvals/{approval_id}").text
    req = api.gate.approvals.get(approval_id)
    assert '<dd id="app">app-web</dd>' in html
    assert '<dd id="version">2.4.1</dd>' in html
    assert f'<code id="artifact-digest">sha256:{"ab" * 32}</code>' in html
    assert '<dd id="environment">production</dd>' in html
    assert f'<code id="digest">{req.digest}</code>' in html
    # Who asks, through which chain, with which trust; which rule asked; until when.
    assert 'id="requester">deploy-agent</a>' in html
    chain = html.split('id="chain"')[1].split("</ol>")[0]
    assert chain.index("devops-supervisor") < chain.index("deploy-agent")
    assert f'trust <strong id="trust">{api.gate.trust_score(api.world.agent.did)}</strong>' in html
    assert "approve-production-deployments" in html
    assert req.expires.strftime("%Y-%m-%d %H:%M:%S UTC") in html
    assert 'id="approve"' in html and 'id="deny"' in html


def test_an_agents_params_are_rendered_inert(api: Api) -> None:
    approval_id = pending(api, noise=XSS)
    client = signed_in(api)
    html = client.get(f"/ui/approvals/{approval_id}").text
    assert XSS not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    # An approver's comment is text too.
    api.world.approve(approval_id, JANE, comment=XSS)
    html = client.get(f"/ui/approvals/{approval_id}").text
    assert XSS not in html and html.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") == 2
    audit = client.get("/ui/audit").text
    assert "<script>window" not in audit and "<img src=x" not in audit


def test_a_migration_page_marks_destructive_statements_with_their_codes(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=Path(__file__).parents[2] / "examples" / "policies.yaml",
        databases={
            "orders": {"url": f"sqlite:///{tmp_path / 'orders.db'}", "migrations": str(migrations)}
        },
    )
    try:
        gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
        sup = gate.register_agent("devops-supervisor", ["migrate:database"], "p@company.com", 920)
        agent = sup.delegate(name="database-agent", capabilities=["migrate:database/orders"])
        token = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=["migrate:database/orders"], ttl_minutes=15
        ).token
        dba = gate.approvals.add_approver("dana@company.com")
        (migrations / "V1__drop.sql").write_text(
            "CREATE TABLE keep (id integer);\nDROP TABLE legacy_orders;"
        )
        result = gate.execute(token, Operation("migrate", "database/orders", {}))
        client = TestClient(create_app(gate, ServerConfig(external_url="http://testserver")))
        assert sign_in(client, "dana@company.com", dba).status_code == 303
        html = client.get(f"/ui/approvals/{result.approval_id}").text  # type: ignore[union-attr]
        statements = re.findall(r'<li class="statement( destructive)?">(.*?)</li>', html, re.S)
        assert len(statements) == 2
        (safe_mark, safe), (drop_mark, drop) = statements
        assert safe_mark == "" and "CREATE TABLE keep" in safe
        assert drop_mark == " destructive" and "DROP TABLE legacy_orders;" in drop
        codes = re.findall(r'<span class="badge danger"[^>]*>([A-Z]+\d+)</span>', drop)
        plan = gate.approvals.get(result.approval_id).plan  # type: ignore[union-attr]
        expected = plan["content"]["pending"][0]["statements"][1]["findings"]
        assert codes and codes == [f["code"] for f in expected if f["destructive"]]
        assert '<dd id="database">orders (sqlite)</dd>' in html
    finally:
        gate.close()


def test_a_secret_page_shows_the_path_never_the_value(tmp_path: Path, monkeypatch: Any) -> None:
    w = secret_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    try:
        value = "tOp-s3cret-Value-7731"
        result = write_secret(w.gate, w.token, "production/db/password", value)
        client = TestClient(create_app(w.gate, ServerConfig(external_url="http://testserver")))
        assert sign_in(client, JOHN, w.approver_token).status_code == 303
        pages = [
            client.get(f"/ui/approvals/{result.approval_id}").text,  # type: ignore[union-attr]
            client.get("/ui/approvals").text,
            client.get("/ui/audit").text,
        ]
        assert '<code id="secret-path">secrets/production/db/password</code>' in pages[0]
        assert all(value not in p for p in pages)
    finally:
        w.gate.close()


# -- deciding -------------------------------------------------------------------------------


def test_approve_through_the_form_and_the_agent_resumes(api: Api) -> None:
    approval_id = pending(api)
    client = signed_in(api)
    csrf = csrf_of(client.get(f"/ui/approvals/{approval_id}").text)
    r = decide(client, approval_id, csrf=csrf, verdict="approve", comment="ship it")
    assert r.status_code == 303
    assert r.headers["location"] == f"/ui/approvals/{approval_id}?decided=approve"
    req = api.gate.approvals.get(approval_id)
    assert req.status == "approved"
    assert [(d.approver, d.decision, d.comment) for d in req.decisions] == [
        (JOHN, "approve", "ship it")
    ]
    assert audit_events(api.gate, "approval.approved_by")[-1]["actor"] == JOHN
    page = client.get(r.headers["location"]).text
    assert "was recorded" in page and "ship it" in page and 'id="approve"' not in page
    assert api.gate.resume(approval_id, api.world.token).status == "succeeded"


def test_a_decision_without_the_right_csrf_token_is_refused(api: Api) -> None:
    approval_id = pending(api)
    jane = TestClient(api.client.app)
    assert sign_in(jane, JANE, api.world.approver_tokens[JANE]).status_code == 303
    janes_csrf = csrf_of(jane.get(f"/ui/approvals/{approval_id}").text)
    client = signed_in(api)
    johns_csrf = csrf_of(client.get(f"/ui/approvals/{approval_id}").text)
    assert janes_csrf != johns_csrf
    for form in (
        {"verdict": "approve"},
        {"verdict": "approve", "csrf": ""},
        {"verdict": "approve", "csrf": janes_csrf},  # another session's token
        {"verdict": "approve", "csrf": johns_csrf[:-2]},
    ):
        r = decide(client, approval_id, **form)
        assert r.status_code == 403 and "csrf_invalid" in r.text, form
    # A token without its session cookie (a cross-site post carries no cookie).
    anonymous = TestClient(api.client.app)
    r = decide(anonymous, approval_id, csrf=johns_csrf, verdict="approve")
    assert r.status_code == 401 and "session_invalid" in r.text
    assert api.gate.approvals.get(approval_id).status == "pending"
    assert api.gate.approvals.get(approval_id).decisions == ()
    r = decide(client, approval_id, csrf=johns_csrf, verdict="sure")
    assert r.status_code == 422 and api.gate.approvals.get(approval_id).status == "pending"


def test_the_sponsor_of_the_requester_cannot_approve(tmp_path: Path) -> None:
    # John sponsors the deploy agent and is also one of its approvers (the SRE group).
    api = open_api(tmp_path / "state")
    api.gate.close()
    world = open_world(tmp_path / "other", agent_sponsor=JOHN)
    try:
        client = TestClient(create_app(world.gate, ServerConfig(external_url="http://testserver")))
        result = world.gate.execute(world.token, deploy())
        approval_id = result.approval_id  # type: ignore[union-attr]
        assert sign_in(client, JOHN, world.approver_tokens[JOHN]).status_code == 303
        html = client.get(f"/ui/approvals/{approval_id}").text
        why = re.search(r'<p class="refusal" id="why-not">(.*?)</p>', html)
        assert why and "you sponsor deploy-agent" in why.group(1)
        assert "a sponsor cannot decide" in why.group(1)
        assert 'id="approve"' not in html and 'name="verdict"' not in html
        # Posting anyway (with a valid CSRF token) is refused by the server.
        csrf = csrf_of(html)
        for verdict in ("approve", "deny"):
            r = decide(client, approval_id, csrf=csrf, verdict=verdict)
            assert r.status_code == 403 and "self_approval" in r.text
        assert world.gate.approvals.get(approval_id).status == "pending"
        refusals = audit_events(world.gate, "approval.refused")
        assert [e["code"] for e in refusals] == ["self_approval", "self_approval"]
        assert refusals[0]["actor"] == JOHN
    finally:
        world.gate.close()
    assert AGENT_SPONSOR != JOHN


def test_an_approver_sees_only_requests_they_may_decide(tmp_path: Path) -> None:
    world = open_world(tmp_path / "state", approvers=(JOHN, "outsider@company.com"))
    try:
        client = TestClient(create_app(world.gate, ServerConfig(external_url="http://testserver")))
        approval_id = world.gate.execute(world.token, deploy()).approval_id  # type: ignore[union-attr]
        token = world.approver_tokens["outsider@company.com"]
        assert sign_in(client, "outsider@company.com", token).status_code == 303
        assert approval_id not in client.get("/ui/approvals").text
        assert client.get(f"/ui/approvals/{approval_id}").status_code == 404
        page = client.get("/ui/approvals")
        r = decide(client, approval_id, csrf=csrf_of(page.text), verdict="approve")
        assert r.status_code == 403 and "not_an_approver" in r.text
        assert world.gate.approvals.get(approval_id).status == "pending"
    finally:
        world.gate.close()


# -- sessions ----------------------------------------------------------------------------------


def session_cookie(client: TestClient) -> str:
    value = client.cookies.get("opsgate_session")
    assert value
    return value


def test_sign_out_ends_the_session_everywhere(api: Api) -> None:
    approval_id = pending(api)
    client = signed_in(api)
    stolen = session_cookie(client)
    csrf = csrf_of(client.get("/ui/approvals").text)
    r = client.post("/ui/signout", data={}, follow_redirects=False)
    assert r.status_code == 403  # sign-out is a form too
    r = client.post("/ui/signout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
    assert client.get("/ui/approvals", follow_redirects=False).status_code == 303
    # The old cookie, replayed by someone who copied it, is worthless.
    other = TestClient(api.client.app)
    other.cookies.set("opsgate_session", stolen)
    assert other.get("/ui/approvals", follow_redirects=False).status_code == 303
    r = decide(other, approval_id, csrf=csrf, verdict="approve")
    assert r.status_code == 401 and "session_invalid" in r.text
    assert api.gate.approvals.get(approval_id).status == "pending"
    assert [e["actor"] for e in audit_events(api.gate, "approver.signed_out")] == [JOHN]


def test_an_expired_session_is_refused(api: Api) -> None:
    approval_id = pending(api)
    client = signed_in(api)
    csrf = csrf_of(client.get("/ui/approvals").text)
    with api.gate.store.write() as conn:
        conn.execute(update(schema.approver_sessions).values(expires_at=1.0))
    r = decide(client, approval_id, csrf=csrf, verdict="approve")
    assert r.status_code == 401 and "session_expired" in r.text
    r = client.get("/ui/approvals", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin")
    assert client.cookies.get("opsgate_session") is None  # the dead cookie is cleared
    assert api.gate.approvals.get(approval_id).status == "pending"


def test_session_expiry_is_checked_against_now(api: Api) -> None:
    service = api.gate.approvals
    secret, session = service.open_session(
        JOHN, api.world.approver_tokens[JOHN], ttl_seconds=600, now=1_000_000.0
    )
    assert session.expires_at == 1_000_600.0
    assert service.session(secret, now=1_000_599.0).approver == JOHN
    with pytest.raises(Exception) as exc:
        service.session(secret, now=1_000_600.0)
    assert getattr(exc.value, "code", None) == "session_expired"
    with pytest.raises(Exception) as exc:
        service.open_session(JOHN, api.world.approver_tokens[JOHN], ttl_seconds=10**6)
    assert getattr(exc.value, "code", None) == "session_ttl_invalid"


def test_rotating_the_approvers_token_ends_their_sessions(api: Api) -> None:
    approval_id = pending(api)
    client = signed_in(api)
    csrf = csrf_of(client.get("/ui/approvals").text)
    api.gate.approvals.rotate_approver_token(JOHN)
    assert client.get("/ui/approvals", follow_redirects=False).status_code == 303
    r = decide(client, approval_id, csrf=csrf, verdict="approve")
    assert r.status_code == 401 and "session_invalid" in r.text
    assert api.gate.approvals.get(approval_id).status == "pending"


def test_a_forged_session_cookie_is_refused_and_rate_limited(api: Api) -> None:
    client = TestClient(api.client.app)
    client.cookies.set("opsgate_session", "forged")
    statuses = [client.get("/ui/approvals", follow_redirects=False).status_code for _ in range(25)]
    assert statuses[0] == 303 and statuses[-1] == 429  # refusal_burst is 20


# -- agents and audit ----------------------------------------------------------------------------


def test_the_agents_page_shows_the_tree_and_the_chart(api: Api) -> None:
    api.gate.set_trust_score(api.world.agent.did, 610, reason="review", by="ops")
    client = signed_in(api)
    html = client.get("/ui/agents").text
    tree = html.split('id="tree"')[1]
    sup = tree.index('data-name="devops-supervisor"')
    child = tree.index('data-name="deploy-agent"')
    assert sup < child and tree[sup:child].count('<ul class="tree">') == 1
    assert "deploy:production" in tree and "active" in tree
    page = client.get("/ui/agents/deploy-agent").text
    svg = re.search(r"<svg .*?</svg>", page, re.S)
    assert svg and 'class="chart"' in svg.group(0) and '<path d="M' in svg.group(0)
    assert svg.group(0).count("<circle") == 2  # the initial score and the operator's change
    assert "610" in page
    assert client.get("/ui/agents/nobody").status_code == 404


def test_the_audit_page_filters_and_shows_the_chain_status(api: Api) -> None:
    pending(api)
    client = signed_in(api)
    html = client.get("/ui/audit").text
    assert "Chain verifies" in html
    rows = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([a-z_.]+)</td>", html)
    assert rows and {t for _, t in rows} >= {"approval.requested", "approver.signed_in"}
    html = client.get("/ui/audit?type=approval.requested").text
    assert {
        t for _, t in re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([a-z_.]+)</td>", html)
    } == {"approval.requested"}
    html = client.get("/ui/audit?agent=deploy-agent").text
    actors = re.findall(r'<td><a href="/ui/agents/([^"]+)">', html)
    assert actors and set(actors) == {"deploy-agent"}
    assert "no agent named" in client.get("/ui/audit?agent=ghost").text


def test_audit_page_views_share_one_walk_of_the_chain(api: Api) -> None:
    """Each view of the audit page used to walk the whole log: views share one walk
    for a while (the page says when it was checked), and a tampered row shows once
    that walk is due again."""
    pending(api)
    walks = []
    verify = api.gate.audit.verify

    def counted(*args: Any, **kwargs: Any) -> Any:
        walks.append(1)
        return verify(*args, **kwargs)

    api.gate.audit.verify = counted
    client = signed_in(api)
    for _ in range(5):
        html = client.get("/ui/audit").text
        assert "Chain verifies" in html and "Checked " in html
    assert len(walks) == 1
    with api.gate.store.write() as conn:
        conn.execute(
            update(schema.audit_events)
            .where(schema.audit_events.c.seq == 2)
            .values(actor="someone-else")
        )
    api.client.app.state.chain._max_age = 0  # the walk is due
    html = client.get("/ui/audit").text
    assert "Chain does NOT verify" in html and len(walks) == 2


# -- nothing of what would run is cut from the page ------------------------------------------


class RestartParams(OperationParams):
    hosts: list[str]


class RestartExecutor:
    """An operator's own executor: restarts the hosts its params name."""

    params_model = RestartParams

    def plan(self, operation: Operation) -> Plan:
        hosts = list(operation.params["hosts"])
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment="production",
            summary=f"restart {len(hosts)} hosts",
            steps=tuple(f"restart {h}" for h in hosts[:1]),
            content={"hosts": hosts},
        )

    def run(self, plan: Plan) -> Outcome:
        return Outcome("succeeded", plan.summary)


def test_a_long_param_is_shown_whole_so_nothing_hides_at_its_end(tmp_path: Path) -> None:
    """The page is what an approver approves: a list of 300 harmless hosts with a
    production database at its end must show the database, in the params and in the
    plan content alike (a cut with '…' hid it; the digest bound it all the same)."""
    policy_file = tmp_path / "restart.yaml"
    policy_file.write_text(
        "policies:\n"
        "  - name: restarts\n"
        "    rules:\n"
        "      - condition: \"action == 'restart'\"\n"
        "        action: require_approval\n"
        f"        approvers: [{JOHN}]\n",
        encoding="utf-8",
    )
    gate = opsgate.Gate.open(tmp_path / "state", policies=policy_file)
    try:
        gate.register_executor("restart", RestartExecutor())
        sup = gate.register_agent("ops-supervisor", ["restart:production"], "p@company.com", 920)
        token = gate.credential_manager.issue_credential(
            agent_id=sup.did, scope=["restart:production"], ttl_minutes=15
        ).token
        john = gate.approvals.add_approver(JOHN)
        hosts = [f"cache-{i:03d}.staging.internal" for i in range(300)]
        hosts.append("orders-db-primary.production.internal")
        result = gate.execute(token, Operation("restart", "production/fleet", {"hosts": hosts}))
        client = TestClient(create_app(gate, ServerConfig(external_url="http://testserver")))
        assert sign_in(client, JOHN, john).status_code == 303
        html = client.get(f"/ui/approvals/{result.approval_id}").text  # type: ignore[union-attr]
        params = html.split('id="params"')[1].split("</table>")[0]
        content = html.split("Plan content")[1].split("</dd>")[0]
        for shown in (params, content):
            assert "orders-db-primary.production.internal" in shown
            assert "…" not in shown
    finally:
        gate.close()


def test_a_link_cannot_tell_an_approver_their_decision_was_recorded(api: Api) -> None:
    """`?decided=` is how the page confirms a decision just posted; a link with it
    (from an agent's message, say) must not tell an approver who never decided that
    their denial was recorded while the request still waits for them."""
    approval_id = pending(api)
    client = signed_in(api)
    for verdict in ("deny", "approve"):
        html = client.get(f"/ui/approvals/{approval_id}?decided={verdict}").text
        assert "was recorded" not in html and 'id="decided"' not in html
    assert api.gate.approvals.get(approval_id).decisions == ()
    csrf = csrf_of(client.get(f"/ui/approvals/{approval_id}").text)
    r = decide(client, approval_id, csrf=csrf, verdict="approve")
    page = client.get(r.headers["location"]).text
    assert "Your approval was recorded." in page
    assert "was recorded" not in client.get(f"/ui/approvals/{approval_id}?decided=deny").text


def test_characters_a_reader_cannot_see_are_shown_on_the_approval_page(api: Api) -> None:
    """A zero-width space makes 'ma​in' read as 'main' and a right-to-left override
    turns text around: on the page an approver approves from, every such character is
    written out (⟨U+200B⟩), so a look-alike value never passes as the one it imitates."""
    sneaky = "ma\u200bin \u202edb-noitcudorp\u202c\u00a0"
    approval_id = pending(api, noise=sneaky)
    client = signed_in(api)
    for html in (client.get(f"/ui/approvals/{approval_id}").text, client.get("/ui/approvals").text):
        for hidden in ("\u200b", "\u202e", "\u202c", "\u00a0"):
            assert hidden not in html
    html = client.get(f"/ui/approvals/{approval_id}").text
    params = html.split('id="params"')[1].split("</table>")[0]
    assert "ma⟨U+200B⟩in ⟨U+202E⟩db-noitcudorp⟨U+202C⟩⟨U+00A0⟩" in params


# Drawn as nothing (or a blank) though neither format nor space characters: combining
# grapheme joiner, variation selectors, Mongolian and Khmer invisibles, Hangul fillers,
# the blank braille pattern.
IGNORABLE = "\u034f\ufe00\ufe0f\U000e0100\u180b\u17b4\u115f\u1160\u3164\uffa0\u2800"


def test_default_ignorable_characters_are_written_out_too(api: Api) -> None:
    approval_id = pending(api, noise="2.4.1" + IGNORABLE)
    client = signed_in(api)
    for html in (client.get(f"/ui/approvals/{approval_id}").text, client.get("/ui/approvals").text):
        for hidden in IGNORABLE:
            assert hidden not in html, f"U+{ord(hidden):04X}"
    html = client.get(f"/ui/approvals/{approval_id}").text
    assert "2.4.1⟨U+034F⟩⟨U+FE00⟩⟨U+FE0F⟩⟨U+E0100⟩" in html


def test_the_audit_page_writes_out_what_a_reader_cannot_see(api: Api) -> None:
    """An approver's comment (any text) reaches the audit page: a right-to-left override
    there would turn the event's text around."""
    approval_id = pending(api)
    api.gate.approvals.approve(
        approval_id,
        approver=JOHN,
        token=api.world.approver_tokens[JOHN],
        comment="looks fine \u202eyrtne kaeh\u202c \u034f",
    )
    html = signed_in(api).get("/ui/audit").text
    for hidden in ("\u202e", "\u202c", "\u034f"):
        assert hidden not in html
    assert "⟨U+202E⟩yrtne kaeh⟨U+202C⟩" in html


@pytest.mark.parametrize(
    "query",
    [
        "agent=%0Adeploy-agent",
        "agent=%09deploy-agent%0D%0A",
        "type=approval.requested%0A",
        "agent=" + "x" * 128 + "%00",
        "type=" + "y" * 65,
        "agent=" + "z" * 129,
    ],
)
def test_an_audit_filter_is_checked_as_given_never_trimmed_or_cut(api: Api, query: str) -> None:
    r = signed_in(api).get(f"/ui/audit?{query}")
    assert r.status_code == 422 and "audit_query_invalid" in r.text, (query, r.status_code)
