"""`opsgate deploy|rollback|migrate|secrets|status` through the real CLI: each acts as a
named agent through the gate; exit 0 done, 1 refused or failed (`error [code]`), 2 usage,
3 approval pending (the id alone on stdout), `--wait` resumes once a human decided, and a
secret value is printed only with `--reveal`, never taken from argv, never audited."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = ROOT / "examples" / "policies.yaml"
runner = CliRunner()
SECRET = "Zq-7f1c9e-DISTINCTIVE-secret-value-42"


@dataclass
class World:
    state: Path
    tmp: Path
    tokens: dict[str, str]

    def cli(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--state-dir", str(self.state), *args], input=input, env=env)
        return result.exit_code, result.stdout, result.stderr

    def artifact(self, version: str) -> str:
        path = self.tmp / "artifacts" / f"web-{version}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "index.html").write_text(f"web {version}\n")
        return str(path)

    def gate(self) -> opsgate.Gate:
        return opsgate.Gate.open(self.state, create=False)

    def approve(self, approval_id: str, approver: str = "john@company.com") -> None:
        with self.gate() as gate:
            gate.approvals.approve(approval_id, approver=approver, token=self.tokens[approver])

    def deny(self, approval_id: str, approver: str = "john@company.com") -> None:
        with self.gate() as gate:
            gate.approvals.deny(approval_id, approver=approver, token=self.tokens[approver])

    def audit_text(self) -> str:
        code, out, err = self.cli("audit", "export")
        assert code == 0, err
        return out


def one_error(stderr: str, code: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"error [{code}]"), stderr
    assert "Traceback" not in stderr


def write_config(state: Path, tmp: Path, **extra: Any) -> None:
    (tmp / "artifacts").mkdir(exist_ok=True)
    (tmp / "migrations").mkdir(exist_ok=True)
    config = {
        "policies": str(EXAMPLE_POLICY),
        "cli": {"agent": "deploy-agent", "monitor_agent": "monitor"},
        "deploy": {"root": str(tmp / "releases"), "artifact_roots": [str(tmp / "artifacts")]},
        "databases": {
            "orders": {
                "url": f"sqlite:///{tmp / 'orders.db'}",
                "migrations": str(tmp / "migrations"),
                "environment": "staging",
            }
        },
        **extra,
    }
    (state / "opsgate.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = tmp_path / "state"
    result = runner.invoke(app, ["--state-dir", str(state), "init"])
    assert result.exit_code == 0, result.stderr
    write_config(state, tmp_path)
    with opsgate.Gate.open(state, create=False) as gate:
        sup = gate.register_agent(
            "devops-supervisor",
            capabilities=[
                "deploy:staging",
                "deploy:production",
                "rollback:staging",
                "rollback:production",
                "migrate:database",
                "read:secrets",
                "write:secrets",
                "list:secrets",
                "delete:secrets",
                "rotate:secrets",
                "read:monitoring",
            ],
            sponsor="platform-team@company.com",
            trust_score=920,
        )
        sup.delegate(name="monitor", capabilities=["read:monitoring"])
        sup.delegate(
            name="deploy-agent",
            capabilities=["deploy:staging", "deploy:production", "rollback:staging"],
        )
        sup.delegate(
            name="platform-bot",
            capabilities=[
                "migrate:database",
                "read:secrets",
                "write:secrets",
                "list:secrets",
                "delete:secrets",
                "rotate:secrets",
            ],
        )
        tokens = {
            who: gate.approvals.add_approver(who)
            for who in ("john@company.com", "dana@company.com")
        }
    yield World(state, tmp_path, tokens)


def pending_ids(world: World) -> list[str]:
    with world.gate() as gate:
        return [r.id for r in gate.approvals.list(status="pending")]


# -- deploy and rollback ---------------------------------------------------------------------


def test_deploy_to_staging_succeeds_as_the_configured_agent(world: World) -> None:
    artifact = world.artifact("2.0")
    code, out, err = world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)
    assert code == 0, err
    assert "web 2.0 is live in staging" in out
    assert (world.tmp / "releases" / "staging" / "web" / "current").resolve().name == "2.0"
    # It ran as deploy-agent (cli.agent), with a credential of its own scoped to exactly
    # this operation (issued at the operator's request), through the gate.
    with world.gate() as gate:
        did = gate.agents.get("deploy-agent").did
        [issued] = gate.audit.tail(1, event_type="credential.issued")
        outcome = gate.audit.tail(1, event_type="operation.outcome")[0].event
    assert issued.event["agent"] == did and issued.actor.startswith("operator:")
    assert issued.event["scope"] == ["deploy:staging/web"]
    assert outcome["actor"] == did and outcome["outcome"] == "succeeded"


def test_deploy_json_shape(world: World) -> None:
    artifact = world.artifact("2.0")
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "staging", "--artifact", artifact, "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["capability"] == "deploy:staging/web"
    assert data["agent"] == "deploy-agent"
    assert isinstance(data["audit_seq"], int)
    assert data["detail"]["artifact_digest"].startswith("sha256:")


def test_production_deploy_is_pending_with_the_id_alone_on_stdout(world: World) -> None:
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact
    )
    assert code == 3, err
    approval_id = out.strip()
    assert pending_ids(world) == [approval_id]
    assert "approval pending" in err and "john@company.com" in err
    assert not (world.tmp / "releases" / "production").exists()
    # --json: the same, as one object; exit 3 still.
    code, out, _ = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact, "--json"
    )
    assert code == 3
    data = json.loads(out)
    assert data["status"] == "pending" and data["approval_id"] in pending_ids(world)
    assert data["approvers"] == ["jane@company.com", "john@company.com"]
    assert data["capability"] == "deploy:production/web" and data["min_approvals"] == 1
    # --approval of a request nobody decided yet: still pending (exit 3, the id).
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
        "--approval", approval_id,
    )  # fmt: skip
    assert code == 3, err
    assert out.strip() == approval_id
    # After approval, the same command with --approval runs exactly that request.
    world.approve(approval_id)
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
        "--approval", approval_id,
    )  # fmt: skip
    assert code == 0, err
    assert (world.tmp / "releases" / "production" / "web" / "current").resolve().name == "2.0"
    # Used once: a second run with it is refused.
    code, _, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
        "--approval", approval_id,
    )  # fmt: skip
    assert code == 1
    one_error(err, "approval_consumed")


def test_refusals_exit_1_with_their_code(world: World) -> None:
    artifact = world.artifact("2.0")
    # Production before staging: refused by the executor's staging rule.
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact, "--json"
    )
    assert code == 1
    one_error(err, "staging_required")
    assert json.loads(out) == {
        "status": "refused",
        "capability": "deploy:production/web",
        "code": "staging_required",
        "message": json.loads(out)["message"],
    }
    # Beyond the agent's grants: no credential for it (the operator asked: no charge).
    code, _, err = world.cli("rollback", "web", "--env", "production")
    assert code == 1
    one_error(err, "scope_not_covered")
    with world.gate() as gate:
        assert gate.agents.get("deploy-agent").trust_score == 920
    # Denied by policy.
    code, _, err = world.cli("secrets", "delete", "production/db", "--as", "platform-bot")
    assert code == 1
    one_error(err, "operation_denied")
    # An unknown agent.
    code, _, err = world.cli("deploy", "web", "2.0", "--env", "staging", "--as", "nobody")
    assert code == 1
    one_error(err, "agent_not_found")
    assert not (world.tmp / "releases").exists()


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_as_is_a_usage_error_not_the_default_agent(world: World, empty: str) -> None:
    """`--as "$AGENT"` with $AGENT unset names nobody: refused (exit 2), never the
    configured cli.agent acting in its place."""
    code, _, err = world.cli("deploy", "web", "2.0", "--env", "staging", "--as", empty)
    assert code == 2 and "--as names no agent" in err, err
    code, _, err = world.cli("status", "--as", empty)
    assert code == 2 and "--as names no agent" in err, err
    assert not (world.tmp / "releases").exists()


def test_json_refusals_before_the_operation_runs_print_one_object_too(world: World) -> None:
    """A credential the operator may not issue, or an agent that does not exist, is
    refused before `Gate.execute`; `--json` still prints the refusal (not an empty stdout)."""
    for args, code_ in (
        (["rollback", "web", "--env", "production"], "scope_not_covered"),
        (["deploy", "web", "2.0", "--env", "staging", "--as", "nobody"], "agent_not_found"),
        (["secrets", "get", "staging/db", "--as", "deploy-agent"], "scope_not_covered"),
        (["migrate", "apply", "orders", "--as", "deploy-agent"], "scope_not_covered"),
        (["status", "--as", "deploy-agent"], "scope_not_covered"),
    ):
        code, out, err = world.cli(*args, "--json")
        assert code == 1, (args, err)
        one_error(err, code_)
        data = json.loads(out)
        assert data["status"] == "refused" and data["code"] == code_, (args, out)
        assert data["message"] and data["capability"], (args, out)


def test_a_scope_the_agent_lacks_names_the_agent_the_command_chose(world: World) -> None:
    """`status` and the operations pick their agent from --as, cli.monitor_agent or
    cli.agent: a refusal of its scope says which one, or a reader cannot tell."""
    write_config(world.state, world.tmp, cli={"agent": "deploy-agent"})
    code, _, err = world.cli("status")
    assert code == 1
    one_error(err, "scope_not_covered")
    assert "'deploy-agent'" in err and "--as" in err
    code, _, err = world.cli("secrets", "get", "staging/db")
    assert code == 1
    one_error(err, "scope_not_covered")
    assert "'deploy-agent'" in err


def test_an_operation_nothing_is_configured_for_says_what_to_configure(world: World) -> None:
    """Without `deploy:` or `databases:` in opsgate.yaml no executor runs those actions;
    the refusal names the section, not only the SDK's notion of a registered executor."""
    write_config(world.state, world.tmp)
    config = yaml.safe_load((world.state / "opsgate.yaml").read_text())
    del config["deploy"], config["databases"]
    (world.state / "opsgate.yaml").write_text(yaml.safe_dump(config))
    code, _, err = world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", "/x")
    assert code == 1
    one_error(err, "executor_missing")
    assert "deploy:" in err and "opsgate.yaml" in err
    code, _, err = world.cli("rollback", "web", "--env", "staging")
    one_error(err, "executor_missing")
    assert "deploy:" in err


