"""`opsgate serve --workers N`: several processes on one port and one state dir.

Each worker is a replica on the shared database: a real server process tree, agents
over HTTP with their own keys, and what must hold across the processes (every
decision audited once in one chain, a revocation through one worker refused by the
other, no proof accepted twice, every process stopped with the parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port

import opsgate
from opsgate.client import RemoteGate
from opsgate.credentials.proof import ProofRequest
from opsgate.identity import keys
from opsgate.server.dpop import make_dpop

POLICY = """\
policies:
  - name: approve-production-deployments
    rules:
      - condition: "action == 'deploy' and environment == 'production'"
        action: require_approval
        approvers: ["sre-team@company.com"]
groups:
  sre-team@company.com: [john@company.com]
"""
SERVE = [sys.executable, "-m", "opsgate.cli"]
AGENTS = 6
PER_AGENT = 30


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()[-60:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One server for the module (each test uses agents of its own; stopping it is
    the last test)."""
    state, agent_keys = _new_state(tmp_path_factory.mktemp("workers"), AGENTS)
    server, url = _start(state, 2)
    try:
        yield state, url, agent_keys, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _workers(parent: int) -> list[int]:
    """The parent's worker processes (not multiprocessing's resource tracker)."""
    out = []
    for pid in _children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.spawn" in cmdline or b"spawn_main" in cmdline:
            out.append(pid)
    return out


def test_two_workers_share_the_load_and_one_audit_chain(served) -> None:  # type: ignore[no-untyped-def]
    state, url, agent_keys, server = served
    workers = _workers(server.pid)
    assert len(workers) == 2
    cpu_before = {pid: _cpu_seconds(pid) for pid in workers}
    failures: list[str] = []

    def agent(key: keys.Ed25519PrivateKey) -> None:
        with RemoteGate(url, key) as remote:
            cred = remote.credential(["deploy:staging"])
            for _ in range(PER_AGENT):
                # A fresh connection per request: the kernel hands it to either worker.
                remote._http.close()
                remote._http = httpx.Client(base_url=url, timeout=30)
                decision = remote.authorize(cred, "deploy:staging/app-web")
                if decision.effect != "allow":
                    failures.append(decision.effect)

    threads = [threading.Thread(target=agent, args=(k,)) for k in agent_keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    # Both processes did the work, not one of them: each burnt a fair part of the CPU
    # the requests took (an idle worker's background threads burn a few per cent).
    spent = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in workers}
    for pid in workers:
        assert spent[pid] > 0.15 * sum(spent.values()), f"a worker took no requests: {spent}"
    with opsgate.Gate.open(state, create=False) as gate:
        report = gate.audit.verify()
        authorizes = [r for r in gate.audit.events(event_type="authorize")]
    assert report.ok, report
    assert len(authorizes) == AGENTS * PER_AGENT
    assert sorted(r.seq for r in authorizes) == sorted({r.seq for r in authorizes})


def test_a_revocation_through_one_worker_holds_on_the_other(served) -> None:  # type: ignore[no-untyped-def]
    _state, url, agent_keys, _server = served
    with RemoteGate(url, agent_keys[0]) as remote:
        cred = remote.credential(["deploy:staging"])
        assert remote.authorize(cred, "deploy:staging/app-web").effect == "allow"
        token = cred.token
        remote._send("POST", "/v1/credentials/revoke", token, None, {})
    time.sleep(1.0)
    # Twenty fresh connections, spread over both workers: each refuses the revoked token.
    codes = set()
    for _ in range(20):
        proof = make_dpop(
            agent_keys[0],
            method="POST",
            url=url + "/v1/authorize",
            token=token,
            request=ProofRequest.authorize("deploy:staging/app-web", None),
            now=time.time(),
        )
        r = httpx.post(
            url + "/v1/authorize",
            json={"capability": "deploy:staging/app-web"},
            headers={"Authorization": f"DPoP {token}", "DPoP": proof, "Connection": "close"},
        )
        assert r.status_code == 401, r.text
        codes.add(r.json()["code"])
    assert codes == {"revoked"}


def test_a_proof_is_accepted_once_across_workers(served) -> None:  # type: ignore[no-untyped-def]
    _state, url, agent_keys, _server = served
    with RemoteGate(url, agent_keys[1]) as remote:
        token = remote.credential(["deploy:staging"]).token
    proof = make_dpop(
        agent_keys[1],
        method="POST",
        url=url + "/v1/authorize",
        token=token,
        request=ProofRequest.authorize("deploy:staging/app-web", None),
        now=time.time(),
    )
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        r = httpx.post(
            url + "/v1/authorize",
            json={"capability": "deploy:staging/app-web"},
            headers={"Authorization": f"DPoP {token}", "DPoP": proof, "Connection": "close"},
        )
        with lock:
            statuses.append(r.status_code)

    # Four at once (each replay costs the agent 150 of its 1000: it stays active).
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [200, 401, 401, 401]


