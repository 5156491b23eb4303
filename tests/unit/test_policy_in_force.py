"""The policies in force on an embedded (SQLite) gate: publishing them is harmless.

One gate is always in agreement with itself; a reopen with the same files records
nothing; a reopen with edited files makes them the ones in force (the state dir holds
the database and the files, so every gate on it publishes, CLI commands included).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import RecordingExecutor, audit_events, policy

import opsgate
from opsgate.policy import load_policies, policy_digest

STAGING = "deploy:staging/app-web"
LEGACY_FROZEN = """policies:
  - name: legacy-is-frozen
    rules:
      - condition: "action == 'deploy' and resource == 'production/legacy'"
        action: deny
"""


def _open(state: Path, files: Path | None, **kw: object) -> opsgate.Gate:
    gate = opsgate.Gate.open(state, policies=files, **kw)  # type: ignore[arg-type]
    gate.register_executor("deploy", RecordingExecutor())
    return gate


def _token(gate: opsgate.Gate) -> str:
    try:
        did = gate.agents.get("deployer").did
    except opsgate.AgentError:
        did = gate.register_agent(
            "deployer", ["deploy:staging"], sponsor="ops@company.com", trust_score=900
        ).did
    return gate.credential_manager.issue_credential(did, ["deploy:staging"]).token


def _refuses_after_refresh(gate: opsgate.Gate, token: str) -> None:
    """Once its view is refreshed, `gate` refuses a decision: its policies are not in force."""
    gate.state.refresh(force=True)
    with pytest.raises(opsgate.PolicyError) as refused:
        gate.authorize(token, STAGING)
    assert refused.value.code == "policy_mismatch"


def test_a_single_gate_publishes_its_policies_once_and_serves(tmp_path: Path) -> None:
    files = tmp_path / "policies"
    files.mkdir()
    shutil.copy(policy("policies.yaml"), files / "a.yaml")
    state = tmp_path / "state"
    gate = _open(state, files)
    try:
        assert not gate.state.policy_mismatch
        assert gate.authorize(_token(gate), STAGING).effect == "allow"
        digest = gate.decisions_digest(load_policies(files).digest)
        assert gate.state.policy_digest == digest
        [loaded] = audit_events(gate, "policy.loaded")
        assert loaded["digest"] == digest and loaded["files"] == ["a.yaml"]
    finally:
        gate.close()

    # The same files again (a restart, a CLI command): nothing is written, it serves.
    for publish in (True, False):
        gate = _open(state, files, publish_policies=publish)
        try:
            assert gate.authorize(_token(gate), STAGING).effect == "allow"
            assert len(audit_events(gate, "policy.loaded")) == 1
        finally:
            gate.close()

    # Edited files: the gate that loads them (a CLI command too) puts them in force.
    (files / "a.yaml").write_bytes((files / "a.yaml").read_bytes() + b"# reviewed\n")
    gate = _open(state, files, publish_policies=False)
    try:
        assert gate.authorize(_token(gate), STAGING).effect == "allow"
        loaded = audit_events(gate, "policy.loaded")
        assert [e["digest"] for e in loaded] == [
            digest,
            gate.decisions_digest(load_policies(files).digest),
        ]
        assert loaded[1]["replaced"] == digest
    finally:
        gate.close()


def test_two_gates_on_one_state_dir_agree_and_an_edit_takes_the_older_one_out(
    tmp_path: Path,
) -> None:
    """A server and a command on one state dir with the same files both decide. After
    the files are edited, the next gate to open them publishes them: the server still
    enforcing the old ones refuses (policy_mismatch) until it is restarted."""
    files = tmp_path / "policies.yaml"
    shutil.copy(policy("policies.yaml"), files)
    state = tmp_path / "state"
    server = _open(state, files)
    try:
        token = _token(server)
        command = _open(state, files, publish_policies=False)
        try:
            server.state.refresh(force=True)
            assert command.authorize(token, STAGING).effect == "allow"
            assert server.authorize(token, STAGING).effect == "allow"
        finally:
            command.close()
        shutil.copy(policy("production_frozen.yaml"), files)
        command = _open(state, files, publish_policies=False)
        try:
            assert command.authorize(token, STAGING).effect == "allow"
            _refuses_after_refresh(server, token)
        finally:
            command.close()
        assert len(audit_events(server, "policy.loaded")) == 2
    finally:
        server.close()


def test_a_gate_without_policies_publishes_the_empty_set(tmp_path: Path) -> None:
    gate = _open(tmp_path / "state", None)
    try:
        empty = gate.decisions_digest(policy_digest(()))
        assert gate.state.policy_digest == empty
        assert gate.authorize(_token(gate), STAGING).effect == "allow"
        [loaded] = audit_events(gate, "policy.loaded")
        assert loaded["digest"] == empty and loaded["files"] == []
    finally:
        gate.close()


def test_the_digest_is_the_files_bytes_names_and_order(tmp_path: Path) -> None:
    """Identical files agree wherever they are; a byte, a name or the order differ."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        shutil.copy(policy("policies.yaml"), d / "a.yaml")
        (d / "b.yaml").write_text(LEGACY_FROZEN, encoding="utf-8")
    assert load_policies(one).digest == load_policies(two).digest
    assert load_policies([one / "a.yaml", one / "b.yaml"]).digest == load_policies(one).digest
    assert load_policies([one / "b.yaml", one / "a.yaml"]).digest != load_policies(one).digest
    (two / "b.yaml").rename(two / "c.yaml")
    assert load_policies(two).digest != load_policies(one).digest
    (two / "c.yaml").rename(two / "b.yaml")
    (two / "b.yaml").write_bytes((two / "b.yaml").read_bytes() + b"\n")
    assert load_policies(two).digest != load_policies(one).digest
    assert load_policies(one / "a.yaml").digest != policy_digest(())


def test_decision_settings_in_opsgate_yaml_count_like_the_policy_files(tmp_path: Path) -> None:
    """Same policy files, another trust threshold (or environments, limits, approvals):
    a replica with the laxer settings would wave through what another holds for
    approval, so the settings are part of what is in force."""
    files = tmp_path / "policies.yaml"
    shutil.copy(policy("policies.yaml"), files)
    state = tmp_path / "state"
    server = _open(state, files)
    try:
        token = _token(server)
        for settings in (
            {"trust": {"approval_below": 950}},
            {"approvals": {"max_pending_per_agent": 3}},
        ):
            other = _open(state, files, **settings)
            try:
                assert other.state.policy_digest != server.state.policy_digest
                assert other.authorize(token, STAGING).effect == "allow"
                _refuses_after_refresh(server, token)
            finally:
                other.close()
            # The same settings as the server's again: it serves.
            _open(state, files).close()
            server.state.refresh(force=True)
            assert server.authorize(token, STAGING).effect == "allow"
        # Settings that do not change a decision (the CLI's, the server's own) do not count.
        same = _open(state, files, cli={"credential_ttl_minutes": 3})
        try:
            assert same.state.policy_digest == server.state.policy_digest
        finally:
            same.close()
    finally:
        server.close()
