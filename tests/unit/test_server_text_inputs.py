"""Operator and approver text that no database stores as given is refused typed.

A NUL in an audit filter, a suspension reason or an approval comment reached
PostgreSQL, which refuses it in text: a 500 (`internal_error`), and a suspension that
silently did not happen. Names, filters and reasons are one line of text; a comment
may hold line breaks and tabs but no other control character. Every such input is
refused with its own code (4xx) before anything is read or written, on SQLite and on
PostgreSQL alike, and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from helpers import deploy, open_world
from server_helpers import BASE, Api, basic
from sqlalchemy import select
from ui_helpers import csrf_of, sign_in

import opsgate
from opsgate.config import ServerConfig
from opsgate.errors import plain_text
from opsgate.server import create_app
from opsgate.store import schema

JOHN = "john@company.com"
# What a refusal may write: its audit record (and the ids and counters that go with it).
AUDIT_TABLES = {"audit_events", "audit_head", "audit_checkpoints", "audit_outbox", "counters"}
BAD = ["\x00", "x\x00y", "\x1b[31m", "\x7f", "\x9b"]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url_module")
    world = open_world(tmp_path_factory.mktemp(request.param) / "state", database_url=url)
    operator_token = world.gate.operators.add("ops")
    settings = ServerConfig(external_url=BASE, refusal_burst=100_000)
    client = TestClient(create_app(world.gate, settings), raise_server_exceptions=False)
    a = Api(world, client, operator_token)
    assert sign_in(client, JOHN, world.approver_tokens[JOHN]).status_code == 303
    yield a
    world.gate.close()


@pytest.fixture(scope="module")
def approval_id(api: Api) -> str:
    return str(api.gate.execute(api.world.token, deploy()).approval_id)


def state(gate: opsgate.Gate) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit log's, in a stable order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with gate.store.read() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name not in AUDIT_TABLES:
                out[table.name] = sorted(map(tuple, conn.execute(select(table)).all()), key=repr)
    return out


def _ui_form(api: Api, path: str, **form: str) -> Any:
    page = api.client.get(path)
    return api.client.post(path, data={"csrf": csrf_of(page.text), **form}, follow_redirects=False)


# (name, expected status, expected code, request): `bad` is the text to try.
CASES: list[tuple[str, int, str, Any]] = [
    (
        "audit tail type",
        422,
        "audit_query_invalid",
        lambda a, apr, bad: a.client.get(f"/v1/audit/tail?type={quote(bad)}", headers=a.operator()),
    ),
    (
        "audit tail actor",
        422,
        "audit_query_invalid",
        lambda a, apr, bad: a.client.get(
            f"/v1/audit/tail?actor={quote(bad)}", headers=a.operator()
        ),
    ),
    (
        "suspend reason",
        422,
        "reason_invalid",
        lambda a, apr, bad: a.client.post(
            "/v1/agents/deploy-agent/suspend", json={"reason": f"leak{bad}"}, headers=a.operator()
        ),
    ),
    (
        "reinstate reason",
        422,
        "reason_invalid",
        lambda a, apr, bad: a.client.post(
            "/v1/agents/deploy-agent/reinstate", json={"reason": f"ok{bad}"}, headers=a.operator()
        ),
    ),
    (
        "register name",
        422,
        "invalid_name",
        lambda a, apr, bad: a.client.post(
            "/v1/agents",
            json={"name": f"n{bad}", "capabilities": ["deploy:staging"], "sponsor": "a@b.co"},
            headers=a.operator(),
        ),
    ),
    (
        "register sponsor",
        422,
        "invalid_email",
        lambda a, apr, bad: a.client.post(
            "/v1/agents",
            json={"name": "n1", "capabilities": ["deploy:staging"], "sponsor": f"a{bad}@b.co"},
            headers=a.operator(),
        ),
    ),
    (
        "delegate name",
        422,
        "invalid_name",
        lambda a, apr, bad: a.client.post(
            "/v1/agents/devops-supervisor/delegate",
            json={"name": f"c{bad}", "capabilities": ["deploy:staging"]},
            headers=a.operator(),
        ),
    ),
    (
        "agent by name",
        404,
        "agent_not_found",
        lambda a, apr, bad: a.client.get(f"/v1/agents/{quote(bad, safe='')}", headers=a.operator()),
    ),
    (
        "suspend by name",
        404,
        "agent_not_found",
        lambda a, apr, bad: a.client.post(
            f"/v1/agents/deploy{quote(bad, safe='')}/suspend",
            json={"reason": "r"},
            headers=a.operator(),
        ),
    ),
    (
        "trust history by name",
        404,
        "agent_not_found",
        lambda a, apr, bad: a.client.get(
            f"/v1/trust/{quote(bad, safe='')}/history", headers=a.operator()
        ),
    ),
    (
        "approve comment",
        422,
        "comment_invalid",
        lambda a, apr, bad: a.client.post(
            f"/v1/approvals/{apr}/approve", json={"comment": f"ok{bad}"}, headers=a.approver()
        ),
    ),
    (
        "deny comment",
        422,
        "comment_invalid",
        lambda a, apr, bad: a.client.post(
            f"/v1/approvals/{apr}/deny", json={"comment": f"no{bad}"}, headers=a.approver()
        ),
    ),
    (
        "approval id",
        404,
        "approval_not_found",
        lambda a, apr, bad: a.client.post(
            f"/v1/approvals/apr_{quote(bad, safe='')}/approve", json={}, headers=a.approver()
        ),
    ),
    (
        "approver email",
        422,
        "invalid_email",
        lambda a, apr, bad: a.client.get(
            "/v1/approvals",
            headers={
                "Authorization": basic(f"john{bad}@company.com", a.world.approver_tokens[JOHN])
            },
        ),
    ),
    (
        "ui audit type",
        422,
        "audit_query_invalid",
        lambda a, apr, bad: a.client.get(f"/ui/audit?type={quote(bad)}"),
    ),
    (
        "ui audit agent",
        422,
        "audit_query_invalid",
        lambda a, apr, bad: a.client.get(f"/ui/audit?agent={quote(bad)}"),
    ),
    (
        "ui decision comment",
        422,
        "comment_invalid",
        lambda a, apr, bad: _ui_form(a, f"/ui/approvals/{apr}", verdict="deny", comment=f"no{bad}"),
    ),
]


def _code(response: Any) -> str | None:
    if response.headers.get("content-type", "").startswith("application/json"):
        data = response.json()
        return data.get("code") if isinstance(data, dict) else None
    found = re.search(r'<code id="code">\[([a-z_]+)\]</code>', response.text)
    return found.group(1) if found else None


@pytest.mark.parametrize("bad", BAD, ids=[repr(b) for b in BAD])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_text_no_database_stores_is_refused_typed_and_changes_nothing(
    api: Api, approval_id: str, case: tuple[str, int, str, Any], bad: str
) -> None:
    _, status, code, send = case
    before = state(api.gate)
    response = send(api, approval_id, bad)
    assert (response.status_code, _code(response)) == (status, code), response.text[:300]
    assert state(api.gate) == before
    assert api.gate.agents.get("deploy-agent").to_dict()["status"] == "active"
    assert api.gate.approvals.get(approval_id).status == "pending"


def test_the_same_inputs_without_control_characters_are_accepted(
    api: Api, approval_id: str
) -> None:
    """The control: the filters, a reason and a comment with line breaks (a comment
    may have lines) go through, so the refusals above are about the characters."""
    r = api.client.get("/v1/audit/tail?type=approval.requested&actor=x", headers=api.operator())
    assert r.status_code == 200, r.text
    assert api.client.get("/ui/audit?type=approval.requested&agent=deploy-agent").status_code == 200
    other = str(api.gate.execute(api.world.token, deploy(noise="second")).approval_id)
    comment = "no:\r\n\tnot today"
    r = api.client.post(
        f"/v1/approvals/{other}/deny", json={"comment": comment}, headers=api.approver()
    )
    assert r.status_code == 200, r.text
    assert api.gate.approvals.get(other).decisions[-1].comment == comment
    r = api.client.post(
        "/v1/agents/deploy-agent/suspend", json={"reason": "leak é"}, headers=api.operator()
    )
    assert r.status_code == 200, r.text
    assert api.gate.agents.get("deploy-agent").to_dict()["status"] == "suspended"
    r = api.client.post(
        "/v1/agents/deploy-agent/reinstate", json={"reason": "back"}, headers=api.operator()
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("text", "lines", "plain"),
    [
        ("deploy-agent", False, True),
        ("leak é ✓", False, True),
        ("a\nb", False, False),
        ("a\nb\r\n\tc", True, True),
        ("a\x00b", True, False),
        ("\x1b[31m", True, False),
        ("\x7f", True, False),
        ("\x85", True, False),
        ("\ud800", True, False),
        (b"bytes", True, False),
        (None, False, False),
    ],
)
def test_plain_text(text: object, lines: bool, plain: bool) -> None:
    assert plain_text(text, lines=lines) is plain


def test_every_way_in_refuses_such_a_reason_or_filter(
    tmp_path: Path, database_url: str | None
) -> None:
    """The same rule where the CLI and the SDK come in (the kernel's own methods): a
    suspension, revocation, trust change or forced key export with such a reason, an
    audit query with such a filter, is refused with its code and changes nothing."""
    w = open_world(tmp_path / "state", database_url=database_url)
    try:
        gate = w.gate
        jti = w.credential_.jti
        calls: list[tuple[str, Any]] = [
            ("reason_invalid", lambda: gate.agents.suspend("deploy-agent", reason="r\x00")),
            ("reason_invalid", lambda: gate.agents.revoke("deploy-agent", reason="r\x1b")),
            ("reason_invalid", lambda: gate.agents.reinstate("deploy-agent", reason="r\x00")),
            ("reason_invalid", lambda: gate.credential_manager.revoke(jti, reason="r\x00")),
            (
                "reason_invalid",
                lambda: gate.credential_manager.revoke_agent("deploy-agent", reason="r\x00"),
            ),
            (
                "reason_invalid",
                lambda: gate.set_trust_score("deploy-agent", 900, reason="r\x00", by="ops"),
            ),
            (
                "reason_invalid",
                lambda: gate.agents.export_key(
                    "deploy-agent", tmp_path / "key.pem", by="ops", force=True, reason="r\n"
                ),
            ),
            ("audit_query_invalid", lambda: gate.audit.tail(5, event_type="a\x00")),
            ("audit_query_invalid", lambda: gate.audit.tail(5, actor="\x00")),
            ("audit_query_invalid", lambda: list(gate.audit.events(actor="a\x00b"))),
            ("audit_query_invalid", lambda: list(gate.audit.events(event_type="\x7f"))),
        ]
        for code, call in calls:
            before = state(gate)
            with pytest.raises(opsgate.OpsgateError) as refused:
                call()
            assert refused.value.code == code, refused.value
            assert state(gate) == before, code
        assert not (tmp_path / "key.pem").exists()
        assert gate.agents.get("deploy-agent").to_dict()["status"] == "active"
        assert isinstance(refused.value, opsgate.AuditError)
    finally:
        w.gate.close()
