"""`opsgate mcp`'s tools through the official MCP client (ClientSession over the SDK's
in-memory transport) on a local gate: the tool list is filtered by the agent's grants;
bad arguments are typed tool errors (`arguments_invalid`, nothing run, no traceback);
a hidden tool called anyway is refused `tool_not_granted` and charged by the gate;
a pending approval is a result, resumed by its id; every call is one `tool.call`
audit event with the argument digest; a secret value is in no error and no audit."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest
from deploy_world import deploy_world
from helpers import World, audit_events, database_text, open_world, policy, stored_trust
from mcp import ClientSession
from mcp.shared.memory import create_connected_server_and_client_session

import opsgate
from opsgate import capabilities as caps
from opsgate.mcp_server import LocalBackend, ToolServer, build_server
from opsgate.mcp_server.tools import (
    BY_NAME,
    TOOLS,
    args_digest,
    args_withheld,
    offered_tools,
    operation_of,
    parse_args,
)
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
    assert events[0].event["args_digest"] == args_digest(BY_NAME["deploy"], arguments)


def test_unknown_tools_and_non_object_arguments_are_typed(world: World) -> None:
    unknown = data(call(world, world.agent, "shell", {"cmd": "rm -rf /"}))
    assert unknown["code"] == "tool_unknown"
    assert audit_events(world.gate, "tool.call")[-1]["tool"] == "unknown"


def test_the_argument_digest_leaves_a_secret_value_out() -> None:
    write = BY_NAME["secret_write"]
    base = {"path": "staging/db", "expected_version": 1}
    assert args_digest(write, {**base, "value": "a"}) == args_digest(write, {**base, "value": "b"})
    assert args_digest(write, base) != args_digest(write, {**base, "expected_version": 2})
    assert args_digest(write, {"path": "staging/db", "expected_version": 1}) == args_digest(
        write, {"expected_version": 1, "path": "staging/db"}
    )
    assert args_withheld(write, {**base, "value": "a"}) == 0


#: A short secret an LLM passed where no value belongs, and a dictionary holding it.
GUESSED = "Summer2024!"
DICTIONARY = ["password", "hunter2", "Winter2023!", GUESSED, "letmein"]


@pytest.mark.parametrize(
    ("tool", "arguments", "withheld"),
    [
        # Under a name the tool does not declare (refused as arguments_invalid).
        ("secret_write", {"path": "staging/db", "secret": GUESSED}, 1),
        ("secret_write", {"path": "staging/db", "Value": GUESSED, "value": "x"}, 1),
        ("secret_read", {"path": "staging/db", "password": GUESSED}, 1),
        # Under a declared name, as a value its schema refuses.
        ("secret_write", {"path": "staging/db", "expected_version": GUESSED}, 1),
        ("secret_read", {"path": "staging/db", "version": GUESSED}, 1),
        ("secret_rotate", {"path": "staging/db", "charset": GUESSED}, 1),
        ("deploy", {"app": "web", "env": "staging", "version": "1", "artifact": [GUESSED]}, 1),
        ("secret_list", {"prefix": GUESSED}, 1),
        # A tool that does not exist: none of its arguments.
        ("no_such_tool", {"path": "staging/db", "value": GUESSED}, 2),
    ],
)
def test_a_secret_under_any_argument_cannot_be_guessed_back_from_the_digest(
    tmp_path: Path, tool: str, arguments: dict[str, Any], withheld: int
) -> None:
    """The `tool.call` digest is unsalted SHA-256: whatever it covers, anyone who reads
    the audit can confirm guesses of. It covers only declared arguments with valid
    values (a value the tool's schema refuses, an undeclared key, an unknown tool's
    arguments are counted, never hashed), so a dictionary finds nothing."""
    gate = opsgate.Gate.open(tmp_path / "state", policies=EXAMPLE_POLICY)
    try:
        agent = gate.register_agent(
            "writer",
            ["write:secrets/staging", "read:secrets/staging", "rotate:secrets/staging"],
            "lead@company.com",
            800,
        )
        got = data(call(SimpleNamespace(gate=gate), agent, tool, arguments))
        assert got["code"] in ("arguments_invalid", "tool_unknown")
        event = audit_events(gate, "tool.call")[-1]
        assert event["outcome"] == "invalid" and event["args_withheld"] == withheld
        assert GUESSED not in database_text(gate)
    finally:
        gate.close()
    names = {k for k in arguments if k != "value"} | {"secret", "Value", "password", "version"}
    keys = sorted(names)
    base = {k: v for k, v in arguments.items() if v != GUESSED}
    for guess in DICTIONARY:
        for key in keys:
            for candidate in ({**base, key: guess}, {key: guess}, {**base, key: [guess]}):
                raw = orjson.dumps(candidate, option=orjson.OPT_SORT_KEYS)
                assert "sha256:" + hashlib.sha256(raw).hexdigest() != event["args_digest"], (
                    f"recovered {guess!r} under {key!r}"
                )


def test_a_valid_call_is_digested_as_before_and_withholds_nothing() -> None:
    """Declared, valid arguments are the digest's whole content, as the call sent them."""
    args = {"app": "web", "env": "staging", "version": "1.0.0", "dry_run": True}
    raw = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    assert args_digest(BY_NAME["deploy"], args) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert args_withheld(BY_NAME["deploy"], args) == 0
    assert args_withheld(BY_NAME["deploy"], [1, 2]) == 1  # not an object at all


