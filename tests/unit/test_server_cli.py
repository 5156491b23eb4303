"""CLI for service mode: operators add/list/rotate, agents export-key (once), serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import audit_events
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.identity.keys import did_from_public_key, read_private_key

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(state: Path, *args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["--state-dir", str(state), *args])
    return r.exit_code, r.stdout, r.stderr


def test_operators_tokens_shown_once_stored_hashed(tmp_path: Path) -> None:
    state = tmp_path / "s"
    assert run(state, "init")[0] == 0
    code, out, err = run(state, "operators", "add", "alice")
    token = out.strip()
    assert code == 0 and token.startswith("opsg_op_") and "shown only this once" in err
    code, out, _ = run(state, "operators", "list", "--json")
    listed = json.loads(out)
    assert [o["operator"] for o in listed] == ["alice"] and token not in out
    code, out, _ = run(state, "operators", "rotate", "alice")
    new = out.strip()
    assert code == 0 and new != token
    with opsgate.Gate.open(state) as gate:
        assert gate.operators.authenticate("alice", new) == "alice"
        assert token not in json.dumps([r.event for r in gate.audit.tail(100)])
        import pytest

        with pytest.raises(opsgate.OpsgateError) as exc:
            gate.operators.authenticate("alice", token)
        assert exc.value.code == "operator_unauthenticated"
    assert run(state, "operators", "add", "alice")[0] == 1
    assert run(state, "operators", "rotate", "bob")[0] == 1


def test_export_key_once(tmp_path: Path) -> None:
    state = tmp_path / "s"
    with opsgate.Gate.open(state) as gate:
        agent = gate.register_agent("a1", ["deploy:staging"], "x@company.com")
    out_file = tmp_path / "a1.pem"
    code, _, err = run(state, "agents", "export-key", "a1", "-o", str(out_file), "--by", "alice")
    assert code == 0, err
    assert out_file.stat().st_mode & 0o777 == 0o600
    assert did_from_public_key(read_private_key(out_file).public_key()) == agent.did
    # Never over an existing file; never twice without --force and a reason.
    code, _, err = run(state, "agents", "export-key", "a1", "-o", str(out_file))
    assert code == 1 and "output_exists" in err
    second = tmp_path / "again.pem"
    code, _, err = run(state, "agents", "export-key", "a1", "-o", str(second))
    assert code == 1 and "key_already_exported" in err and not second.exists()
    code, _, err = run(state, "agents", "export-key", "a1", "-o", str(second), "--force")
    assert code == 1 and "reason_required" in err and not second.exists()
    code, _, err = run(
        state, "agents", "export-key", "a1", "-o", str(second), "--force", "--reason", "new host"
    )
    assert code == 0, err
    with opsgate.Gate.open(state) as gate:
        events = audit_events(gate, "agent.key_exported")
    assert [(e["exports"], e.get("forced"), e.get("reason")) for e in events] == [
        (1, None, None),
        (2, True, "new host"),
    ]
    # The operator's act, named as one (like every operator act on the CLI).
    assert events[0]["actor"] == "operator:alice"
    assert "PRIVATE" not in json.dumps(events)


@pytest.mark.parametrize(
    "by",
    ["did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "ev\x1bil", "x" * 65, "", "a b"],
)
def test_an_export_or_a_trust_change_cannot_name_anyone_but_an_operator(
    tmp_path: Path, by: str
) -> None:
    """`--by` names the operator: never an agent's did (the act would be filed among
    the agent's own), never control characters (they reach the audit and terminals),
    never an unbounded text; refused before anything is written."""
    state = tmp_path / "s"
    with opsgate.Gate.open(state) as gate:
        gate.register_agent("a1", ["deploy:staging"], "x@company.com", trust_score=900)
        before = gate.audit.head()[0]
    out_file = tmp_path / "a1.pem"
    code, _, err = run(state, "agents", "export-key", "a1", "-o", str(out_file), "--by", by)
    assert code == 1 and "operator_invalid" in err, err
    assert not out_file.exists()
    code, _, err = run(state, "trust", "set", "a1", "850", "--reason", "review", "--by", by)
    named = "actor_required" if not by else "operator_invalid"
    assert code == 1 and named in err, err
    assert "\x1b" not in err
    with opsgate.Gate.open(state) as gate:
        assert gate.audit.head()[0] == before
        assert gate.trust_score(gate.agents.resolve("a1")) == 900


def test_serve_needs_an_external_url_off_loopback(tmp_path: Path) -> None:
    state = tmp_path / "s"
    assert run(state, "init")[0] == 0
    code, _, err = run(state, "serve", "--host", "0.0.0.0")
    assert code == 1 and "external_url_missing" in err
    code, _, err = run(state, "serve", "--host", "0.0.0.0", "--external-url", "ftp://x")
    assert code == 1 and "config_invalid" in err
    # One line saying what is wrong, not the validation library's report.
    code, _, err = run(state, "serve", "--external-url", "notaurl")
    assert code == 1 and err.strip().splitlines() == [
        "error [config_invalid]: invalid --external-url: external_url must be an http(s) "
        "URL with a host"
    ], err


def test_a_gate_without_policies_says_so_where_it_starts(tmp_path: Path) -> None:
    """Without a policy, capabilities alone decide (production included, save the
    trust gate): `init` says so, and does not once a policy is configured."""
    state = tmp_path / "s"
    code, out, err = run(state, "init")
    assert code == 0 and "no policies are loaded" in err and "production" in err
    assert "no policies" not in out  # stdout stays the gate's facts
    with_policy = tmp_path / "p"
    with_policy.mkdir(mode=0o700)
    (with_policy / "opsgate.yaml").write_text(f"policies: {ROOT / 'examples' / 'policies.yaml'}\n")
    code, _, err = run(with_policy, "init")
    assert code == 0 and "no policies" not in err, err
