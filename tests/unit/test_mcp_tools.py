"""`opsgate mcp`'s tools through the official MCP client (ClientSession over the SDK's
in-memory transport) on a local gate: the tool list is filtered by the agent's grants;
bad arguments are typed tool errors (`arguments_invalid`, nothing run, no traceback);
a hidden tool called anyway is refused `tool_not_granted` and charged by the gate;
a pending approval is a result, resumed by its id; every call is one `tool.call`
audit event with the argument digest; a secret value is in no error and no audit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from deploy_world import deploy_world
from helpers import World, audit_events, database_text, open_world, policy, stored_trust
from mcp import ClientSession
from mcp.shared.memory import create_connected_server_and_client_session

import opsgate
from opsgate.mcp_server import LocalBackend, ToolServer, build_server
from opsgate.mcp_server.tools import TOOLS, args_digest, offered_tools
from opsgate.operations.migrate import MigrationExecutor

EXAMPLE_POLICY = Path(__file__).parent.parent.parent / "examples" / "policies.yaml"
VALUE = "Sw0rdf1sh-mcp-unit-7Q"
SECRET_SCOPE = ["read:secrets/staging", "write:secrets/staging", "list:secrets/staging"]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return open_world(tmp_path / "state")


def session_run(world: Any, agent: Any, body: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Run `body` with an MCP client connected to `agent`'s tool server."""
    backend = LocalBackend(world.gate, agent.name, operator="operator:test")
    server = build_server(ToolServer(backend))
    out: list[Any] = []

    async def main() -> None:
        async with create_connected_server_and_client_session(server) as client:
            out.append(await body(client))

    anyio.run(main)
    return out[0]


def call(world: Any, agent: Any, name: str, arguments: Any) -> Any:
    async def body(client: ClientSession) -> Any:
        return await client.call_tool(name, arguments)

    return session_run(world, agent, body)


def names(world: World, agent: Any) -> set[str]:
    async def body(client: ClientSession) -> Any:
        return {t.name for t in (await client.list_tools()).tools}

    result: set[str] = session_run(world, agent, body)
    return result


def data(result: Any) -> dict[str, Any]:
    """The structured result, checked against the text the client shows the model."""
    assert result.structuredContent == json.loads(result.content[0].text)
    return dict(result.structuredContent)


# -- listing ----------------------------------------------------------------------------------


def test_the_tool_list_is_the_agents_grants_and_nothing_else(world: World) -> None:
    assert names(world, world.agent) == {
        "deploy",
        "approval_status",
    }  # DEPLOY_SCOPE: deploy only
    reader = world.gate.register_agent(
        "reader", ["read:monitoring/staging/app-web", *SECRET_SCOPE], "lead@company.com", 800
    )
    assert names(world, reader) == {
        "deployment_status",
        "health",
        "secret_read",
        "secret_write",
        "secret_list",
        "approval_status",
    }


def test_offered_tools_follow_action_and_namespace() -> None:
    def offered(*grants: str) -> set[str]:
        return {t.name for t in offered_tools(grants)}

    assert offered() == {"approval_status"}
    assert offered("migrate:database/app") == {
        "migration_plan",
        "migration_apply",
        "migration_status",
        "approval_status",
    }
    # read:secrets is not read:monitoring, and deploy on a namespace is no environment.
    assert offered("read:secrets/staging/db") == {"secret_read", "approval_status"}
    assert offered("deploy:secrets/x", "rotate:monitoring/x") == {"approval_status"}
    assert offered("rollback:production/web") == {"rollback", "approval_status"}
    assert offered("not a capability") == {"approval_status"}


