"""Secret-shaped substrings are scrubbed wherever they occur: an approver or operator
token, a credential (JWT) or a PEM key placed inside a capability, a reason, an
approval id, at the start, the middle or the end, reaches no error message, no audit
event (credential.refused, trust.changed, operation.denied, ...), no table, no log
line and no CLI output; public identifiers (dids, digests, names) are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import RecordingExecutor, database_text
from typer.testing import CliRunner

import opsgate
from opsgate.audit.sanitize import scrub_log_event
from opsgate.cli import app
from opsgate.cli_common import print_error
from opsgate.errors import OpsgateError, safe_text, scrub
from opsgate.operations.base import Operation

TOKEN_LIKE = "opsg_apr_" + "Zq3" * 14
JWT_LIKE = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0." + "Sg9" * 20
RUN_LIKE = "Kx7" * 15

# (text, what must not survive it) — positions: alone, prefix, middle, suffix, in a path.
SHAPES = [
    (TOKEN_LIKE, "Zq3Zq3Zq3"),
    ("read:" + TOKEN_LIKE, "Zq3Zq3Zq3"),
    ("read:" + TOKEN_LIKE.lower(), "zq3zq3zq3"),
    ("deploy:staging/x" + TOKEN_LIKE + "/y", "Zq3Zq3Zq3"),
    ("reason: see " + TOKEN_LIKE + ", thanks", "Zq3Zq3Zq3"),
    ("opsg_op_" + "Wd5" * 14 + " trailing", "Wd5Wd5Wd5"),
    ("opsg_future_" + "Wd5" * 14, "Wd5Wd5Wd5"),
    ("token=" + JWT_LIKE, "Sg9Sg9"),
    ("read:x/" + JWT_LIKE.lower(), "sg9sg9"),
    ("read:x/" + JWT_LIKE.split(".")[0], "eyJhbGciOiJFZERTQSJ9"),
    ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIK9\n-----END PRIVATE KEY----- ok", "MC4C"),
    ("key " + RUN_LIKE + " end", "Kx7Kx7Kx7"),
]
KEPT = [
    "did:key:z6MkmwhZJ9sRzmxvBW5atXzXvg9Q3Qy7DnTPgngsojwCsMBM",
    "sha256:" + "ab12" * 16,
    "deploy:production/app-web-release-2024-11-26-build-1234567",
    "agent 'deploy-agent' cannot receive credentials (agent suspended)",
]


@pytest.mark.parametrize(("text", "secret"), SHAPES)
def test_each_secret_shape_is_scrubbed_wherever_it_sits(text: str, secret: str) -> None:
    for out in (scrub(text), scrub(text, long_words=False), safe_text(text)):
        assert secret.lower() not in out.lower(), out
    assert secret.lower() not in OpsgateError(f"refused {text!r}").message.lower()
    assert secret.lower() not in str(scrub_log_event(None, "info", {"event": text, "k": [text]}))


@pytest.mark.parametrize("text", KEPT)
def test_public_identifiers_are_kept(text: str) -> None:
    assert scrub(text, long_words=False) == text
    assert OpsgateError(text).message == text


def _secrets(gate: opsgate.Gate, token: str) -> dict[str, str]:
    approver = gate.approvals.add_approver("jane@company.com")
    operator = gate.operators.add("alice")
    pem = (gate.state_dir / "agent-keys").iterdir().__next__().read_text()
    return {"approver": approver, "operator": operator, "credential": token, "pem": pem}


def _leaks(haystack: str, secrets: dict[str, str]) -> list[str]:
    """Which secrets appear, whole or by a distinctive piece, in any case."""
    low = haystack.lower()
    found = []
    for name, value in secrets.items():
        pieces = (
            [value] if name != "pem" else [line for line in value.splitlines() if len(line) > 20]
        )
        if name != "pem":
            pieces.append(value[-24:])  # the random tail on its own
        if any(p.lower() in low for p in pieces):
            found.append(name)
    return found


def test_tokens_inside_capabilities_reasons_and_ids_reach_no_message_event_or_table(
    tmp_path: Path,
) -> None:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        gate.register_executor("deploy", RecordingExecutor())
        agent = gate.register_agent(
            "agent",
            ["deploy:staging", "deploy:production"],
            sponsor="o@company.com",
            trust_score=950,
        )
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
        secrets = _secrets(gate, token)
        messages: list[str] = []

        def attempt(call: Any) -> None:
            try:
                result = call()
            except OpsgateError as exc:
                messages.append(exc.message)
                messages.append(repr(exc))
            else:
                messages.append(repr(result))

        approver, operator = secrets["approver"], secrets["operator"]
        first_line = secrets["pem"].splitlines()[1]
        for secret in (approver, operator, token, first_line):
            cm = gate.credential_manager
            attempt(lambda s=secret: gate.authorize(token, "read:" + s))  # denied, charged
            attempt(lambda s=secret: cm.issue_credential(agent.did, ["read:" + s]))  # refused
            attempt(lambda s=secret: cm.issue_credential(agent.did, [f"deploy:x/{s}/y"]))
            attempt(
                lambda s=secret: gate.execute(
                    token, Operation("deploy", f"production/{s}", {"version": "1"})
                )
            )
            attempt(lambda s=secret: gate.resume(s, token))
            attempt(lambda s=secret: gate.approvals.deny(s, approver="jane@company.com", token=s))
            attempt(lambda s=secret: gate.agents.get("x" + s))
        attempt(lambda: gate.agents.suspend("agent", reason=f"leaked {approver} and {token}"))
        attempt(lambda: gate.agents.reinstate("agent", reason=secrets["pem"]))
        events = "\n".join(str(r.event) for r in gate.audit.events())
        assert "credential.refused" in events and "trust.changed" in events
        assert "operation.denied" in events and "agent.suspended" in events
        assert "<token, not shown>" in events
        assert _leaks(events, secrets) == []
        assert _leaks("\n".join(messages), secrets) == []
        text = database_text(gate)
        # The credential's own record is the one place its jti is; never the token.
        assert _leaks(text, {k: v for k, v in secrets.items() if k != "pem"}) == []


def test_the_cli_prints_no_token_placed_in_a_capability_or_reason(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with opsgate.Gate.init(state) as gate:
        gate.register_agent("agent", ["deploy:staging"], sponsor="o@company.com")
        approver = gate.approvals.add_approver("jane@company.com")
    runner = CliRunner()
    for args in (
        ["creds", "issue", "agent", "-s", f"read:{approver}"],
        ["creds", "issue", "agent", "-s", f"deploy:staging/{approver.lower()}"],
        ["creds", "revoke", approver],
        ["agents", "show", f"a{approver}"],
        ["audit", "tail", "-n", "50"],
        ["audit", "tail", "-n", "50", "--json"],
    ):
        result = runner.invoke(app, ["--state-dir", str(state), *args])
        shown = result.stdout + result.stderr
        assert approver[-24:].lower() not in shown.lower(), (args, shown)


def test_the_policy_commands_print_no_token_typed_into_an_option_or_a_policy(
    tmp_path: Path,
) -> None:
    """`policy explain --param TOKEN` (no `=`) is a usage error that says what it got, and
    `policy validate` names an unknown name of a condition: neither shows a token."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"policies:\n  - name: x\n    rules:\n      - action: deny\n"
        f'        condition: "{TOKEN_LIKE} == 1"\n'
    )
    runner = CliRunner()
    for args in (
        ["policy", "explain", "--action", "deploy", "--resource", "x/y", "--param", TOKEN_LIKE],
        ["policy", "validate", str(policy)],
        ["policy", "validate", str(policy), "--json"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code in (1, 2), (args, result.output)
        shown = result.stdout + result.stderr
        assert "Zq3Zq3Zq3" not in shown, (args, shown)


def test_a_cli_error_keeps_the_digest_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's error line hides long opaque words it did not write, but a digest the
    gate put in its message (`staging_required` names the artifact's) stays whole, as
    in the same error's --json."""
    digest = "8a24101657c397a9aa21c5d646bba147408e81894bf4dee25bbcaf8a157641ef"
    text = f"error [staging_required]: app-web 2.1 with artifact sha256:{digest} has none"
    print_error(text)
    print_error("error [usage]: got " + "Kx7" * 25 + " and " + "k7x" * 25)
    err = capsys.readouterr().err
    assert text in err, err
    assert "Kx7Kx7" not in err and "k7xk7x" not in err, err


def test_the_readme_says_what_each_mechanism_protects_against_and_what_not() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Security: refusals, redaction and who is charged", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert section.count("*Protects against*") == 4 and section.count("*Does not*") == 4
    for name in (
        "scrub_log_event",
        "refusal_summary_seconds",
        "credential.rejected_summary",
        "internal_error",
        "migration_locked",
        "operator:<login>",
        "<token, not shown>",
    ):
        assert name in section, name
    assert callable(scrub_log_event)


def test_a_reason_holding_a_token_is_stored_scrubbed_in_every_table(tmp_path: Path) -> None:
    """Reasons are free text people paste into, and they land in tables (an agent's
    status reason, a revocation's) as well as in the audit."""
    with opsgate.Gate.open(tmp_path / "state") as gate:
        agent = gate.register_agent("agent", ["deploy:staging"], sponsor="o@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        other = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
        secrets = _secrets(gate, other)
        why = f"pasted {secrets['approver']} and {other} by mistake"
        gate.credential_manager.revoke(cred.jti, reason=why)
        gate.credential_manager.revoke_agent(agent.did, reason=why)
        gate.set_trust_score("agent", 700, reason=why, by="ops@company.com")
        gate.agents.suspend("agent", reason=why)
        assert gate.agents.get("agent").status == "suspended"
        text = database_text(gate)
        assert "by mistake" in text  # the reason is kept, its secrets are not
        assert _leaks(text, {k: v for k, v in secrets.items() if k != "pem"}) == []
