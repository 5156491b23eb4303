"""End to end over real HTTP: `opsgate` serving on 127.0.0.1 (uvicorn, its own
process) and an agent in another process that holds only its exported key file:
execute -> pending approval -> approved over HTTP with an approver token ->
resume -> done, and authorize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from helpers import DEPLOY_SCOPE, free_port, policy
from server_helpers import basic

import opsgate

HERE = Path(__file__).parent


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_remote_agent_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gate = opsgate.Gate.open(state, policies=policy("policies.yaml"))
    sup = gate.register_agent("devops-supervisor", DEPLOY_SCOPE, "lead@company.com", 920)
    sup.delegate(name="deploy-agent", capabilities=DEPLOY_SCOPE)
    approver_token = gate.approvals.add_approver("john@company.com")
    gate.close()
    key_file = tmp_path / "agent" / "deploy-agent.pem"
    key_file.parent.mkdir()
    env = {**os.environ, "OPSGATE_STATE_DIR": str(state)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "opsgate.cli",
            "agents",
            "export-key",
            "deploy-agent",
            "-o",
            str(key_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "remote_server.py"),
            str(state),
            str(policy("policies.yaml")),
            str(port),
        ],
    )
    agent = None
    try:
        _wait_ready(url, server)
        # The agent's process gets no state dir: only the URL and its key file.
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        agent = subprocess.Popen(
            [sys.executable, str(HERE / "remote_agent.py"), url, str(key_file)],
            stdout=subprocess.PIPE,
            text=True,
            env=agent_env,
            cwd=tmp_path / "agent",
        )
        assert agent.stdout is not None
        lines = []
        first = json.loads(agent.stdout.readline())
        assert first == {"step": "staging", "status": "succeeded"}
        pending = json.loads(agent.stdout.readline())
        assert pending["status"] == "approval_pending"
        auth = {"Authorization": basic("john@company.com", approver_token)}
        listed = httpx.get(f"{url}/v1/approvals?status=pending", headers=auth).json()
        assert [r["id"] for r in listed] == [pending["approval_id"]]
        r = httpx.post(
            f"{url}/v1/approvals/{pending['approval_id']}/approve",
            json={"comment": "ship it"},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["status"] == "approved"
        for line in agent.stdout:
            lines.append(json.loads(line))
        assert agent.wait(timeout=60) == 0
        assert lines[0] == {"step": "decided", "status": "approved"}
        assert lines[1]["step"] == "resumed" and lines[1]["status"] == "succeeded"
        assert lines[2] == {"step": "authorize", "effect": "allow"}
        # The approval ran once: a second resume over HTTP is refused.
        assert httpx.get(f"{url}/healthz").json() == {"status": "alive"}
    finally:
        for proc in (agent, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
    gate = opsgate.Gate.open(state)
    try:
        assert gate.approvals.get(pending["approval_id"]).status == "consumed"
        assert gate.audit.verify().ok
        exported = [r.event for r in gate.audit.tail(1000, event_type="agent.key_exported")]
        assert len(exported) == 1 and "BEGIN" not in json.dumps(exported)
    finally:
        gate.close()
