"""The same `opsgate.agents` code over HTTP: a real `opsgate serve` process (deploys
into a local root, health by command, the example policy) and the deploy-agent in
another process holding only its exported key. The task runs step by step; the
approval step waits while an SRE approves over the HTTP approval API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from helpers import free_port
from server_helpers import basic

import opsgate
from opsgate.agents import SEED_SCOPES

HERE = Path(__file__).parent
POLICIES = HERE.parents[1] / "examples" / "policies.yaml"


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


def test_the_deploy_agent_runs_its_task_over_http(tmp_path: Path) -> None:
    state = tmp_path / "state"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    artifact = artifacts / "app-2.0.tar"
    artifact.write_bytes(b"app release 2.0\n")
    health = {"command": ["/bin/true"], "interval_seconds": 0.05, "deadline_seconds": 5}
    state.mkdir()
    (state / "opsgate.yaml").write_text(
        json.dumps(
            {
                "policies": str(POLICIES),
                "deploy": {
                    "root": str(tmp_path / "deployments"),
                    "artifact_roots": [str(artifacts)],
                    "apps": {"app": {"health": {"staging": health, "production": health}}},
                },
            }
        )
    )
    gate = opsgate.Gate.open(state)
    sup = gate.register_agent(
        "devops-supervisor", SEED_SCOPES["deploy-agent"], "platform-team@company.com", 920
    )
    agent = sup.delegate(name="deploy-agent", capabilities=SEED_SCOPES["deploy-agent"])
    approver_token = gate.approvals.add_approver("john@company.com")
    gate.close()
    key_file = tmp_path / "agent" / "deploy-agent.pem"
    key_file.parent.mkdir()
    env = {**os.environ, "OPSGATE_STATE_DIR": str(state)}
    exported = subprocess.run(
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
    assert exported.returncode == 0, exported.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsgate.cli",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(state),
        ],
        env=env,
    )
    child = None
    try:
        _wait_ready(url, server)
        # The agent's process gets no state dir: only the URL, its key file, the artifact path.
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
        child = subprocess.Popen(
            [sys.executable, str(HERE / "agents_child.py"), url, str(key_file), str(artifact)],
            stdout=subprocess.PIPE,
            text=True,
            env=agent_env,
            cwd=key_file.parent,
        )
        assert child.stdout is not None
        steps = []
        for line in child.stdout:
            event = json.loads(line)
            if "result" in event:
                result = event
                break
            steps.append(event)
            if (event["step"], event["status"]) == ("approval", "waiting"):
                approval_id = event["data"]["approval_id"]
                r = httpx.post(
                    f"{url}/v1/approvals/{approval_id}/approve",
                    json={"comment": "ship it"},
                    headers={"Authorization": basic("john@company.com", approver_token)},
                )
                assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        assert child.wait(timeout=60) == 0
    finally:
        for proc in (child, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
    assert result == {"result": "succeeded", "did": agent.did}
    assert [(s["step"], s["status"]) for s in steps] == [
        ("credential", "done"),
        ("staging", "done"),
        ("approval", "requested"),
        ("approval", "waiting"),
        ("approval", "approved"),
        ("production", "done"),
        ("health", "done"),
        ("trust", "done"),
    ]
    assert steps[0]["message"] == "credentials issued (TTL 15 min)"
    assert steps[4]["data"]["approved_by"] == ["john@company.com"]
    assert steps[6]["data"]["health"]["status"] == "passed"
    current = tmp_path / "deployments" / "production" / "app" / "current"
    assert Path(str(current.readlink())).name == "2.0"
    gate = opsgate.Gate.open(state)
    try:
        assert gate.approvals.get(steps[2]["data"]["approval_id"]).status == "consumed"
        outcomes = [r for r in gate.audit.tail(50, event_type="operation.outcome")]
        assert [(r.actor, r.event["capability"], r.event["outcome"]) for r in outcomes] == [
            (agent.did, "deploy:staging/app", "succeeded"),
            (agent.did, "deploy:production/app", "succeeded"),
        ]
        assert gate.audit.verify().ok
    finally:
        gate.close()