def test_stopping_the_parent_stops_every_worker(served) -> None:  # type: ignore[no-untyped-def]
    _state, _url, _keys, server = served
    workers = _workers(server.pid)
    assert len(workers) == 2
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)


def test_workers_out_of_range_are_a_usage_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    opsgate.Gate.open(state).close()
    for bad in ("0", "-1", "65", "two"):
        r = subprocess.run(
            [
                *SERVE,
                "--state-dir",
                str(state),
                "serve",
                "--port",
                str(free_port()),
                "--workers",
                bad,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (bad, r.stderr)
        assert "--workers" in r.stderr and "Traceback" not in r.stderr


def _start(state: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    proc = subprocess.Popen(
        [
            *SERVE,
            "--state-dir",
            str(state),
            "serve",
            "--port",
            str(port),
            "--workers",
            f"{workers}",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.1)
    if workers > 1:
        while len(_workers(proc.pid)) < workers:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
    return proc, url


def _new_state(
    parent: Path, count: int = 1, capabilities: tuple[str, ...] = ("deploy:staging",)
) -> tuple[Path, list[keys.Ed25519PrivateKey]]:
    """A state dir with the policy and `count` agents (w-0, w-1, ...) holding their own
    keys; the keys."""
    state = parent / "state"
    state.mkdir(mode=0o700)
    (state / "policies.yaml").write_text(POLICY, encoding="utf-8")
    (state / "opsgate.yaml").write_text("policies: policies.yaml\n", encoding="utf-8")
    agent_keys = []
    with opsgate.Gate.open(state) as gate:
        for i in range(count):
            key = keys.generate()
            gate.register_agent(
                f"w-{i}",
                list(capabilities),
                sponsor="app-owner@company.com",
                trust_score=1000,
                did=keys.did_from_public_key(key.public_key()),
            )
            agent_keys.append(key)
    return state, agent_keys


BOTH = ("deploy:staging", "deploy:production")


def test_a_worker_restarted_after_a_policy_edit_stops_the_server_not_the_policy(
    tmp_path: Path,
) -> None:
    """A worker that dies is started again; the policy files were edited meanwhile (an
    unreviewed edit, not yet put in force by a restart). The new worker must not load
    and publish them: it refuses (policies_changed) and the server stops, exit 1, with
    the policies it started with still the ones in force."""
    state, (key,) = _new_state(tmp_path, 1, BOTH)
    with opsgate.Gate.open(state, create=False) as gate:
        before = gate.policy_status()
    proc, url = _start(state, 2)
    try:
        with RemoteGate(url, key) as remote:
            cred = remote.credential(["deploy:production"])
            decision = remote.authorize(cred, "deploy:production/app-web")
            assert decision.effect == "require_approval"
        (state / "policies.yaml").write_text("policies: []\n", encoding="utf-8")
        os.kill(_workers(proc.pid)[0], signal.SIGKILL)
        code = proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 1, err
    assert "policies_changed" in err and "Traceback" not in err
    (state / "policies.yaml").write_text(POLICY, encoding="utf-8")
    with opsgate.Gate.open(state, create=False, publish_policies=False) as gate:
        assert gate.policy_status()["in_force"] == before["in_force"]
        loaded = [r.event for r in gate.audit.events(event_type="policy.loaded")]
    assert len({e["digest"] for e in loaded}) == 1  # never another digest published


def test_sigterm_to_one_process_closes_the_gate_first(tmp_path: Path) -> None:
    """systemd and Kubernetes stop a service with SIGTERM: the gate closes before the
    process ends (its unsigned tail signed), with one worker as with several."""
    state, (key,) = _new_state(tmp_path, 1, BOTH)
    for workers in (1, 2):
        proc, url = _start(state, workers)
        with RemoteGate(url, key) as remote:
            cred = remote.credential(["deploy:staging"])
            assert remote.authorize(cred, "deploy:staging/app-web").effect == "allow"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        with opsgate.Gate.open(state, create=False) as gate:
            report = gate.audit.verify()
            assert report.ok and report.unsigned_events == 0, (workers, report)