def test_usage_errors_exit_2(world: World) -> None:
    artifact = world.artifact("2.0")
    for args in (
        ["deploy", "web", "--env", "staging"],  # no VERSION
        ["deploy", "web", "2.0", "--artifact", artifact],  # no --env
        ["rollback", "web"],
        ["migrate", "apply"],
        ["migrate", "repair", "orders"],  # no --reason
        ["migrate", "frobnicate", "orders"],
        ["secrets", "get"],
        ["secrets", "rotate", "staging/db", "--length", "many"],
        ["deploy", "web", "2.0", "--env", "staging", "--wait", "--timeout", "-1"],
    ):
        code, _, err = world.cli(*args)
        assert code == 2, (args, err)
    assert not (world.tmp / "releases").exists()


def test_no_agent_named_and_none_configured_is_a_usage_error(world: World) -> None:
    write_config(world.state, world.tmp, cli={})
    code, _, err = world.cli("deploy", "web", "2.0", "--env", "staging")
    assert code == 2
    one_error(err, "usage")
    assert "--as AGENT" in err
    # `status` also reads cli.monitor_agent: the hint names it.
    code, _, err = world.cli("status")
    assert code == 2
    one_error(err, "usage")
    assert "cli.monitor_agent" in err
    # OPSGATE_AGENT names one too.
    code, _, err = world.cli(
        "deploy", "web", "2.0", "--env", "staging", "--artifact", world.artifact("2.0"),
        env={"OPSGATE_AGENT": "deploy-agent"},
    )  # fmt: skip
    assert code == 0, err