# -- bounds -------------------------------------------------------------------------------------

MAX_VERSION = 2**31 - 1


@pytest.mark.parametrize(
    "value", [MAX_VERSION + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30], ids=str
)
@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ("secret_read", "version"),
        ("secret_write", "expected_version"),
        ("secret_rotate", "expected_version"),
    ],
)
def test_a_version_no_backend_can_hold_is_an_invalid_argument(
    tool: str, name: str, value: int
) -> None:
    extra = {"value": "v"} if tool == "secret_write" else {}
    args = {"path": "staging/db", name: value, **extra}
    with pytest.raises(opsgate.OperationError) as err:
        parse_args(BY_NAME[tool], args)
    assert err.value.code == "arguments_invalid"
    assert err.value.message == f"argument {name!r} is too large"
    parse_args(BY_NAME[tool], {**args, name: MAX_VERSION})  # the largest one is an argument


@pytest.mark.parametrize(
    "tool", [t for t in TOOLS if t.namespace == "secrets"], ids=lambda t: str(t.name)
)
def test_a_secret_path_is_never_longer_than_its_capability_allows(tool: Any) -> None:
    """The path's pattern allows 16 segments of 64 characters; the capability it makes
    (`<action>:secrets/<path>`) is held to the grammar's limit, so the gate parses it
    and the call's record can always name it."""
    field = "prefix" if tool.name == "secret_list" else "path"
    extra = {"value": "v"} if tool.name == "secret_write" else {}
    room = caps.MAX_CAPABILITY_CHARS - len(f"{tool.action}:secrets/")
    longest = ("staging/" + "/".join(["s" * 60] * 16))[:room].rstrip("/")
    longest += "x" * (room - len(longest))
    assert len(longest) == room
    operation = operation_of(tool, parse_args(tool, {field: longest, **extra}))
    assert len(operation.capability) == caps.MAX_CAPABILITY_CHARS
    assert str(caps.parse_request(operation.capability)) == operation.capability.lower()
    with pytest.raises(opsgate.OperationError) as err:
        parse_args(tool, {field: longest + "y", **extra})
    assert err.value.code == "arguments_invalid"
    assert err.value.message == f"argument {field!r} is too long"


def test_every_tool_makes_capabilities_the_grammar_accepts() -> None:
    """The longest resource arguments of every tool make a capability within the limit."""
    seg = "a" * 64
    for tool in TOOLS:
        if tool.build is None:
            continue
        fields = tool.args.model_fields
        longest: dict[str, Any] = {k: seg for k in ("app", "env", "database") if k in fields}
        for name in ("path", "prefix"):
            if name in fields:
                limit = next(
                    m.max_length for m in fields[name].metadata if hasattr(m, "max_length")
                )
                longest[name] = ("/".join([seg] * 16))[:limit].rstrip("/")
        if tool.name == "deploy":
            longest["version"] = "1"
        if tool.name == "secret_write":
            longest["value"] = "v"
        operation = operation_of(tool, parse_args(tool, longest))
        assert len(operation.capability) <= caps.MAX_CAPABILITY_CHARS, tool.name
        caps.parse_request(operation.capability)


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


def test_a_revoked_credential_is_replaced_not_presented(world: World) -> None:
    """The local backend kept its credential until a third of its life was left, revoked
    or not: after an operator revoked it (one leaked, or all of the agent's), every tool
    call was refused for up to ten minutes and the first charged the agent as misuse
    (-150: under the approval line) for the operator's act. It is replaced at once."""
    from helpers import RELEASE

    backend = LocalBackend(world.gate, world.agent.name, operator="operator:test")
    cm = world.gate.credential_manager
    capability = "deploy:staging/app-web"
    assert backend.authorize(capability, dict(RELEASE)).effect == "allow"
    before = stored_trust(world.gate, world.agent.did)
    issued = [e["jti"] for e in audit_events(world.gate, "credential.issued")]
    cm.revoke(issued[-1], reason="leaked")
    assert backend.authorize(capability, dict(RELEASE)).effect == "allow"
    cm.revoke_agent(world.agent.did, reason="rotate everything")
    assert backend.authorize(capability, dict(RELEASE)).effect == "allow"
    assert stored_trust(world.gate, world.agent.did) == before
    assert audit_events(world.gate, "credential.rejected") == []
    assert len(audit_events(world.gate, "credential.issued")) == len(issued) + 2


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
        assert calls[-1]["args_digest"] == args_digest(
            BY_NAME["deploy"], {**prod, "approval_id": approval_id}
        )


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
