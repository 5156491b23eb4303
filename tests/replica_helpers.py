"""Two `opsgate serve` replicas on one PostgreSQL database, each in its own process
with its own copy of the gate's state dir (pin and keys), behind one external URL.

`Balancer` is the load balancer in front of them, as an httpx transport: requests
go to the replicas in turn, or to the one a thread pinned, whatever URL the
agent called (the replicas never look at the Host header). Agents hold only
their own key files, generated on their side and registered by did.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import free_port, policy

import opsgate
from opsgate.identity import keys

HERE = Path(__file__).parent
SERVER = HERE / "integration" / "replica_server.py"
EXTERNAL = "http://gate.replicas.test"
DEPLOY_SCOPE = ["deploy:staging", "deploy:production"]
APPROVER = "john@company.com"


class Balancer(httpx.BaseTransport):
    """Round-robin over `backends` (host, port); a thread may pin one with `pinned(i)`."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._inner = httpx.HTTPTransport()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextlib.contextmanager
    def pinned(self, index: int) -> Iterator[None]:
        before = getattr(self._local, "index", None)
        self._local.index = index
        try:
            yield
        finally:
            self._local.index = before

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        index = getattr(self._local, "index", None)
        if index is None:
            with self._lock:
                index = next(self._turn) % len(self.backends)
        host, port = self.backends[index]
        request.url = request.url.copy_with(scheme="http", host=host, port=port)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclass
class Replicas:
    """The running replicas and what the test set up before starting them."""

    state_dirs: list[Path]
    urls: list[str]
    database_url: str
    operator_token: str
    approver_token: str
    agent_keys: dict[str, Path]  # agent name -> its key file (the agent's side)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def backends(self) -> list[tuple[str, int]]:
        return [(httpx.URL(u).host, httpx.URL(u).port or 80) for u in self.urls]

    def balancer(self) -> Balancer:
        return Balancer(self.backends)

    def open_gate(self) -> opsgate.Gate:
        """A third replica, in this process, for checking what the database holds."""
        return opsgate.Gate.open(self.state_dirs[0])


def write_config(state_dir: Path, database_url: str, **server: Any) -> None:
    state_dir.mkdir(parents=True, mode=0o700)
    config = {
        "database_url": database_url,
        "policies": str(policy("policies.yaml")),
        "server": {"external_url": EXTERNAL, **server},
    }
    (state_dir / "opsgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "replica exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("replica did not become ready")


@contextlib.contextmanager
def run_replicas(
    root: Path, database_url: str, agents: list[str], *, count: int = 2, **server: Any
) -> Iterator[Replicas]:
    """Create the gate, register `agents` (trust 1000, keys of their own), an approver
    and an operator, copy the state dir for each further replica and start them."""
    first = root / "replica-0"
    write_config(first, database_url, **server)
    gate = opsgate.Gate.open(first)
    agent_keys: dict[str, Path] = {}
    try:
        for name in agents:
            key = keys.generate()
            path = root / "agents" / f"{name}.pem"
            keys.write_private_key(path, key)
            gate.register_agent(
                name,
                DEPLOY_SCOPE,
                sponsor="app-owner@company.com",
                trust_score=1000,
                did=keys.did_from_public_key(key.public_key()),
            )
            agent_keys[name] = path
        approver_token = gate.approvals.add_approver(APPROVER)
        operator_token = gate.operators.add("ops")
    finally:
        gate.close()
    state_dirs = [first]
    for i in range(1, count):
        copy = root / f"replica-{i}"
        shutil.copytree(first, copy)
        state_dirs.append(copy)
    replicas = Replicas(
        state_dirs=state_dirs,
        urls=[],
        database_url=database_url,
        operator_token=operator_token,
        approver_token=approver_token,
        agent_keys=agent_keys,
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    try:
        for state_dir in state_dirs:
            port = free_port()
            replicas.urls.append(f"http://127.0.0.1:{port}")
            replicas.procs.append(
                subprocess.Popen([sys.executable, str(SERVER), str(state_dir), str(port)], env=env)
            )
        for url, proc in zip(replicas.urls, replicas.procs, strict=True):
            _wait_ready(url, proc)
        yield replicas
    finally:
        for proc in replicas.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in replicas.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