def _approve_when_pending(world: World, decide: str, done: list[str]) -> None:
    deadline = time.monotonic() + 30
    with world.gate() as gate:
        while time.monotonic() < deadline:
            pending = gate.approvals.list(status="pending")
            if pending:
                token = world.tokens["john@company.com"]
                if decide == "approve":
                    gate.approvals.approve(pending[0].id, approver="john@company.com", token=token)
                else:
                    gate.approvals.deny(pending[0].id, approver="john@company.com", token=token)
                done.append(pending[0].id)
                return
            time.sleep(0.05)


def test_wait_resumes_when_another_thread_approves(world: World) -> None:
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    done: list[str] = []
    approver = threading.Thread(target=_approve_when_pending, args=(world, "approve", done))
    approver.start()
    try:
        code, out, err = world.cli(
            "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
            "--wait", "--timeout", "30", "--json",
        )  # fmt: skip
    finally:
        approver.join()
    assert code == 0, err
    assert done and json.loads(out)["status"] == "succeeded"
    assert (world.tmp / "releases" / "production" / "web" / "current").resolve().name == "2.0"
    # It resumed with a fresh credential (the first may expire during a long wait).
    with world.gate() as gate:
        issued = gate.audit.tail(2, event_type="credential.issued")
        attempt = gate.audit.tail(1, event_type="operation.attempt")[0].event
    assert [r.event["scope"] for r in issued] == [["deploy:production/web"]] * 2
    assert attempt["jti"] == issued[-1].event["jti"] != issued[0].event["jti"]  # oldest first