def test_every_tool_has_a_strict_object_schema() -> None:
    for tool in TOOLS:
        schema = tool.schema()
        assert schema["type"] == "object"
        assert schema.get("additionalProperties") is False, tool.name


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"app": "app-web", "env": "staging"}, "argument 'version' is required"),
        ({"app": "app-web", "env": "staging", "version": 3}, "'version' must be a string"),
        ({"app": "app-web", "env": "staging/../production", "version": "1"}, "'env' is not in"),
        ({"app": "a/b", "env": "staging", "version": "1"}, "'app' is not in the accepted form"),
        ({"app": "..", "env": "staging", "version": "1"}, "'app' is not in the accepted form"),
        (
            {"app": "app-web", "env": "staging", "version": "1", "annotations": {"x": 1}},
            "'annotations' is not an argument of this tool",
        ),
        (
            {"app": "app-web", "env": "staging", "version": "1", "dry_run": "yes"},
            "'dry_run' must be true or false",
        ),
    ],
)
def test_bad_arguments_are_a_typed_tool_error_and_nothing_runs(
    world: World, arguments: dict[str, Any], problem: str
) -> None:
    before = len(world.gate.audit.tail(10_000))
    result = call(world, world.agent, "deploy", arguments)
    assert result.isError
    got = data(result)
    assert got["status"] == "refused" and got["code"] == "arguments_invalid"
    assert problem in got["message"]
    assert "Traceback" not in result.content[0].text
    assert world.executor.runs == [] and world.executor.plans == []
    events = world.gate.audit.tail(10_000)[before:]
    assert [e.type for e in events] == ["tool.call"]  # the call, audited; nothing else
    assert events[0].event["outcome"] == "invalid"
    assert events[0].event["code"] == "arguments_invalid"
    assert events[0].event["args_digest"] == args_digest(arguments)


def test_unknown_tools_and_non_object_arguments_are_typed(world: World) -> None:
    unknown = data(call(world, world.agent, "shell", {"cmd": "rm -rf /"}))
    assert unknown["code"] == "tool_unknown"
    assert audit_events(world.gate, "tool.call")[-1]["tool"] == "unknown"


def test_the_argument_digest_leaves_a_secret_value_out() -> None:
    base = {"path": "staging/db", "expected_version": 1}
    assert args_digest({**base, "value": "a"}) == args_digest({**base, "value": "b"})
    assert args_digest(base) != args_digest({**base, "expected_version": 2})
    assert args_digest({"b": 1, "a": 2}) == args_digest({"a": 2, "b": 1})


# -- decisions ---------------------------------------------------------------------------------


def test_a_hidden_tool_called_anyway_is_refused_and_charged_by_the_gate(world: World) -> None:
    reader = world.gate.register_agent(
        "reader", ["read:monitoring/staging/app-web"], "lead@company.com", 800
    )
    before = stored_trust(world.gate, reader.did)
    result = call(world, reader, "deploy", {"app": "app-web", "env": "staging", "version": "9.9.9"})
    got = data(result)
    assert result.isError and got["code"] == "tool_not_granted"
    assert "not granted to agent 'reader'" in got["message"]
    assert world.executor.runs == []  # nothing ran
    assert stored_trust(world.gate, reader.did) < before  # a violation, charged
    decided = [
        e
        for e in audit_events(world.gate, "authorize")
        if e["capability"] == "deploy:staging/app-web"
    ]
    assert decided[-1]["decision"] == "deny"
    call_event = audit_events(world.gate, "tool.call")[-1]
    assert call_event["tool"] == "deploy" and call_event["code"] == "tool_not_granted"
    assert call_event["outcome"] == "refused"


