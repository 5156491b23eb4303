"""Deploys in real processes: one killed with SIGKILL at each step is repaired from its
journal on the next start (or by the next deploy of the app); two racing for one app
get one deploy and one `deploy_locked` naming the holder; a gate opening beside a live
deploy leaves it alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_world import FAST, SCOPE, SPONSOR, HealthServer, wait_for
from helpers import audit_events

import opsgate
from opsgate.operations.deploy import LocalDeployExecutor

CHILD = Path(__file__).parent / "deploy_child.py"


@dataclass
class Site:
    """A state dir, a deploy root, artifacts and a token, shared by every process."""

    tmp: Path
    database_url: str | None
    health: HealthServer
    apps: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def root(self) -> Path:
        return self.tmp / "deployments"

    @property
    def artifacts(self) -> Path:
        return self.tmp / "artifacts"

    def open(self) -> tuple[opsgate.Gate, LocalDeployExecutor]:
        gate = opsgate.Gate.open(self.state, database_url=self.database_url)
        executor = LocalDeployExecutor(self.root, artifact_roots=[self.artifacts], apps=self.apps)
        gate.register_executor("deploy", executor)
        return gate, executor

    def artifact(self, version: str, size: int = 16) -> str:
        path = self.artifacts / f"web-{version}"
        path.mkdir(exist_ok=True)
        (path / "app.bin").write_bytes(version.encode() * max(1, size // len(version)))
        return str(path)

    def spawn(self, version: str, **spec: Any) -> subprocess.Popen[str]:
        full = {
            "state": str(self.state),
            "database_url": self.database_url,
            "root": str(self.root),
            "artifacts": str(self.artifacts),
            "apps": self.apps,
            "token_file": str(self.tmp / "token"),
            "artifact": self.artifact(version, spec.pop("size", 16)),
            **spec,
        }
        path = self.tmp / f"spec-{version}.json"
        path.write_text(json.dumps(full))
        return subprocess.Popen(
            [sys.executable, str(CHILD), str(path), "staging", version],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def current(self) -> str | None:
        link = self.root / "staging/web/current"
        return Path(str(link.readlink())).name if link.is_symlink() else None


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from _site(tmp_path, None)


def _site(tmp_path: Path, database_url: str | None) -> Iterator[Site]:
    server = HealthServer()
    check = {"url": server.url, **FAST, "timeout_seconds": 1.0, "deadline_seconds": 20}
    s = Site(tmp_path, database_url, server, {"web": {"health": {"staging": check}}})
    s.artifacts.mkdir()
    gate, _ = s.open()
    try:
        agent = gate.register_agent("deployer", SCOPE, sponsor=SPONSOR, trust_score=900)
        token = gate.credential_manager.issue_credential(agent.did, SCOPE).token
        (tmp_path / "token").write_text(token)
        os.chmod(tmp_path / "token", 0o600)
    finally:
        gate.close()
    # Release 1 is live before each test.
    assert result(s.spawn("1"))["status"] == "succeeded"
    try:
        yield s
    finally:
        server.close()


def _running_phase(executor: LocalDeployExecutor) -> str | None:
    rows = executor.ledger.running("staging", "web")
    return rows[0].phase if rows else None


@pytest.mark.parametrize("step", ["copy", "switch"])
def test_a_deploy_killed_before_or_at_the_switch_is_repaired_on_the_next_start(
    site: Site, step: str
) -> None:
    """Killed while copying (a partial release on disk) or between the journal entry and
    the switch: the next start cleans up and leaves release 1 live."""
    paused = site.tmp / "paused"
    proc = site.spawn("2", pause_at=step, pause_file=str(paused), size=4 * 1024 * 1024)
    wait_for(paused.exists, 30, f"the child to reach {step}")
    kill(proc)
    gate, executor = site.open()  # the next start: registering the executor recovers
    try:
        assert site.current() == "1"
        assert not [p for p in (site.root / "staging/web/releases").iterdir() if p.name[0] == "."]
        (event,) = audit_events(gate, "operation.recovered")
        assert event["capability"] == "deploy:staging/web" and event["version"] == "2"
        assert event["phase"] == ("copy" if step == "copy" else "switching")
        record = executor.history("staging", "web", limit=1)[0]
        assert record.status == "interrupted"
        assert executor.locks() == []
        assert executor.status("staging", "web").current == "1"
    finally:
        gate.close()


def test_a_deploy_killed_during_its_health_check_is_switched_back(site: Site) -> None:
    site.health.script("hang")  # the new release never answers
    proc = site.spawn("2")
    gate, executor = site.open()
    try:
        wait_for(lambda: _running_phase(executor) == "health", 30, "the health check")
        wait_for(lambda: site.health.requests > 0, 30, "a probe")
        assert site.current() == "2"  # switched, not yet healthy
        kill(proc)
    finally:
        gate.close()
    site.health.script(200)
    gate, executor = site.open()
    try:
        assert site.current() == "1"
        (event,) = audit_events(gate, "operation.recovered")
        assert event["phase"] == "health" and "restored 1" in event["summary"]
        # The killed run's attempt is in the audit; the recovery closes its story.
        attempts = [e for e in audit_events(gate, "operation.attempt") if "rollback" not in e]
        assert len(attempts) == 2
        assert executor.ledger.staged("staging", "web", "2", None) is None
    finally:
        gate.close()


def test_the_next_deploy_repairs_a_killed_one_without_a_restart(site: Site) -> None:
    gate, executor = site.open()  # opened before the kill: nothing to recover yet
    try:
        paused = site.tmp / "paused"
        proc = site.spawn("2", pause_at="health", pause_file=str(paused))
        wait_for(paused.exists, 30, "the child to reach the health check")
        assert site.current() == "2"
        kill(proc)
        token = (site.tmp / "token").read_text()
        op = opsgate.Operation(
            "deploy", "staging/web", {"version": "3", "artifact": site.artifact("3")}
        )
        outcome = gate.execute(token, op)
        assert outcome.status == "succeeded"
        assert site.current() == "3"
        assert outcome.detail["previous"] == "1"  # not 2, which never passed its check
        event = audit_events(gate, "operation.outcome")[-1]
        assert event["detail"]["recovered"][0]["version"] == "2"
        assert [r.status for r in executor.history("staging", "web", limit=3)] == [
            "succeeded",
            "interrupted",
            "succeeded",
        ]
    finally:
        gate.close()


def test_a_gate_opening_beside_a_live_deploy_leaves_it_alone(site: Site) -> None:
    paused, resume = site.tmp / "paused", site.tmp / "resume"
    proc = site.spawn("2", pause_at="health", pause_file=str(paused), resume_file=str(resume))
    wait_for(paused.exists, 30, "the child to reach the health check")
    gate, executor = site.open()
    try:
        assert audit_events(gate, "operation.recovered") == []
        assert site.current() == "2"
        status = executor.status("staging", "web")
        assert status.lock is not None and not status.lock_stale
        assert status.lock.pid == proc.pid and status.lock.holder_name == "deployer"
        resume.write_text("go")
        assert result(proc)["status"] == "succeeded"
        assert site.current() == "2"
        assert executor.locks() == []
    finally:
        gate.close()


def _race(site: Site) -> None:
    site.health.script("hang", "hang", "hang", 200)  # the winner holds the lock ~3 s
    go = site.tmp / "go"
    procs = [site.spawn(v, go_file=str(go)) for v in ("2", "3")]
    go.write_text("go")
    results = [result(p) for p in procs]
    by_status = sorted(r["status"] for r in results)
    assert by_status == ["error", "succeeded"], results
    loser = next(r for r in results if r["status"] == "error")
    winner = next(p for p, r in zip(procs, results, strict=True) if r["status"] == "succeeded")
    assert loser["code"] == "deploy_locked"
    assert loser["holder"]["holder_name"] == "deployer"
    assert loser["holder"]["pid"] == winner.pid
    assert "deployer" in loser["summary"]
    gate, executor = site.open()
    try:
        assert executor.locks() == []
        assert [r.status for r in executor.history("staging", "web")][:1] == ["succeeded"]
        refused = [e for e in audit_events(gate, "operation.outcome") if e["outcome"] == "refused"]
        assert len(refused) == 1 and refused[0]["code"] == "deploy_locked"
    finally:
        gate.close()


def test_two_processes_racing_for_one_app_get_one_deploy_and_one_refusal(site: Site) -> None:
    _race(site)


@pytest.mark.postgres
def test_the_race_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    for s in _site(tmp_path, pg_url):
        _race(s)