def test_wait_ends_with_the_gates_refusal_when_denied_and_3_on_timeout(world: World) -> None:
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    done: list[str] = []
    denier = threading.Thread(target=_approve_when_pending, args=(world, "deny", done))
    denier.start()
    try:
        code, _, err = world.cli(
            "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
            "--wait", "--timeout", "30",
        )  # fmt: skip
    finally:
        denier.join()
    assert code == 1
    one_error(err, "approval_denied")
    assert not (world.tmp / "releases" / "production").exists()
    # Nobody decides: after the timeout it is still pending, exit 3 with the id.
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
        "--wait", "--timeout", "0.3",
    )  # fmt: skip
    assert code == 3
    assert out.strip() in pending_ids(world)
    assert "after 0.3 s" in err


def _cli_process(world: World, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    code = "from opsgate.cli import main; main()"
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen(
        [sys.executable, "-c", code, "--state-dir", str(world.state), *args],
        text=True,
        **options,
    )


def _production_deploy_waiting(world: World) -> subprocess.Popen[str]:
    """web 2.0 through staging, then its production deploy with --wait in a process."""
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    return _cli_process(
        world, "deploy", "web", "2.0", "--env", "production", "--artifact", artifact,
        "--wait", "--timeout", "60",
    )  # fmt: skip


def test_wait_in_a_process_resumes_when_approved_through_the_api(world: World) -> None:
    proc = _production_deploy_waiting(world)
    done: list[str] = []
    _approve_when_pending(world, "approve", done)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert done and "web 2.0 is live in production" in out


def test_ctrl_c_while_waiting_leaves_the_approval_id_and_exit_3(world: World) -> None:
    """An operator who stops `--wait` needs the request's id to run it later: it is on
    stderr as the wait starts, and Ctrl-C ends with the pending answer (exit 3, the id
    alone on stdout), not a bare 'Aborted!'."""
    import signal

    proc = _production_deploy_waiting(world)
    deadline = time.monotonic() + 60
    while not pending_ids(world):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # in its wait
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    (pending,) = pending_ids(world)
    assert out.strip() == pending
    assert f"approval {pending}" in err and "stopped waiting" in err
    assert "Traceback" not in err


def test_deploy_shows_rich_progress_on_a_terminal(world: World) -> None:
    artifact = world.artifact("2.0")
    big = Path(artifact) / "blob.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = _cli_process(
        world, "deploy", "web", "2.0", "--env", "staging", "--artifact", artifact,
        stderr=secondary, env=env,
    )  # fmt: skip
    os.close(secondary)
    screen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    out, _ = proc.communicate(timeout=30)
    os.close(primary)
    assert proc.returncode == 0, screen
    shown = screen.decode("utf-8", "replace")
    assert "copy" in shown and "MB" in shown
    assert "web 2.0 is live in staging" in out
    # Piped (not a terminal): no progress display at all.
    code, _, err = world.cli("rollback", "web", "--env", "staging", "--to", "2.0")
    assert code == 1 and "copy" not in err


