"""`opsgate mcp` as an MCP client spawns it: the official MCP client (ClientSession over
stdio_client) talks to `opsgate mcp --agent NAME --gate URL --key PATH` processes, each
holding only its agent's key, against a real `opsgate serve` process (the CLI, the
real deploy executor's local backend turned on by opsgate.yaml).

Tools are listed per agent (filtered by its grants); a staging deploy runs; a
production deploy comes back approval_pending with the approval page's URL; it is
approved through the HTTP API; the same call with the approval id runs it and the
release goes live. A refused call carries its stable code, a hidden tool called
anyway is refused and charged; a secret value is in no error text, no audit row and
no line the MCP server printed; every call is one `tool.call` event in the gate's
audit, whose chain verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from helpers import free_port, policy
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from server_helpers import basic
from test_remote_agent import _wait_ready

import opsgate

JOHN = "john@company.com"
VERSION = "4.2.0"
VALUE = "Sw0rdf1sh-stdio-K7"
DEPLOYER = [
    "deploy:staging",
    "deploy:production",
    "read:monitoring/staging",
    "read:secrets/staging",
    "write:secrets/staging",
]
WATCHER = ["read:monitoring/staging"]
#: The CLI as the `opsgate` console script runs it.
CLI = [sys.executable, "-c", "from opsgate.cli import main; main()"]


@dataclass
class Served:
    url: str
    state: Path
    keys: dict[str, Path]
    approver_token: str
    operator_token: str
    artifact: Path
    releases: Path
    agent_env: dict[str, str]
    stderr: Path

    def current(self, env: str) -> str | None:
        link = self.releases / env / "app-web" / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def operator(self) -> dict[str, str]:
        return {"Authorization": basic("ops", self.operator_token)}

    def trust(self, name: str) -> int:
        r = httpx.get(f"{self.url}/v1/trust", headers=self.operator(), timeout=10)
        assert r.status_code == 200, r.text
        return int(next(a["score"] for a in r.json() if a["name"] == name))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    state, releases, artifacts = tmp_path / "state", tmp_path / "releases", tmp_path / "art"
    state.mkdir()
    artifacts.mkdir()
    (state / "opsgate.yaml").write_text(
        json.dumps(
            {
                "policies": str(policy("policies.yaml")),
                "deploy": {"root": str(releases), "artifact_roots": [str(artifacts)]},
            }
        )
    )
    gate = opsgate.Gate.open(state)
    gate.register_agent("mcp-deployer", DEPLOYER, "lead@company.com", 900)
    gate.register_agent("mcp-watcher", WATCHER, "lead@company.com", 900)
    approver_token = gate.approvals.add_approver(JOHN)
    operator_token = gate.operators.add("ops")
    keys = {}
    for name in ("mcp-deployer", "mcp-watcher"):
        keys[name] = tmp_path / "agents" / f"{name}.pem"
        keys[name].parent.mkdir(exist_ok=True)
        gate.agents.export_key(name, keys[name], by="test")
    gate.close()
    artifact = artifacts / f"app-web-{VERSION}.tar"
    artifact.write_bytes(b"release " + VERSION.encode())

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "OPSGATE_STATE_DIR": str(state)},
    )
    try:
        _wait_ready(url, server)
        # The MCP servers get no state dir: only the URL and their agent's key.
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        yield Served(
            url,
            state,
            keys,
            approver_token,
            operator_token,
            artifact,
            releases,
            agent_env,
            tmp_path / "mcp-stderr.txt",
        )
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=15)
    gate = opsgate.Gate.open(state)
    try:
        assert gate.audit.verify().ok
    finally:
        gate.close()


class Mcp:
    """One `opsgate mcp` process and the official client's session with it."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def names(self) -> set[str]:
        return {t.name for t in (await self.session.list_tools()).tools}

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        result = await self.session.call_tool(name, arguments)
        text = result.content[0].text  # type: ignore[union-attr]
        assert result.structuredContent == json.loads(text)
        return bool(result.isError), dict(result.structuredContent or {})


