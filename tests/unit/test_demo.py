"""`python main.py`: the quick-start runs offline in seconds, tells the seed's story with
real work behind every line (checked here from the state it leaves, not from its words
alone), keeps what it did for the CLI to inspect (the commands it prints work as
printed), `--json` prints the same story as structured events, and `--clean` leaves
nothing behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import opsgate
from opsgate.cli import app

ROOT = Path(__file__).resolve().parents[2]
SECRET_PATH = "staging/app/database-password"
INITIAL = "initial-" + "x" * 24


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("OPSGATE_STATE_DIR", None)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # runs from anywhere, not only the repository root
        env=env,
        timeout=120,
    )
    return proc, time.monotonic() - start


def _demo_dirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("opsgate-demo-*"))


def _current(workdir: Path, env: str, app_name: str) -> str | None:
    link = workdir / "deployments" / env / app_name / "current"
    return Path(str(link.readlink())).name if link.is_symlink() else None


def _check_the_story(workdir: Path, out: str) -> None:
    """What the demo said happened, read back from the state it left."""
    gate = opsgate.Gate.open(workdir / "state", create=False)
    try:
        did = {a.name: a.did for a in gate.agents.list()}
        # Secrets: written and rotated (two versions), the values never printed or audited.
        latest = gate.secrets.backend.get("secrets/" + SECRET_PATH)
        assert latest.version == 2
        values = [
            latest.value.reveal(),
            gate.secrets.backend.get("secrets/" + SECRET_PATH, 1).value.reveal(),
        ]
        assert values[1] == INITIAL and values[0] != INITIAL
        audit_text = json.dumps([r.event for r in gate.audit.events()])
        for value in values:
            assert value not in out and value not in audit_text
        # Migrations: V1 applied, V2 (destructive) waits for the DBA group.
        with sqlite3.connect(workdir / "orders.db") as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"orders", "legacy_orders"} <= tables
        pending = gate.approvals.list(status="pending")
        [dba] = [r for r in pending if r.capability == "migrate:database/orders"]
        assert dba.approvers == ("dana@company.com",)
        assert dba.requester_did == did["database-agent"]
        # The deployment task: staging then production, approved by john, health checked.
        assert _current(workdir, "production", "app") == "2.0"
        [prod] = [
            r
            for r in gate.approvals.list(status="consumed")
            if r.capability == "deploy:production/app"
        ]
        assert [d.approver for d in prod.decisions] == ["john@company.com"]
        assert prod.requester_did == did["deploy-agent"]
        outcomes = [
            (r.actor, r.event["capability"], r.event["outcome"])
            for r in gate.audit.events(event_type="operation.outcome")
        ]
        assert (did["deploy-agent"], "deploy:production/app", "succeeded") in outcomes
        # Monitoring: a health read, and a refused deploy charged to the monitoring agent.
        assert (did["monitoring-agent"], "read:monitoring/staging/app", "succeeded") in outcomes
        denied = [
            r.event["capability"]
            for r in gate.audit.events(event_type="operation.denied")
            if r.actor == did["monitoring-agent"]
        ]
        assert denied == ["deploy:production/app"]
        history = gate.trust.history(did["monitoring-agent"])
        assert history[-1].cause == "policy_violation"
        # The failed health check: 2.1 failed in staging and 2.0 is live again.
        assert (did["deploy-agent"], "deploy:staging/app", "failed") in outcomes
        assert _current(workdir, "staging", "app") == "2.0"
        assert gate.trust.history(did["deploy-agent"])[-1].cause == "failed_deployment"
        # The trust change the task reported is the one the gate stored.
        shown = re.findall(r"trust score updated: (\d+) → (\d+)", out)
        assert shown and int(shown[0][1]) - int(shown[0][0]) == 10
        # `audit verify: OK (N events)`, and N is what the log holds.
        [count] = re.findall(r"audit verify: OK \((\d+) events\)", out)
        assert int(count) == gate.audit.count()
        assert gate.audit.verify().ok
    finally:
        gate.close()


def test_the_demo_tells_the_story_keeps_its_state_and_the_commands_it_prints_work(
    tmp_path: Path,
) -> None:
    proc, elapsed = _demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 15, elapsed
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    # Section titles are whole at the 80 columns a pipe gets, not cut with an ellipsis.
    assert not [line for line in out.splitlines() if "─" in line and "…" in line]
    for line in (
        "local stand-in",
        "(self_approval)",
        "a second run of the same approval is refused (approval_consumed)",
        "Deployment Task: Deploy app-v2.0 to production",
        "credentials issued (TTL 15 min)",
        "approval requested from jane@company.com, john@company.com",
        "waiting for approval",
        "approved by john@company.com",
        "the demo's stand-in approver",
        "deployment successful, health checked",
        "approval requested from dana@company.com",
        "refused: operation_denied",
        "health check failed: rolled back to 2.0",
        "audit verify: OK (",
    ):
        assert line in out, line
    # The deploy task's steps come in the seed's order.
    order = [
        "credentials issued (TTL 15 min)",
        "app 2.0 is live in staging",
        "approval requested from jane",
        "waiting for approval",
        "approved by john@company.com",
        "app 2.0 is live in production",
        "deployment successful, health checked",
        "trust score updated",
    ]
    task = out[out.index("Deployment Task") :]
    positions = [task.index(s) for s in order]
    assert positions == sorted(positions)
    [workdir] = _demo_dirs(tmp_path)
    assert (workdir / "state" / "opsgate.db").is_file()
    assert (workdir / "audit-anchor.json").is_file()
    releases = workdir / "deployments" / "production" / "app-web" / "releases" / "2.0"
    assert releases.is_dir()  # the stand-in deploy, where the demo said
    assert str(workdir / "deployments") in out
    _check_the_story(workdir, out)

    commands = [line.strip() for line in out.splitlines() if line.startswith("  opsgate ")]
    exports = [line.strip() for line in out.splitlines() if "export OPSGATE_STATE_DIR=" in line]
    assert len(commands) >= 4 and len(exports) == 1
    state = exports[0].split("=", 1)[1]
    assert Path(state) == workdir / "state"
    runner = CliRunner()
    for command in commands:
        args = shlex.split(command)[1:]
        result = runner.invoke(app, args, env={"OPSGATE_STATE_DIR": state})
        assert result.exit_code == 0, (command, result.stderr)
        assert result.stdout.strip(), command
    verify = runner.invoke(
        app,
        ["audit", "verify", "--anchor", str(workdir / "audit-anchor.json")],
        env={"OPSGATE_STATE_DIR": state},
    )
    assert "intact" in verify.stdout and "the anchor" in verify.stdout
    # the demo's policies and approvers came along: the CLI sees the same gate
    explain = runner.invoke(
        app,
        ["policy", "explain", "--action", "deploy", "--resource", "production/app-web"],
        env={"OPSGATE_STATE_DIR": state},
    )
    assert explain.exit_code == 0 and "require_approval" in explain.stdout


def test_the_json_story_parses_and_clean_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "my-state"
    proc, elapsed = _demo(tmp_path, "--json", "--clean", "--state-dir", str(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 15, elapsed
    story: dict[str, Any] = json.loads(proc.stdout)
    assert story["ok"] is True and story["state_dir"] is None
    events = story["events"]
    assert all(e["kind"] in ("section", "line", "table", "step") for e in events)
    task = [
        (e["step"], e["status"])
        for e in events
        if e["kind"] == "step" and e["task"] == "Deploy app-v2.0 to production"
    ]
    assert task == [
        ("credential", "done"),
        ("staging", "done"),
        ("approval", "requested"),
        ("approval", "waiting"),
        ("approval", "approved"),
        ("production", "done"),
        ("health", "done"),
        ("trust", "done"),
    ]
    steps = {(e["agent"], e["step"], e["status"]) for e in events if e["kind"] == "step"}
    assert ("monitoring-agent", "deploy", "refused") in steps
    assert ("database-agent", "approval", "timeout") in steps
    assert ("deploy-agent", "health", "failed") in steps
    rotated = [e for e in events if e["kind"] == "step" and e["step"] == "rotate"]
    assert rotated[0]["data"]["detail"] == {"path": "secrets/" + SECRET_PATH, "version": 2}
    assert INITIAL not in proc.stdout
    assert any(e["kind"] == "line" and e["text"].startswith("audit verify: OK (") for e in events)
    # The text is the printed line, not Rich's reading of it (":key:" is not an emoji).
    dids = [e for e in events if e["kind"] == "line" and "did" in e.get("data", {})]
    assert dids and all(e["data"]["did"] in e["text"] for e in dids)
    assert not state.exists() and _demo_dirs(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_the_demo_refuses_a_state_dir_that_is_not_empty(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "keep-me").write_text("x")
    proc, _ = _demo(tmp_path, "--state-dir", str(state))
    assert proc.returncode == 2
    assert "not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    assert [p.name for p in state.iterdir()] == ["keep-me"]


def test_the_demo_leaves_a_demo_dir_that_is_not_empty_alone(tmp_path: Path) -> None:
    """`DIR-demo` beside `--state-dir DIR` is the demo's too (and `--clean` removes it),
    so one that already holds something is refused like a state dir that does."""
    other = tmp_path / "gate-demo"
    other.mkdir()
    (other / "keep-me").write_text("x")
    proc, _ = _demo(tmp_path, "--clean", "--state-dir", str(tmp_path / "gate"))
    assert proc.returncode == 2
    assert "not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate-demo"]
    assert [p.name for p in other.iterdir()] == ["keep-me"]


def test_the_demo_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("x")
    proc, _ = _demo(tmp_path, "--state-dir", str(state))
    assert proc.returncode == 2
    assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_with_a_state_dir_of_its_own_the_demo_says_where_everything_is(tmp_path: Path) -> None:
    """`--state-dir DIR` keeps the gate in DIR and the rest in DIR-demo: "everything is
    kept in" names both, not only the one the gate is not in."""
    state = tmp_path / "gate"
    proc, _ = _demo(tmp_path, "--state-dir", str(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [kept] = [line for line in proc.stdout.splitlines() if line.startswith("everything is kept")]
    assert str(state) + " " in kept + " " and str(tmp_path / "gate-demo") in kept, kept