def test_rollback_as_an_agent(world: World) -> None:
    for version in ("2.0", "2.1"):
        code, _, err = world.cli(
            "deploy", "web", version, "--env", "staging", "--artifact", world.artifact(version)
        )
        assert code == 0, err
    code, out, err = world.cli("rollback", "web", "--env", "staging", "--dry-run")
    assert code == 0, err
    assert "back from 2.1 to 2.0" in out and "decision: allow" in out
    code, out, err = world.cli("rollback", "web", "--env", "staging", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert (world.tmp / "releases" / "staging" / "web" / "current").resolve().name == "2.0"
    code, _, err = world.cli("rollback", "web", "--env", "staging", "--to", "9.9")
    assert code == 1
    one_error(err, "release_missing")


# -- migrations ---------------------------------------------------------------------------------


def test_migrate_plan_apply_status_and_repair(world: World) -> None:
    migrations = world.tmp / "migrations"
    (migrations / "V1__create.sql").write_text("CREATE TABLE orders (id INTEGER, total INTEGER);")
    (migrations / "V2__drop.sql").write_text("ALTER TABLE orders DROP COLUMN total;")
    bot = ("--as", "platform-bot")
    code, out, err = world.cli("migrate", "plan", "orders", *bot)
    assert code == 0, err
    assert "DS103" in out and "destructive: yes" in out
    assert "needs approval by 1 of dana@company.com" in out
    code, out, _ = world.cli("migrate", "plan", "orders", *bot, "--json")
    plan = json.loads(out)
    assert plan["status"] == "dry_run" and plan["decision"]["effect"] == "require_approval"
    assert plan["plan"]["content"]["findings"] == ["DS103"]
    # V1 alone is not destructive: it runs at once.
    code, out, err = world.cli("migrate", "apply", "orders", *bot, "--target", "1")
    assert code == 0, err
    assert "applied V1__create.sql" in out
    code, out, _ = world.cli("migrate", "status", "orders", "--json")
    assert code == 0
    assert json.loads(out) == {
        "database": "orders",
        "dialect": "sqlite",
        "state": "pending",
        "head": 1,
        "pending": ["V2__drop.sql"],
        "unresolved": [],
        "lock_holder": None,
        "drift": None,
    }
    # The destructive one waits for the DBA group.
    code, out, err = world.cli("migrate", "apply", "orders", *bot)
    assert code == 3, err
    approval_id = out.strip()
    world.approve(approval_id, "dana@company.com")
    code, out, err = world.cli("migrate", "apply", "orders", *bot, "--approval", approval_id)
    assert code == 0, err
    # A failing migration: exit 1, recorded as failed, shown by status, cleared by repair.
    (migrations / "V3__bad.sql").write_text("INSERT INTO no_such_table VALUES (1);")
    code, out, err = world.cli("migrate", "apply", "orders", *bot, "--json")
    assert code == 1
    assert json.loads(out)["status"] == "failed"
    one_error(err, "migration_failed")
    code, out, _ = world.cli("migrate", "status", "orders")
    assert code == 0 and "failed" in out and "V3__bad.sql" in out
    assert "opsgate migrate repair orders" in out
    code, _, err = world.cli("migrate", "apply", "orders", *bot)
    assert code == 1
    one_error(err, "migration_needs_repair")
    code, out, err = world.cli("migrate", "repair", "orders", *bot, "--reason", "table checked")
    assert code == 3, err  # a repair is destructive: the DBA group decides
    world.approve(out.strip(), "dana@company.com")
    code, out, err = world.cli(
        "migrate", "repair", "orders", *bot, "--reason", "table checked", "--approval", out.strip()
    )
    assert code == 0, err
    assert "V3__bad.sql" in out
    code, _, err = world.cli("migrate", "repair", "orders", *bot, "--reason", "again")
    assert code == 1
    one_error(err, "nothing_to_repair")
    code, _, err = world.cli("migrate", "status", "nowhere")
    assert code == 1
    one_error(err, "database_unknown")


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_put_get_list_rotate_delete(world: World) -> None:
    bot = ("--as", "platform-bot")
    code, out, err = world.cli("secrets", "put", "staging/db", *bot, input=SECRET + "\n")
    assert code == 0, err
    assert "version 1" in out
    code, out, err = world.cli("secrets", "get", "staging/db", *bot)
    assert code == 0, err
    assert "version 1" in out and "--reveal" in out
    code, out, _ = world.cli("secrets", "get", "staging/db", *bot, "--json")
    data = json.loads(out)
    assert data["path"] == "secrets/staging/db" and data["version"] == 1
    assert "value" not in data
    # Only --reveal prints it: alone on stdout (the trailing newline of echo not kept).
    code, out, _ = world.cli("secrets", "get", "staging/db", *bot, "--reveal")
    assert code == 0 and out == SECRET + "\n"
    code, out, _ = world.cli("secrets", "get", "staging/db", *bot, "--reveal", "--json")
    assert json.loads(out)["value"] == SECRET
    code, out, _ = world.cli("secrets", "list", "staging", *bot)
    assert code == 0 and out.split() == ["db"]
    code, out, _ = world.cli("secrets", "list", "staging", *bot, "--json")
    assert json.loads(out)["names"] == ["db"]
    code, out, err = world.cli("secrets", "rotate", "staging/db", *bot, "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == 2 and SECRET not in out
    code, out, _ = world.cli("secrets", "get", "staging/db", *bot, "--reveal")
    assert len(out.strip()) == 32 and out.strip() != SECRET
    code, out, err = world.cli("secrets", "delete", "staging/db", *bot, "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == 2
    code, _, err = world.cli("secrets", "get", "staging/db", *bot, "--version", "7")
    assert code == 1
    one_error(err, "secret_not_found")


def test_a_production_secret_write_waits_and_is_resumed_with_the_value_again(
    world: World,
) -> None:
    bot = ("--as", "platform-bot")
    code, out, err = world.cli("secrets", "put", "production/db", *bot, input=SECRET)
    assert code == 3, err
    approval_id = out.strip()
    world.approve(approval_id)
    # Another value does not match what was approved.
    code, _, err = world.cli(
        "secrets", "put", "production/db", *bot, "--approval", approval_id, input="other"
    )
    assert code == 1
    one_error(err, "digest_mismatch")
    code, out, err = world.cli(
        "secrets", "put", "production/db", *bot, "--approval", approval_id, input=SECRET
    )
    assert code == 0, err
    code, out, _ = world.cli("secrets", "get", "production/db", *bot, "--reveal")
    assert out.strip() == SECRET


def test_a_secret_value_is_never_taken_from_argv_nor_shown_nor_audited(world: World) -> None:
    bot = ("--as", "platform-bot")
    seen: list[str] = []
    # On the command line: refused before anything, and not echoed back.
    for args in (
        ["secrets", "put", "staging/db", SECRET, *bot],
        ["secrets", "put", "staging/db", f"--value={SECRET}", *bot],
        ["secrets", "put", "staging/db", *bot, "--", SECRET],
    ):
        code, out, err = world.cli(*args)
        assert code == 2, (args, err)
        one_error(err, "usage")
        seen += [out, err]
    code, _, err = world.cli("secrets", "put", "staging/db", *bot, input="")
    assert code == 2
    one_error(err, "usage")
    code, out, err = world.cli("secrets", "get", "staging/db", *bot)
    assert code == 1  # nothing was stored
    one_error(err, "secret_not_found")
    # Every command but `get --reveal`, on success and failure.
    runs = [
        (["secrets", "put", "staging/db", *bot], SECRET),
        (["secrets", "put", "staging/db", *bot, "--json"], SECRET),
        (["secrets", "put", "staging/db", *bot, "--expected-version", "1"], SECRET),
        (["secrets", "put", "production/db", *bot], SECRET),
        (["secrets", "put", "production/db", *bot, "--json"], SECRET),
        (["secrets", "get", "staging/db", *bot], None),
        (["secrets", "get", "staging/db", *bot, "--json"], None),
        (["secrets", "list", "staging", *bot, "--json"], None),
        (["secrets", "delete", "production/db", *bot, "--json"], None),
        (["approvals", "list", "--json"], None),
        (["status", "--json"], None),
        (["audit", "tail", "-n", "200"], None),
    ]
    for args, given in runs:
        code, out, err = world.cli(*args, input=given)
        assert code in (0, 1, 3), (args, err)
        seen += [out, err]
    for approval_id in pending_ids(world):
        code, out, err = world.cli("approvals", "show", approval_id, "--json")
        seen += [out, err]
    seen.append(world.audit_text())
    for text in seen:
        assert SECRET not in text
    with world.gate() as gate:
        rows = gate.audit.events()
        assert all(SECRET not in json.dumps(r.event, default=str) for r in rows)
    raw = b"".join(p.read_bytes() for p in world.state.glob("opsgate.db*"))
    assert SECRET.encode() not in raw
    # The one way out.
    code, out, _ = world.cli("secrets", "get", "staging/db", *bot, "--reveal")
    assert code == 0 and out.strip() == SECRET


# -- status ------------------------------------------------------------------------------------


def test_status_reads_the_gate_through_the_monitoring_executor(world: World) -> None:
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    code, out, _ = world.cli("deploy", "web", "2.0", "--env", "production", "--artifact", artifact)
    assert code == 3
    approval_id = out.strip()
    code, out, err = world.cli("status", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["capability"] == "read:monitoring/gate" and data["agent"] == "monitor"
    gate_status = data["gate_status"]
    agents = {a["name"]: a for a in gate_status["agents"]}
    assert agents["deploy-agent"]["trust_score"] == 925  # 920 + one success
    assert agents["deploy-agent"]["effective_trust"] == 920  # capped by its parent's
    assert [p["id"] for p in gate_status["approvals"]["pending"]] == [approval_id]
    assert gate_status["approvals"]["pending"][0]["capability"] == "deploy:production/web"
    with world.gate() as gate:
        seq, _ = gate.audit.head()
        [read] = gate.audit.tail(1, event_type="operation.outcome")
        monitor = gate.agents.get("monitor").did
    # Read through the gate as the monitoring agent: its own audited operation, whose
    # outcome comes after the head it saw.
    assert read.actor == monitor and read.event["capability"] == "read:monitoring/gate"
    assert read.seq == seq and gate_status["audit"]["head_seq"] < seq
    assert gate_status["leases"] == [] and gate_status["locks"] == []
    code, out, err = world.cli("status")
    assert code == 0, err
    assert approval_id in out and "deploy-agent" in out and "audit head seq" in out
    assert f"policies in force: digest {gate_status['policy']['published_digest']}" in out
    assert (
        gate_status["policy"]["in_force"]
        and gate_status["policy"]["digest"] == (gate_status["policy"]["published_digest"])
    )
    # As an agent without read:monitoring: refused, exit 1.
    code, _, err = world.cli("status", "--as", "platform-bot")
    assert code == 1
    one_error(err, "scope_not_covered")


def test_a_token_pasted_as_a_version_is_refused_and_never_printed(world: World) -> None:
    # Accepted, it was printed in clear ("web opsg_... is live") while the audit hid it
    # (and with it which release ran).
    token = "opsg_apr_" + "Zq8x" * 10
    artifact = world.artifact("2.0")
    for args in (
        ("deploy", "web", token, "--env", "staging", "--artifact", artifact),
        ("rollback", "web", "--env", "staging", "--to", token),
    ):
        code, out, err = world.cli(*args)
        assert code == 1, (out, err)
        one_error(err, "params_invalid")
        assert token not in out + err
    assert token not in world.audit_text()


def test_timeout_without_wait_is_a_usage_error_and_nothing_is_asked(world: World) -> None:
    artifact = world.artifact("2.0")
    assert world.cli("deploy", "web", "2.0", "--env", "staging", "--artifact", artifact)[0] == 0
    before = pending_ids(world)
    code, out, err = world.cli(
        "deploy", "web", "2.0", "--env", "production", "--artifact", artifact, "--timeout", "5"
    )
    assert code == 2 and out == ""
    one_error(err, "usage")
    assert pending_ids(world) == before  # no approval was requested


def test_a_stray_word_after_a_secret_path_is_not_echoed(world: World) -> None:
    # `secrets get PATH VALUE` by mistake: a short password has no secret shape the
    # scrubber knows, so the parser's "unexpected extra argument (...)" must not show it.
    word = "hunter2pass"
    proc = _cli_process(world, "secrets", "get", "secrets/staging/web/db", word)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert word not in out + err and "unexpected extra argument" in err and "not shown" in err


def test_an_unknown_charset_is_a_usage_error_before_the_gate(world: World) -> None:
    head = world.audit_text()
    code, out, err = world.cli(
        "secrets", "rotate", "secrets/staging/web/db", "--charset", "emoji", "--as", "platform-bot"
    )
    assert code == 2 and out == ""
    assert "must be one of" in err and "Traceback" not in err
    assert world.audit_text() == head  # nothing asked of the gate, nothing audited