def with_mcp(srv: Served, agent: str, body: Any) -> Any:
    """Spawn `opsgate mcp` for `agent` as an MCP client does, and run `body(Mcp)`."""
    params = StdioServerParameters(
        command=CLI[0],
        args=[
            *CLI[1:],
            "mcp",
            "--agent",
            agent,
            "--gate",
            srv.url,
            "--key",
            str(srv.keys[agent]),
        ],
        env=srv.agent_env,
        cwd=str(srv.keys[agent].parent),
    )
    out: list[Any] = []

    async def main() -> None:
        with srv.stderr.open("a") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                out.append(await body(Mcp(session)))

    anyio.run(main)
    return out[0]


def test_an_llm_agent_deploys_through_opsgate_mcp(served: Served) -> None:
    srv = served
    release = {"app": "app-web", "version": VERSION, "artifact": str(srv.artifact)}

    async def deployer(mcp: Mcp) -> dict[str, Any]:
        seen: dict[str, Any] = {"names": await mcp.names()}
        seen["staging"] = await mcp.call("deploy", {**release, "env": "staging"})
        seen["production"] = await mcp.call("deploy", {**release, "env": "production"})
        return seen

    first = with_mcp(srv, "mcp-deployer", deployer)
    assert first["names"] == {
        "deploy",
        "deployment_status",
        "health",
        "secret_read",
        "secret_write",
        "approval_status",
    }
    failed, staged = first["staging"]
    assert not failed and staged["status"] == "succeeded", staged
    assert srv.current("staging") == VERSION
    failed, pending = first["production"]
    assert not failed and pending["status"] == "approval_pending", pending
    approval_id = pending["approval_id"]
    assert set(pending["approvers"]) == {JOHN, "jane@company.com"}  # the sre-team group
    assert pending["approval_url"] == f"{srv.url}/ui/approvals/{approval_id}"
    assert pending["expires_at"]
    assert srv.current("production") is None  # nothing before the approval

    # The approver decides through the HTTP API.
    r = httpx.post(
        f"{srv.url}/v1/approvals/{approval_id}/approve",
        json={"comment": "ship it"},
        headers={"Authorization": basic(JOHN, srv.approver_token)},
        timeout=30,
    )
    assert r.status_code == 200, r.text

    # A new MCP process (as a client restarts it) resumes by the approval id.
    async def resume(mcp: Mcp) -> dict[str, Any]:
        return {
            "status": await mcp.call("approval_status", {"approval_id": approval_id}),
            "run": await mcp.call(
                "deploy", {**release, "env": "production", "approval_id": approval_id}
            ),
            "again": await mcp.call(
                "deploy", {**release, "env": "production", "approval_id": approval_id}
            ),
            "live": await mcp.call("deployment_status", {"app": "app-web", "env": "staging"}),
        }

    second = with_mcp(srv, "mcp-deployer", resume)
    failed, status = second["status"]
    assert not failed and status["status"] == "approved"
    assert status["approval_url"] == pending["approval_url"]
    failed, ran = second["run"]
    assert not failed and ran["status"] == "succeeded", ran
    assert srv.current("production") == VERSION
    failed, again = second["again"]  # an approval runs once
    assert failed and again["status"] == "refused" and again["code"] == "approval_consumed"
    failed, live = second["live"]
    assert not failed and live["detail"]["current"] == VERSION


def test_refusals_carry_their_code_and_hidden_tools_are_charged(served: Served) -> None:
    srv = served
    before = srv.trust("mcp-watcher")

    async def watcher(mcp: Mcp) -> dict[str, Any]:
        return {
            "names": await mcp.names(),
            "hidden": await mcp.call(
                "deploy", {"app": "app-web", "env": "staging", "version": "9.9.9"}
            ),
            "denied": await mcp.call("deployment_status", {"app": "app-web", "env": "production"}),
            "bad": await mcp.call("health", {"app": "app-web"}),
        }

    seen = with_mcp(srv, "mcp-watcher", watcher)
    assert seen["names"] == {"deployment_status", "health", "approval_status"}
    failed, hidden = seen["hidden"]
    assert failed and hidden["code"] == "tool_not_granted"
    assert srv.current("staging") is None  # nothing ran
    failed, denied = seen["denied"]  # a listed tool outside the agent's grants
    assert failed and denied["code"] == "operation_denied"
    failed, bad = seen["bad"]
    assert failed and bad["code"] == "arguments_invalid" and "'env' is required" in bad["message"]
    assert "Traceback" not in json.dumps(bad)
    assert srv.trust("mcp-watcher") < before  # charged by the gate for both violations


