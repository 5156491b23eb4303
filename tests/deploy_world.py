"""A gate with the deploy executor, an agent that deploys and rolls back, artifacts, and
a real HTTP health endpoint (a server on 127.0.0.1 in a thread) whose answers a test
scripts: a status code, `hang` (answers after the probe gave up) or `down` (closed).
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import opsgate
from opsgate.operations.base import Operation, Outcome
from opsgate.operations.deploy import DeployExecutor, LocalDeployExecutor

SPONSOR = "platform-lead@company.com"
SCOPE = [
    "deploy:staging",
    "deploy:production",
    "rollback:staging",
    "rollback:production",
]
#: Fast health settings for tests (real probes, short waits).
FAST = {
    "interval_seconds": 0.02,
    "timeout_seconds": 0.3,
    "failure_threshold": 2,
    "successes": 1,
    "deadline_seconds": 1.5,
}


class HealthServer:
    """A real HTTP server answering from a script: each request takes the next answer,
    the last one repeats. An answer is a status code or "hang"."""

    def __init__(self) -> None:
        self.answers: list[int | str] = [200]
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    i = min(server.requests, len(server.answers) - 1)
                    answer = server.answers[i]
                    server.requests += 1
                if answer == "hang":
                    server._stop.wait(2.0)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/healthz"

    def script(self, *answers: int | str) -> None:
        with self._lock:
            self.answers = list(answers)
            self.requests = 0

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on a loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/healthz"


@dataclass
class World:
    gate: opsgate.Gate
    executor: DeployExecutor
    agent: opsgate.Agent
    token: str
    tmp: Path
    artifacts: Path
    deployments: Path
    health: HealthServer
    events: list[Any] = field(default_factory=list)

    def artifact(self, name: str, content: str | bytes) -> str:
        path = self.artifacts / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def deploy(self, env: str, version: str, artifact: str | None = None, **params: Any) -> Any:
        artifact = artifact or self.artifact(f"web-{version}.tar", f"web {version}")
        op = Operation("deploy", f"{env}/web", {"version": version, "artifact": artifact, **params})
        return self.gate.execute(self.token, op)

    def promote(self, version: str, artifact: str | None = None) -> Outcome:
        """Staging, then production, with the same artifact."""
        artifact = artifact or self.artifact(f"web-{version}.tar", f"web {version}")
        staged = self.deploy("staging", version, artifact)
        assert staged.status == "succeeded", staged.summary
        out = self.deploy("production", version, artifact)
        assert isinstance(out, Outcome)
        return out

    def rollback(self, env: str, **params: Any) -> Any:
        return self.gate.execute(self.token, Operation("rollback", f"{env}/web", params))

    def current(self, env: str, app: str = "web") -> str | None:
        link = self.deployments / env / app / "current"
        if not link.is_symlink():
            return None
        return Path(str(link.readlink())).name

    def on_disk(self, env: str, app: str = "web") -> list[str]:
        releases = self.deployments / env / app / "releases"
        return sorted(p.name for p in releases.iterdir()) if releases.exists() else []


@contextmanager
def deploy_world(
    tmp: Path,
    *,
    health: dict[str, Any] | None = None,
    apps: dict[str, Any] | None = None,
    trust: int = 900,
    policies: str | Path | None = None,
    **settings: Any,
) -> Iterator[World]:
    """`health`: extra settings of an HTTP health check on the world's server for `web`
    in staging and production (None: no health check)."""
    server = HealthServer()
    artifacts = tmp / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    if apps is None:
        apps = {}
        if health is not None:
            check = {"url": server.url, **FAST, **health}
            apps = {"web": {"health": {"staging": check, "production": check}}}
    executor = LocalDeployExecutor(
        tmp / "deployments", artifact_roots=[artifacts], apps=apps, **settings
    )
    world_events: list[Any] = []
    executor.progress = world_events.append
    gate = opsgate.Gate.open(tmp / "state", policies=policies)
    try:
        gate.register_executor("deploy", executor)
        gate.register_executor("rollback", executor.rollback)
        agent = gate.register_agent("deployer", SCOPE, sponsor=SPONSOR, trust_score=trust)
        token = gate.credential_manager.issue_credential(agent.did, SCOPE).token
        yield World(
            gate,
            executor,
            agent,
            token,
            tmp,
            artifacts,
            tmp / "deployments",
            server,
            world_events,
        )
    finally:
        gate.close()
        server.close()


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