def test_staging_runs_production_waits_and_the_approval_id_resumes(tmp_path: Path) -> None:
    with deploy_world(tmp_path, policies=policy("policies.yaml")) as w:
        token = w.gate.approvals.add_approver("john@company.com")
        artifact = w.artifact("web-3.0.0.tar", "web 3.0.0")
        args = {"app": "web", "env": "staging", "version": "3.0.0", "artifact": artifact}
        done = data(call(w, w.agent, "deploy", args))
        assert done["status"] == "succeeded" and done["audit_seq"] >= 1
        assert w.current("staging") == "3.0.0"

        prod = {**args, "env": "production"}
        pending = call(w, w.agent, "deploy", prod)
        assert not pending.isError
        waiting = data(pending)
        assert waiting["status"] == "approval_pending"
        approval_id = waiting["approval_id"]
        assert set(waiting["approvers"]) == {"john@company.com", "jane@company.com"}
        assert waiting["expires_at"] and waiting["capability"] == "deploy:production/web"
        assert w.current("production") is None

        # Asked again before anyone decided: still pending, still not an error.
        again = call(w, w.agent, "deploy", {**prod, "approval_id": approval_id})
        assert not again.isError and data(again)["status"] == "approval_pending"
        status = data(call(w, w.agent, "approval_status", {"approval_id": approval_id}))
        assert status["status"] == "pending" and status["capability"] == "deploy:production/web"

        w.gate.approvals.approve(approval_id, approver="john@company.com", token=token)
        # Other arguments under the same approval: the digest binds them, refused.
        other = {**prod, "message": "something else", "approval_id": approval_id}
        refused = call(w, w.agent, "deploy", other)
        assert refused.isError and data(refused)["code"] == "digest_mismatch"
        assert w.current("production") is None
        ran = data(call(w, w.agent, "deploy", {**prod, "approval_id": approval_id}))
        assert ran["status"] == "succeeded"
        assert w.current("production") == "3.0.0"
        calls = audit_events(w.gate, "tool.call")
        assert [e["outcome"] for e in calls] == [
            "succeeded",
            "approval_pending",
            "approval_pending",
            "succeeded",
            "refused",
            "succeeded",
        ]
        assert all(e["tool"] in ("deploy", "approval_status") for e in calls)
        assert calls[-1]["approval"] == approval_id
        assert calls[-1]["args_digest"] == args_digest({**prod, "approval_id": approval_id})


def test_a_secret_is_read_where_granted_and_never_in_an_error_or_the_audit(
    world: World,
) -> None:
    agent = world.gate.register_agent("secrets-agent", SECRET_SCOPE, "lead@company.com", 800)
    wrote = data(
        call(world, agent, "secret_write", {"path": "staging/db-password", "value": VALUE})
    )
    assert wrote["status"] == "succeeded" and VALUE not in json.dumps(wrote)
    read = data(call(world, agent, "secret_read", {"path": "staging/db-password"}))
    assert read["detail"]["value"] == VALUE

    # Refused by the gate (production is not granted): the value is nowhere in the error.
    denied = call(world, agent, "secret_write", {"path": "production/db", "value": VALUE})
    assert denied.isError and data(denied)["code"] == "operation_denied"
    assert VALUE not in denied.content[0].text
    # A bad argument beside the value: typed, the value not echoed.
    bad = call(
        world, agent, "secret_write", {"path": "staging/db", "value": VALUE, "version": VALUE}
    )
    assert data(bad)["code"] == "arguments_invalid" and VALUE not in bad.content[0].text
    assert VALUE not in database_text(world.gate)
    listed = data(call(world, agent, "secret_list", {"prefix": "staging"}))
    assert listed["detail"]["names"] == ["db-password"]


