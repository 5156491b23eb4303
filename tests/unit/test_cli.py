"""The `opsgate` command: exit codes (0 ok, 1 refused/failed check, 2 usage), one-line
errors without tracebacks, --json listings, and no secret in what it prints."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(state: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--state-dir", str(state), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str, code: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error [{code}]"), stderr
    assert "Traceback" not in stderr


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    code, out, _ = run(s, "init", "--json")
    assert code == 0
    assert json.loads(out)["gate_id"].startswith("opsgate:")
    code, _, err = run(
        s,
        "agents",
        "register",
        "sup",
        "-c",
        "deploy:staging",
        "-c",
        "deploy:production",
        "--sponsor",
        "platform-team@company.com",
        "--trust-score",
        "920",
    )
    assert code == 0, err
    code, _, err = run(s, "agents", "delegate", "sup", "dep", "-c", "deploy:staging")
    assert code == 0, err
    return s


def test_agents_listing_and_refused_escalation(state: Path) -> None:
    code, out, _ = run(state, "agents", "list", "--json")
    assert code == 0
    agents = {a["name"]: a for a in json.loads(out)}
    assert agents["dep"]["capabilities"] == ["deploy:staging"]
    assert agents["dep"]["depth"] == 1 and agents["sup"]["trust_score"] == 920
    code, out, err = run(state, "agents", "delegate", "dep", "wide", "-c", "deploy:production")
    assert code == 1
    one_error_line(err, "delegation_not_covered")
    code, out, _ = run(state, "agents", "list", "--json")
    assert "wide" not in {a["name"] for a in json.loads(out)}


def test_credential_lifecycle(state: Path) -> None:
    code, token, err = run(state, "creds", "issue", "dep", "-s", "deploy:staging")
    assert code == 0, err
    token = token.strip()
    assert token.count(".") == 2 and "\n" not in token
    code, out, _ = run(state, "creds", "verify", token, "--json")
    assert code == 0 and json.loads(out)["scope"] == ["deploy:staging"]
    jti = json.loads(out)["jti"]
    assert run(state, "creds", "revoke", jti)[0] == 0
    code, _, err = run(state, "creds", "verify", token)
    assert code == 1
    one_error_line(err, "revoked")
    # With --json a refusal is an answer on stdout too (exit 1 all the same).
    code, out, err = run(state, "creds", "verify", token, "--json")
    assert code == 1 and json.loads(out) == {
        "valid": False,
        "code": "revoked",
        "message": json.loads(out)["message"],
    }
    assert token not in out
    code, out, _ = run(state, "keys", "jwks", "--json")
    assert code == 0 and json.loads(out)["keys"]
    code, _, err = run(
        state, "creds", "issue", "dep", "-s", "deploy:staging", "--ttl-minutes", "99"
    )
    assert code == 1
    one_error_line(err, "ttl_too_long")
    code, _, err = run(state, "creds", "issue", "dep", "-s", "deploy:production")
    assert code == 1
    one_error_line(err, "scope_not_covered")
    assert run(state, "creds", "revoke")[0] == 2  # neither a jti nor --agent


def test_key_rotation_keeps_old_tokens_valid(state: Path) -> None:
    _, token, _ = run(state, "creds", "issue", "dep", "-s", "deploy:staging")
    code, out, _ = run(state, "keys", "jwks")
    assert code == 0
    before = {k["kid"] for k in json.loads(out)["keys"]}
    assert run(state, "keys", "rotate")[0] == 0
    _, out, _ = run(state, "keys", "jwks")
    after = {k["kid"] for k in json.loads(out)["keys"]}
    assert before < after  # the old key stays published
    assert run(state, "creds", "verify", token.strip())[0] == 0


def test_audit_verify_detects_an_edited_row_and_truncation(state: Path, tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.json"
    assert run(state, "audit", "checkpoint", "-o", str(anchor))[0] == 0
    code, out, _ = run(state, "audit", "verify", "--anchor", str(anchor), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run(state, "audit", "tail", "-n", "3", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    db = sqlite3.connect(state / "opsgate.db")
    db.execute("UPDATE audit_events SET body = replace(body, 'dep', 'xyz') WHERE seq = 3")
    db.commit()
    code, _, err = run(state, "audit", "verify")
    assert code == 1 and "seq 3" in err and "edit" in err
    db.execute("DELETE FROM audit_events WHERE seq >= 3")
    db.execute(
        "UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM audit_events WHERE seq = 2)"
    )
    db.execute("DELETE FROM audit_checkpoints")
    db.commit()
    db.close()
    # the checkpoint the gate keeps in its state dir is out of the database's reach
    code, out, _ = run(state, "audit", "verify", "--json")
    assert code == 1 and json.loads(out)["problem"] == "truncation"
    (state / "audit-checkpoint.json").unlink()
    assert run(state, "audit", "verify")[0] == 0  # a clean-looking prefix...
    code, out, _ = run(state, "audit", "verify", "--anchor", str(anchor), "--json")
    assert code == 1 and json.loads(out)["problem"] == "truncation"  # ...but not to the anchor


def test_approvals_through_the_cli_never_print_the_token(state: Path, tmp_path: Path) -> None:
    code, token, _ = run(state, "approvers", "add", "john@company.com")
    assert code == 0 and token.strip().startswith("opsg_apr_")
    token = token.strip()
    assert run(state, "approvers", "add", "john@company.com")[0] == 1  # exists
    code, out, _ = run(state, "approvals", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = run(
        state,
        "approvals",
        "approve",
        "apr_missing",
        "--approver",
        "john@company.com",
        env={"OPSGATE_APPROVER_TOKEN": token},
    )
    assert code == 1
    one_error_line(err, "approval_not_found")
    for args in (["audit", "tail", "-n", "50", "--json"], ["approvers", "list", "--json"]):
        code, out, _ = run(state, *args)
        assert code == 0 and token not in out


def test_trust_listings(state: Path) -> None:
    code, out, _ = run(state, "trust", "show", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["dep"]["effective"] == 920 and rows["dep"]["band"] == "normal"
    # The agent itself asking for more than it holds: -75.
    with opsgate.Gate.open(state, create=False) as gate, pytest.raises(opsgate.DelegationError):
        gate.agents.get("dep").delegate("wide", ["deploy:production"])
    code, out, _ = run(state, "trust", "history", "dep", "--json")
    causes = [(c["cause"], c["delta"], c["score"]) for c in json.loads(out)]
    assert causes == [("initial", 0, 920), ("policy_violation", -75, 845)]


def test_policy_explain_uses_the_state_dirs_policies(state: Path) -> None:
    (state / "policies.yaml").write_text((ROOT / "examples" / "policies.yaml").read_text())
    (state / "opsgate.yaml").write_text("policies: policies.yaml\n")
    code, out, err = run(
        state,
        "policy",
        "explain",
        "--action",
        "deploy",
        "--resource",
        "production/app-web",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["request"]["environment"] == "production"  # read from the resource
    assert data["decision"]["effect"] == "require_approval"


def test_bad_config_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    s = tmp_path / "state"
    s.mkdir()
    (s / "opsgate.yaml").write_text("limits:\n  max_ttl_minutes: 600\n")
    code, _, err = run(s, "init")
    assert code == 1
    one_error_line(err, "config_invalid")
    assert not (s / "gate-keys").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["agents", "bogus"],
        [
            "agents",
            "register",
            "x",
            "-c",
            "deploy:a",
            "--sponsor",
            "a@b.co",
            "--trust-score",
            "abc",
        ],
        ["audit", "tail", "-n", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "opsgate.cli", "--state-dir", str(tmp_path / "s"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, "usage")


# -- the environment around the command --------------------------------------------------------


def test_a_missing_state_dir_is_an_error_not_a_fresh_gate(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    for args in (["audit", "verify"], ["agents", "list"], ["keys", "jwks"]):
        code, out, err = run(typo, *args)
        assert code == 1 and out == "", args
        one_error_line(err, "not_initialized")
    assert not typo.exists()


@pytest.mark.parametrize(
    "breakage",
    ["config-not-utf8", "config-is-a-dir", "gate-keys-is-a-file", "agent-keys-is-a-file"],
)
def test_a_broken_state_dir_is_one_line(state: Path, breakage: str) -> None:
    if breakage == "config-not-utf8":
        (state / "opsgate.yaml").write_bytes(b"\xff\xfe")
    elif breakage == "config-is-a-dir":
        (state / "opsgate.yaml").mkdir()
    else:
        d = state / breakage.removesuffix("-is-a-file")
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
        d.write_text("")
    code, _, err = run(
        state, "agents", "register", "x", "-c", "deploy:staging", "--sponsor", "a@company.com"
    )
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_unwritable_outputs_change_nothing(state: Path, tmp_path: Path) -> None:
    with sqlite3.connect(state / "opsgate.db") as con:
        checkpoints = con.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0]
    for args in (
        ["audit", "checkpoint", "-o", str(tmp_path / "missing" / "cp.json")],
        ["audit", "checkpoint", "-o", str(tmp_path)],
        ["audit", "export", "-o", str(tmp_path / "missing" / "log.jsonl")],
    ):
        code, _, err = run(state, *args)
        assert code == 1, args
        one_error_line(err, "output_unwritable")
    with sqlite3.connect(state / "opsgate.db") as con:
        assert con.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0] == checkpoints
    code, _, err = run(state, "audit", "verify", "--anchor", str(tmp_path))
    assert code == 1
    one_error_line(err, "anchor_invalid")


def test_an_audit_export_file_is_the_owners_only(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    code, _, err = run(state, "audit", "export", "-o", str(out))
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text(encoding="utf-8").count("\n") >= 1


def test_an_audit_export_never_truncates_an_existing_file_unasked(
    state: Path, tmp_path: Path
) -> None:
    """A mistyped -o must not destroy a file (a key, an earlier export): an existing
    file is refused unless --force, which replaces it owner-only; a symlink never."""
    keep = tmp_path / "precious.pem"
    keep.write_text("not to be lost\n", encoding="utf-8")
    keep.chmod(0o644)
    code, _, err = run(state, "audit", "export", "-o", str(keep))
    assert code == 1
    one_error_line(err, "output_unwritable")
    assert "--force" in err and keep.read_text(encoding="utf-8") == "not to be lost\n"
    code, _, err = run(state, "audit", "export", "-o", str(keep), "--force")
    assert code == 0, err
    assert '"hash"' in keep.read_text(encoding="utf-8")
    assert keep.stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "target.txt")
    (tmp_path / "target.txt").write_text("target\n", encoding="utf-8")
    code, _, err = run(state, "audit", "export", "-o", str(link), "--force")
    assert code == 1 and (tmp_path / "target.txt").read_text(encoding="utf-8") == "target\n"


def test_paths_are_printed_as_given_never_as_markup(tmp_path: Path) -> None:
    """A path is the operator's text: brackets in it are not Rich markup (a closing tag
    raised MarkupError after the work was done, an opening one vanished)."""
    state = tmp_path / "st[/x]" / "state"
    code, out, err = run(state, "init")
    assert code == 0 and "Traceback" not in err, err
    assert f"opsgate ready in {state} (" in out
    (tmp_path / "a[").mkdir()
    (tmp_path / "a[" / "b]").mkdir()
    for output in (tmp_path / "a[" / "b]" / "cp.json", tmp_path / "cp[red]x.json"):
        code, out, err = run(state, "audit", "checkpoint", "-o", str(output))
        assert code == 0 and "Traceback" not in err, err
        assert output.exists() and out.rstrip().endswith(f"-> {output}"), out


@pytest.mark.parametrize(
    "spoil",
    [
        lambda text: re.sub(r'"seq": \d+', '"seq": Infinity', text),  # int(inf) overflows
        lambda text: re.sub(r'"seq": \d+', '"seq": -Infinity', text),
        lambda _text: "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion
    ],
    ids=["seq-infinity", "seq-minus-infinity", "nested"],
)
def test_a_malformed_anchor_or_kept_checkpoint_is_a_typed_refusal(
    state: Path, tmp_path: Path, spoil: Any
) -> None:
    anchor = tmp_path / "anchor.json"
    assert run(state, "audit", "checkpoint", "-o", str(anchor))[0] == 0
    anchor.write_text(spoil(anchor.read_text()))
    code, _, err = run(state, "audit", "verify", "--anchor", str(anchor))
    assert code == 1
    one_error_line(err, "anchor_invalid")
    # The same text as the state dir's own copy: the gate opens, verify reports it.
    kept = state / "audit-checkpoint.json"
    kept.write_text(anchor.read_text())
    code, out, err = run(state, "audit", "verify", "--json")
    assert code == 1 and "Traceback" not in err, err
    report = json.loads(out)
    assert report["problem"] == "replacement" and "invalid" in report["reason"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:abc/x",
        "postgresql://[::1",
        "postgresql+psycopg2://postgres@127.0.0.1/x",
        "postgresql+asyncpg://postgres@127.0.0.1/x",
        "mysql://root@127.0.0.1/x",
    ],
)
def test_unsupported_database_urls_are_one_line(state: Path, url: str) -> None:
    code, _, err = run(state, "agents", "list", env={"OPSGATE_DATABASE_URL": url})
    assert code == 1
    one_error_line(err, "database_url")


@pytest.mark.parametrize("args", [["agents", "list"], ["approvals", "list"]])
def test_unknown_status_filters_are_usage_errors(state: Path, args: list[str]) -> None:
    code, out, _ = run(state, *args, "--status", "bogus", "--json")
    assert code == 2 and out == ""


def test_unknown_status_filters_are_refused_by_the_sdk(tmp_path: Path) -> None:
    import opsgate

    with opsgate.Gate.open(tmp_path / "state") as gate:
        for listing in (gate.agents.list, gate.approvals.list):
            with pytest.raises(opsgate.OpsgateError) as info:
                listing(status="bogus")
            assert info.value.code == "status_invalid"


def test_an_empty_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--state-dir", "", "init"])
    assert result.exit_code == 2
    assert not (Path.cwd() / "gate-keys").exists()


def test_secrets_in_usage_errors_are_not_echoed(state: Path) -> None:
    pem = next((state / "agent-keys").glob("*.pem")).read_text()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    token = run(state, "approvers", "add", "jane@company.com")[1].strip()
    assert token.startswith("opsg_apr_")
    env = {**os.environ, "OPSGATE_STATE_DIR": str(state)}
    for args in (
        ["creds", "verify", pem],
        ["agents", "show", body],
        ["creds", "revoke", token],
        ["approvals", "approve", token, "--approver", "jane@company.com", "--token", token],
        ["approvals", "approve", "apr_x", "--approver", token, "--token", token],
    ):
        # the real entry point: usage errors are printed by it, not by click
        proc = subprocess.run(
            [sys.executable, "-m", "opsgate.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        out, err = proc.stdout, proc.stderr
        assert proc.returncode in (1, 2), (args, err)
        assert body[16:40] not in out + err and token[9:] not in out + err, args
    code, out, _ = run(state, "audit", "export")
    assert code == 0
    assert body[16:40] not in out and token[9:] not in out


def test_log_lines_never_reach_stdout(state: Path) -> None:
    """Even when a rejection cannot be audited, stdout stays empty for a refused command."""
    env = {**os.environ, "OPSGATE_STATE_DIR": str(state)}
    with sqlite3.connect(state / "opsgate.db") as con:  # the rejection's audit write fails
        con.execute(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit disk gone'); END"
        )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "opsgate.cli", "creds", "verify", "garbage"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        with sqlite3.connect(state / "opsgate.db") as con:
            con.execute("DROP TRIGGER no_audit")
    assert "not audited" in proc.stderr, proc.stderr  # the log line, on stderr
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


# -- what a newcomer meets -----------------------------------------------------------------------


def test_listings_print_every_identifier_whole_when_piped(tmp_path: Path) -> None:
    """Captured output is no terminal: rows are never fitted to 80 columns, so no did,
    jti, approval id or hash is cut with an ellipsis."""
    from helpers import deploy, open_world

    world = open_world(tmp_path / "state", "policies.yaml")
    pending = world.gate.execute(world.token, deploy())
    assert isinstance(pending, opsgate.PendingApproval)
    cred = world.gate.credential_manager.issue_credential(
        world.agent.did, ["deploy:staging"], ttl_minutes=5
    )
    world.gate.credential_manager.revoke(cred.jti, reason="x" * 150 + " end-of-reason")
    dids = [world.supervisor.did, world.agent.did]
    world.gate.close()
    state = tmp_path / "state"
    listings = {
        "agents list": dids,
        "agents show deploy-agent": [world.agent.did, world.supervisor.did],
        "audit tail -n 50": [*dids, cred.jti, pending.approval_id, "end-of-reason"],
        "approvals list": [pending.approval_id, pending.request.capability],
        "trust show": ["deploy-agent"],
    }
    for args, wanted in listings.items():
        code, out, err = run(state, *args.split())
        assert code == 0, err
        assert "…" not in out, args
        for value in wanted:
            assert value in out, (args, value)


def test_a_narrow_terminal_folds_identifiers_and_never_cuts_them(state: Path) -> None:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": "50", "NO_COLOR": "1"}
    code, out, _ = run(state, "agents", "list", env=env)
    assert code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", out)  # bold headers
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 50
    # Folded, every character is still there: read the did column back.
    cells = [line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│")]
    dids = "".join(cells)
    for did in (_agent(state, "sup")["did"], _agent(state, "dep")["did"]):
        assert did in dids
    code, out, _ = run(state, "audit", "tail", env=env)
    assert code == 0 and "…" not in out


def _agent(state: Path, name: str) -> dict[str, str]:
    code, out, _ = run(state, "agents", "show", name, "--json")
    assert code == 0
    return json.loads(out)  # type: ignore[no-any-return]


def test_several_capabilities_after_one_flag_get_a_hint(tmp_path: Path) -> None:
    """`-c a b` is a usage error (one value per flag); the message says what works."""
    for args in (
        [
            "agents",
            "register",
            "x",
            "-c",
            "deploy:staging",
            "deploy:production",
            "--sponsor",
            "a@b.co",
        ],
        ["creds", "issue", "x", "-s", "deploy:staging", "deploy:production"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "opsgate.cli", "--state-dir", str(tmp_path / "s"), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        one_error_line(proc.stderr, "usage")
        flag = args[3]
        assert f"repeat the option: {flag} A {flag} B" in proc.stderr, proc.stderr


def test_policy_errors_carry_their_code_through_the_opsgate_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('policies:\n  - name: p\n    rules:\n      - condition: "nope =="\n')
    proc = subprocess.run(
        [sys.executable, "-m", "opsgate.cli", "policy", "validate", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors and all(line.startswith("error [policy_") for line in errors), proc.stderr
    missing = runner.invoke(app, ["policy", "validate", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error [policy_not_found]: "), missing.stderr


def test_approver_tokens_show_their_expiry_and_rotate_through_the_cli(state: Path) -> None:
    code, out, err = run(state, "approvers", "add", "john@company.com", "--ttl-days", "30")
    assert code == 0, err
    token = out.strip()
    assert token.startswith("opsg_apr_") and "\n" not in token  # alone on stdout
    assert "shown only this once" in err and "expires 20" in err
    code, out, _ = run(state, "approvers", "add", "jane@company.com", "--json")
    added = json.loads(out)
    assert code == 0 and added["approver"] == "jane@company.com"
    assert added["token"].startswith("opsg_apr_") and added["token_expires_at"].startswith("20")

    code, out, _ = run(state, "approvers", "list", "--json")
    assert code == 0
    listed = {a["approver"]: a for a in json.loads(out)}
    assert sorted(listed) == ["jane@company.com", "john@company.com"]
    assert listed["john@company.com"]["status"] == "active"
    assert listed["john@company.com"]["token_age_days"] == 0.0
    assert set(listed["john@company.com"]) == {
        "approver",
        "status",
        "created_at",
        "token_issued_at",
        "token_expires_at",
        "token_age_days",
    }
    assert token not in out and added["token"] not in out
    code, out, _ = run(state, "approvers", "list")
    assert code == 0 and "john@company.com" in out and "token expires" in out
    assert "0 days" in out and token not in out

    code, out, err = run(state, "approvers", "rotate", "john@company.com")
    assert code == 0, err
    new = out.strip()
    assert new.startswith("opsg_apr_") and new != token and "expires" in err
    for presented, expected in ((token, "approver_unauthenticated"), (new, "approval_not_found")):
        code, _, err = run(
            state,
            "approvals",
            "approve",
            "apr_missing",
            "--approver",
            "john@company.com",
            "--token",
            presented,
        )
        assert code == 1
        one_error_line(err, expected)  # the old token is refused at once, the new one works

    for args in (["add", "sam@company.com"], ["rotate", "john@company.com"]):
        code, _, err = run(state, "approvers", *args, "--ttl-days", "0")
        assert code == 1
        one_error_line(err, "token_ttl_invalid")
    code, _, err = run(state, "approvers", "rotate", "nobody@company.com")
    assert code == 1
    one_error_line(err, "approver_not_found")


def test_an_expired_approver_token_is_refused_with_its_own_code(state: Path) -> None:
    import time

    import opsgate

    with opsgate.Gate.open(state) as gate:
        token = gate.approvals.add_approver(
            "john@company.com", ttl_days=1, now=time.time() - 2 * 86400
        )
    code, out, _ = run(state, "approvers", "list", "--json")
    assert json.loads(out)[0]["status"] == "expired"
    code, _, err = run(
        state, "approvals", "deny", "apr_x", "--approver", "john@company.com", "--token", token
    )
    assert code == 1
    one_error_line(err, "approver_token_expired")
    assert token[9:] not in err


def test_a_credential_id_starting_with_a_dash_can_be_revoked(tmp_path: Path) -> None:
    """One jti in 64 starts with "-" (base64url): it is an id, not an unknown option."""
    with opsgate.Gate.open(tmp_path / "state") as gate:
        agent = gate.register_agent("a", ["deploy:staging"], sponsor="ops@company.com")
        for _ in range(5000):
            cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
            if cred.jti.startswith("-"):
                break
        assert cred.jti.startswith("-")
    code, out, err = run(tmp_path / "state", "creds", "revoke", cred.jti, "--reason", "leaked")
    assert code == 0, err
    assert cred.jti in out
    code, _, err = run(tmp_path / "state", "creds", "verify", cred.token)
    assert code == 1
    one_error_line(err, "revoked")
    # a mistyped option is still no credential id
    code, _, _ = run(tmp_path / "state", "creds", "revoke", "--agnet", "a")
    assert code == 2


# -- the issuer, the pin and what verify says about them --------------------------------------


def test_init_prints_the_issuer_and_the_pinned_key_and_keys_show_repeats_them(
    tmp_path: Path,
) -> None:
    s = tmp_path / "state"
    code, out, _ = run(s, "init")
    assert code == 0
    pin = json.loads((s / "gate-pin.json").read_text())
    assert f"gate id {pin['gate_id']} (the issuer" in out
    assert f"pinned key {pin['kid']}" in out
    code, out, _ = run(s, "init", "--json")  # again: the same gate, nothing new
    info = json.loads(out)
    assert (info["issuer"], info["pinned_kid"], info["audience"]) == (
        pin["gate_id"],
        pin["kid"],
        "opsgate",
    )
    assert run(s, "keys", "rotate")[0] == 0
    code, out, _ = run(s, "keys", "show", "--json")
    doc = json.loads(out)
    assert doc["issuer"] == pin["gate_id"] and doc["pinned_kid"] == pin["kid"]
    chain = doc["key_chain"]
    assert chain[0]["kid"] == pin["kid"] and chain[1]["prev_kid"] == pin["kid"]
    assert doc["signing_kid"] == chain[1]["kid"] and chain[0]["retired_at"] is not None
    code, out, _ = run(s, "keys", "show")
    assert code == 0 and pin["gate_id"] in out and pin["kid"] in out


def test_the_jwks_names_the_issuer_its_tokens_carry(state: Path) -> None:
    import jwt

    _, token, _ = run(state, "creds", "issue", "dep", "-s", "deploy:staging")
    code, out, _ = run(state, "keys", "jwks")
    assert code == 0
    jwks = json.loads(out)
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token.strip())["kid"]]
    claims = jwt.decode(
        token.strip(),
        key.key,
        algorithms=["EdDSA"],
        issuer=jwks["issuer"],
        audience=jwks["audience"],
    )
    assert claims["iss"] == json.loads((state / "gate-pin.json").read_text())["gate_id"]


def test_each_command_signs_the_events_it_wrote(state: Path) -> None:
    code, out, err = run(state, "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["unsigned_events"] == 0, report
    assert report["state_checkpoint_seq"] == report["head_seq"] == report["signed_seq"]
    assert "not signed" not in err


def test_audit_verify_reports_an_unsigned_tail_on_stderr_and_exits_0(state: Path) -> None:
    db = sqlite3.connect(state / "opsgate.db")
    db.execute("DELETE FROM audit_checkpoints")
    db.commit()
    db.close()
    (state / "audit-checkpoint.json").unlink()
    code, out, err = run(state, "audit", "verify")
    assert code == 0 and out.startswith("audit log intact"), err
    assert "event(s) after seq 0 are not signed by a checkpoint yet" in err
    code, out, _ = run(state, "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["unsigned_events"] == report["head_seq"] > 0
    assert report["unsigned_age_seconds"] >= 0


def test_audit_verify_names_an_agent_written_into_the_database(state: Path) -> None:
    db = sqlite3.connect(state / "opsgate.db")
    db.execute(
        "INSERT INTO agents (did, name, sponsor, depth, created_at, status, trust_score, "
        "initial_trust, record, signature, signer, updated_at) "
        "SELECT 'did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK', 'forged', sponsor, "
        "0, created_at, status, 1000, 1000, record, signature, signer, updated_at "
        "FROM agents WHERE name = 'sup'"
    )
    db.commit()
    db.close()
    code, out, err = run(state, "audit", "verify")
    assert code == 1 and out == ""
    assert err.startswith("gate state TAMPERED: untrusted_agent:"), err
    code, out, _ = run(state, "audit", "verify", "--json")
    findings = json.loads(out)["findings"]
    assert [f["kind"] for f in findings] == ["agent"]
    assert findings[0]["subject"].endswith("2doK")


def test_an_init_whose_policy_does_not_load_creates_nothing(tmp_path: Path) -> None:
    """The policy is checked before the gate is made: a failed init leaves no pin, key or
    database behind (the next init after the fix is a first init, not a surprise)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "p.yaml").write_text(
        'policies:\n  - name: x\n    rules:\n      - condition: "action =="\n'
        "        action: deny\n",
        encoding="utf-8",
    )
    (state / "opsgate.yaml").write_text("policies: p.yaml\n", encoding="utf-8")
    code, _, err = run(state, "init")
    assert code == 1
    one_error_line(err, "policy_syntax")
    assert sorted(p.name for p in state.iterdir()) == ["opsgate.yaml", "p.yaml"]
    (state / "p.yaml").write_text(
        "policies:\n  - name: x\n    rules:\n      - condition: \"action == 'drop'\"\n"
        "        action: deny\n",
        encoding="utf-8",
    )
    code, out, err = run(state, "init")
    assert code == 0, err
    assert "opsgate ready" in out and (state / "gate-pin.json").exists()


def test_verify_says_when_no_kept_checkpoint_backs_it(tmp_path: Path) -> None:
    state = tmp_path / "s"
    assert run(state, "init")[0] == 0
    assert (
        run(
            state, "agents", "register", "a1", "-c", "deploy:staging", "--sponsor", "x@company.com"
        )[0]
        == 0
    )
    code, _, err = run(state, "audit", "verify")
    assert code == 0 and "no kept checkpoint" not in err
    (state / "audit-checkpoint.json").unlink()
    code, out, err = run(state, "audit", "verify")
    assert code == 0 and "intact" in out
    assert "no kept checkpoint" in err and "--anchor" in err