def test_a_secret_value_is_nowhere_but_the_reading_agents_result(served: Served) -> None:
    srv = served

    async def secrets(mcp: Mcp) -> dict[str, Any]:
        return {
            "write": await mcp.call("secret_write", {"path": "staging/db", "value": VALUE}),
            "read": await mcp.call("secret_read", {"path": "staging/db"}),
            "denied": await mcp.call("secret_write", {"path": "production/db", "value": VALUE}),
            "bad": await mcp.call(
                "secret_write", {"path": "staging/db", "value": VALUE, "note": VALUE}
            ),
            "hidden": await mcp.call("secret_rotate", {"path": "staging/db"}),
        }

    seen = with_mcp(srv, "mcp-deployer", secrets)
    failed, wrote = seen["write"]
    assert not failed and wrote["status"] == "succeeded" and VALUE not in json.dumps(wrote)
    failed, read = seen["read"]
    assert not failed and read["detail"]["value"] == VALUE
    for key, code in (
        ("denied", "operation_denied"),
        ("bad", "arguments_invalid"),
        ("hidden", "tool_not_granted"),
    ):
        failed, refused = seen[key]
        assert failed and refused["code"] == code, refused
        assert VALUE not in json.dumps(refused)
    printed = srv.stderr.read_text()
    assert "serving 6 tool(s) as agent mcp-deployer" in printed  # its stderr was captured
    assert VALUE not in printed

    r = httpx.get(
        f"{srv.url}/v1/audit/tail",
        params={"n": 1000, "type": "tool.call"},
        headers=srv.operator(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    calls = r.json()
    assert [c["tool"] for c in calls] == [
        "secret_write",
        "secret_read",
        "secret_write",
        "secret_write",
        "secret_rotate",
    ]
    assert [c["outcome"] for c in calls] == [
        "succeeded",
        "succeeded",
        "refused",
        "invalid",
        "refused",
    ]
    assert VALUE not in r.text
    gate = opsgate.Gate.open(srv.state)
    try:
        assert VALUE not in "\n".join(json.dumps(rec.event) for rec in gate.audit.tail(10_000))
    finally:
        gate.close()


def test_a_local_state_dir_serves_the_same_tools(tmp_path: Path) -> None:
    """`--state-dir` instead of `--gate`: a single user's gate opened by the MCP
    process itself; the same tools, the same gate decisions and audit."""
    state, releases, artifacts = tmp_path / "state", tmp_path / "releases", tmp_path / "art"
    state.mkdir()
    artifacts.mkdir()
    (state / "opsgate.yaml").write_text(
        json.dumps(
            {
                "policies": str(policy("policies.yaml")),
                "deploy": {"root": str(releases), "artifact_roots": [str(artifacts)]},
            }
        )
    )
    gate = opsgate.Gate.open(state)
    gate.register_agent("mcp-deployer", DEPLOYER, "lead@company.com", 900)
    gate.close()
    artifact = artifacts / f"app-web-{VERSION}.tar"
    artifact.write_bytes(b"release " + VERSION.encode())
    params = StdioServerParameters(
        command=CLI[0],
        args=[*CLI[1:], "mcp", "--agent", "mcp-deployer", "--state-dir", str(state)],
        env={k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")},
    )
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with (
            stdio_client(params, errlog=sys.stderr) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            mcp = Mcp(session)
            seen["names"] = await mcp.names()
            release = {"app": "app-web", "version": VERSION, "artifact": str(artifact)}
            seen["staging"] = await mcp.call("deploy", {**release, "env": "staging"})
            seen["production"] = await mcp.call("deploy", {**release, "env": "production"})

    anyio.run(main)
    assert "deploy" in seen["names"] and "secret_rotate" not in seen["names"]
    failed, staged = seen["staging"]
    assert not failed and staged["status"] == "succeeded"
    failed, pending = seen["production"]
    assert not failed and pending["status"] == "approval_pending"
    assert pending["approval_url"] is None  # no server.external_url configured
    link = releases / "staging" / "app-web" / "current"
    assert Path(os.readlink(link)).name == VERSION
    gate = opsgate.Gate.open(state)
    try:
        calls = gate.audit.tail(100, event_type="tool.call")
        assert [c.event["outcome"] for c in calls] == ["succeeded", "approval_pending"]
        assert calls[0].actor == gate.agents.get("mcp-deployer").did
        assert gate.audit.verify().ok
    finally:
        gate.close()


def test_usage_mistakes_are_one_line_on_stderr_and_nothing_on_stdout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    no_key = subprocess.run(
        [*CLI, "mcp", "--agent", "a", "--gate", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert no_key.returncode == 1 and no_key.stdout == ""
    assert "error [key_missing]" in no_key.stderr and "Traceback" not in no_key.stderr
    missing = subprocess.run(
        [*CLI, "mcp", "--agent", "a", "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1 and missing.stdout == ""
    assert "error [" in missing.stderr and "Traceback" not in missing.stderr


def test_a_request_the_sdk_cannot_read_prints_nothing_it_carried(tmp_path: Path) -> None:
    """The MCP SDK logs a request it cannot validate (here `_meta` given as a string, a
    tool name that is no string, a truncated JSON line, a notification it cannot read)
    with pydantic's error, which quotes the input: a secret's value on the MCP host's
    log. `opsgate mcp` writes such a record as its logger and level only, and goes on
    answering."""
    state = tmp_path / "state"
    gate = opsgate.Gate.open(state, policies=policy("policies.yaml"))
    gate.register_agent("mcp-writer", ["write:secrets/staging"], "lead@company.com", 900)
    gate.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    proc = subprocess.Popen(
        [*CLI, "mcp", "--agent", "mcp-writer", "--state-dir", str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    watchdog = threading.Timer(90, proc.kill)  # a hung server fails the test, not the run
    watchdog.start()
    secret = {"path": "staging/db", "value": VALUE}
    call = {"jsonrpc": "2.0", "method": "tools/call"}
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {**call, "id": 2, "params": {"name": "secret_write", "_meta": "x", "arguments": secret}},
        {**call, "id": 3, "params": {"name": 7, "arguments": secret}},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"x": VALUE}},
        json.dumps({**call, "id": 4, "params": {"name": "secret_write", "arguments": secret}})[:-2],
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
    ]
    answers: dict[object, dict[str, Any]] = {}
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        for line in lines:
            proc.stdin.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
            proc.stdin.flush()
        while 5 not in answers:
            out = proc.stdout.readline()
            assert out, "opsgate mcp stopped before answering the valid request"
            assert VALUE not in out
            message = json.loads(out)
            answers[message.get("id")] = message
        proc.stdin.close()
        rest, printed = proc.stdout.read(), proc.stderr.read()
        proc.wait(30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert VALUE not in rest and VALUE not in printed
    assert "input_value" not in printed and "Traceback" not in printed
    assert "message withheld" in printed  # the SDK did log them: withheld, not lost
    for rid in (2, 3):
        assert answers[rid]["error"]["message"] == "Invalid request parameters"
    tools = {t["name"] for t in answers[5]["result"]["tools"]}
    assert tools == {"secret_write", "approval_status"}


def test_a_path_too_long_for_a_capability_is_refused_and_still_recorded(
    served: Served,
) -> None:
    """Over the remote backend a call whose capability would exceed the grammar's limit
    left no `tool.call` event (the record's capability was longer than the endpoint
    took). The tool's path is held to that limit, so the call is `arguments_invalid`
    and, like every call, one `tool.call` event."""
    srv = served
    long_path = "staging/" + "/".join(["s" * 60] * 5)  # 312 characters, 6 segments

    async def reads(mcp: Mcp) -> list[tuple[bool, dict[str, Any]]]:
        return [
            await mcp.call("secret_read", {"path": "staging/db"}),
            await mcp.call("secret_read", {"path": long_path}),
        ]

    (_, first), (failed, refused) = with_mcp(srv, "mcp-deployer", reads)
    assert first["code"] == "secret_not_found"
    assert failed and refused["code"] == "arguments_invalid"
    assert refused["message"] == "argument 'path' is too long"
    assert "not recorded" not in srv.stderr.read_text()
    r = httpx.get(
        f"{srv.url}/v1/audit/tail",
        params={"n": 1000, "type": "tool.call"},
        headers=srv.operator(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert [(c["tool"], c["outcome"], c["code"]) for c in r.json()] == [
        ("secret_read", "failed", "secret_not_found"),
        ("secret_read", "invalid", "arguments_invalid"),
    ]