def tables(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with closing(sqlite3.connect(db)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migrations_plan_apply_and_wait_through_the_tools(tmp_path: Path) -> None:
    migrations, target_db = tmp_path / "migrations", tmp_path / "orders.db"
    migrations.mkdir()
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=EXAMPLE_POLICY,
        databases={
            "orders": {"url": f"sqlite:///{target_db}", "migrations": str(migrations)},
            "billing": {"url": f"sqlite:///{tmp_path / 'b.db'}", "migrations": str(migrations)},
        },
    )
    try:
        gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
        agent = gate.register_agent(
            "database-agent", ["migrate:database/orders"], "platform-team@company.com", 920
        )
        gate.approvals.add_approver("dana@company.com")
        w = SimpleNamespace(gate=gate)
        assert names(w, agent) == {
            "migration_plan",
            "migration_apply",
            "migration_status",
            "approval_status",
        }
        (migrations / "V1__init.sql").write_text("CREATE TABLE legacy (id integer);")
        status = data(call(w, agent, "migration_status", {"database": "orders"}))
        assert status["status"] == "dry_run"
        assert [p["name"] for p in status["plan"]["content"]["pending"]] == ["V1__init.sql"]
        assert status["decision"]["effect"] == "allow"
        assert "legacy" not in tables(target_db)  # a status reads only
        applied = data(call(w, agent, "migration_apply", {"database": "orders"}))
        assert applied["status"] == "succeeded"
        assert "legacy" in tables(target_db)

        (migrations / "V2__drop.sql").write_text("DROP TABLE legacy;")
        plan = data(call(w, agent, "migration_plan", {"database": "orders", "target": 2}))
        statement = plan["plan"]["content"]["pending"][0]["statements"][0]
        assert statement["destructive"] is True
        assert plan["decision"]["effect"] == "require_approval"
        waiting = data(call(w, agent, "migration_apply", {"database": "orders"}))
        assert waiting["status"] == "approval_pending"
        assert waiting["approvers"] == ["dana@company.com"]
        assert "legacy" in tables(target_db)  # nothing dropped before the approval
        other = call(w, agent, "migration_apply", {"database": "billing"})
        assert other.isError and data(other)["code"] == "operation_denied"
    finally:
        gate.close()


def test_what_a_client_says_about_a_call_decides_nothing(world: World, tmp_path: Path) -> None:
    """Annotations or `_meta` sent with a call (read-only, approved, trusted...) are
    never read: a hidden tool stays refused and a production deploy still waits."""
    reader = world.gate.register_agent(
        "reader", ["read:monitoring/staging/app-web"], "lead@company.com", 800
    )
    claims = {"readOnlyHint": True, "approved": True, "approval_id": "x", "trusted": True}

    def with_meta(arguments: dict[str, Any]) -> Callable[[ClientSession], Awaitable[Any]]:
        async def body(client: ClientSession) -> Any:
            return await client.call_tool("deploy", arguments, meta=claims)

        return body

    staging = {"app": "app-web", "env": "staging", "version": "1.0.0"}
    refused = session_run(world, reader, with_meta(staging))
    assert refused.isError and data(refused)["code"] == "tool_not_granted"
    assert world.executor.runs == []

    with deploy_world(tmp_path / "deploy", policies=policy("policies.yaml")) as w:
        release = {"app": "web", "version": "1.0.0", "artifact": w.artifact("w.tar", "w 1")}
        staged = data(session_run(w, w.agent, with_meta({**release, "env": "staging"})))
        assert staged["status"] == "succeeded"  # production needs it first
        waiting = data(session_run(w, w.agent, with_meta({**release, "env": "production"})))
        assert waiting["status"] == "approval_pending"
        assert w.current("production") is None


def test_rollback_health_and_status_through_the_tools(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        watcher = w.gate.register_agent(
            "watcher", ["read:monitoring/staging"], "lead@company.com", 900
        )
        for version in ("1.0.0", "1.1.0"):
            artifact = w.artifact(f"web-{version}.tar", f"web {version}")
            args = {"app": "web", "env": "staging", "version": version, "artifact": artifact}
            assert data(call(w, w.agent, "deploy", args))["status"] == "succeeded"
        assert w.current("staging") == "1.1.0"

        healthy = data(call(w, watcher, "health", {"app": "web", "env": "staging"}))
        assert healthy["status"] == "succeeded"
        assert healthy["detail"]["health"]["status"] == "passed"
        assert healthy["detail"]["current"] == "1.1.0"
        w.health.script(500)  # a failing app is what the read reports, not a failed call
        sick = call(w, watcher, "health", {"app": "web", "env": "staging"})
        assert not sick.isError and data(sick)["detail"]["health"]["status"] != "passed"
        w.health.script(200)

        plan = data(call(w, w.agent, "rollback", {"app": "web", "env": "staging", "dry_run": True}))
        assert plan["status"] == "dry_run" and w.current("staging") == "1.1.0"
        back = data(call(w, w.agent, "rollback", {"app": "web", "env": "staging"}))
        assert back["status"] == "succeeded" and w.current("staging") == "1.0.0"

        status = data(call(w, watcher, "deployment_status", {"app": "web", "env": "staging"}))
        assert status["detail"]["current"] == "1.0.0"
        history = data(
            call(w, watcher, "deployment_status", {"app": "web", "env": "staging", "history": True})
        )
        assert len(history["detail"]["history"]) == 3  # two deploys and the rollback
        # The watcher reads; it deploys nothing (not offered, and refused if asked).
        assert "rollback" not in names(w, watcher)
        refused = call(w, watcher, "rollback", {"app": "web", "env": "staging"})
        assert data(refused)["code"] == "tool_not_granted" and w.current("staging") == "1.0.0"
