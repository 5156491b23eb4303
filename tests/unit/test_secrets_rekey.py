"""Rotating the embedded backend's master key: every version (deleted ones too) sealed
again under the new key in one transaction with its audit record, all or nothing; the
state dir's key file replaced once that commits; the old key opening nothing after."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from secret_helpers import SecretWorld, open_world
from typer.testing import CliRunner

import opsgate
from opsgate.cli import app
from opsgate.secrets.keys import KEY_FILE, MASTER_KEY_ENV
from opsgate.secrets.sdk import delete_secret, read_secret, resume_secret, write_secret

runner = CliRunner()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretWorld:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    write_secret(w.gate, w.token, "staging/db", "first-value-1")
    write_secret(w.gate, w.token, "staging/db", "second-value-2")
    write_secret(w.gate, w.token, "staging/old", "deleted-value-3")
    delete_secret(w.gate, w.token, "staging/old")
    return w


def _rows(state: Path) -> list[tuple[str, int, str, bytes, bytes]]:
    with sqlite3.connect(state / "opsgate.db") as db:
        return db.execute(
            "SELECT path, version, key_id, nonce, ciphertext FROM secret_versions "
            "ORDER BY path, version"
        ).fetchall()


def test_every_version_is_sealed_again_and_the_key_file_replaced(
    world: SecretWorld, tmp_path: Path
) -> None:
    gate, state = world.gate, world.gate.state_dir
    old_key_text = (state / KEY_FILE).read_text()
    before = _rows(state)
    done = gate.rekey_secrets(tmp_path / "new.key", generate=True)
    assert done["versions"] == 3 and done["key_file_replaced"]
    assert done["old_key_id"] != done["new_key_id"]
    after = _rows(state)
    assert [(p, v) for p, v, *_ in after] == [(p, v) for p, v, *_ in before]
    for (_, _, kid, nonce, ct), (_, _, old_kid, old_nonce, old_ct) in zip(
        after, before, strict=True
    ):
        assert kid == done["new_key_id"] != old_kid
        assert nonce != old_nonce and ct != old_ct
    assert (state / KEY_FILE).read_text() == (tmp_path / "new.key").read_text()
    assert (state / KEY_FILE).stat().st_mode & 0o777 == 0o600
    # This gate and a fresh one read every live version; writes go on from there.
    assert read_secret(gate, world.token, "staging/db").value.reveal() == "second-value-2"
    assert read_secret(gate, world.token, "staging/db", version=1).value.reveal() == (
        "first-value-1"
    )
    write_secret(gate, world.token, "staging/db", "third-value-3")
    (event,) = [e for e in _events(gate) if e["type"] == "secrets.rekeyed"]
    assert event["versions"] == 3 and event["new_key_id"] == done["new_key_id"]
    text = str(_events(gate))
    assert old_key_text.strip() not in text
    assert (tmp_path / "new.key").read_text().strip() not in text
    gate.close()
    with opsgate.Gate.open(state) as again:
        assert read_secret(again, world.token, "staging/db").value.reveal() == "third-value-3"
        assert again.audit.verify().ok


def test_the_old_key_opens_nothing_after(
    world: SecretWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = world.gate.state_dir
    old_key_text = (state / KEY_FILE).read_text().strip()
    world.gate.rekey_secrets(tmp_path / "new.key", generate=True)
    world.gate.close()
    monkeypatch.setenv(MASTER_KEY_ENV, old_key_text)
    with opsgate.Gate.open(state) as gate, pytest.raises(opsgate.SecretError) as info:
        read_secret(gate, world.token, "staging/db")
    assert info.value.code == "secret_key_mismatch"


def test_a_key_from_the_environment_is_left_to_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, "ab" * 32)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch)
    write_secret(w.gate, w.token, "staging/db", "env-sealed-value")
    done = w.gate.rekey_secrets(tmp_path / "new.key", generate=True)
    assert done["key_source"] == "environment" and not done["key_file_replaced"]
    assert not (w.gate.state_dir / KEY_FILE).exists()
    w.gate.close()
    monkeypatch.setenv(MASTER_KEY_ENV, (tmp_path / "new.key").read_text().strip())
    with opsgate.Gate.open(tmp_path / "state") as gate:
        assert read_secret(gate, w.token, "staging/db").value.reveal() == "env-sealed-value"


def _corrupt_first_version(state: Path) -> None:
    with sqlite3.connect(state / "opsgate.db") as db:
        db.execute(
            "UPDATE secret_versions SET ciphertext = ? WHERE path = ? AND version = 1",
            (b"\0" * 40, "secrets/staging/db"),
        )


def test_a_version_that_does_not_open_refuses_the_whole_rekey(
    world: SecretWorld, tmp_path: Path
) -> None:
    state = world.gate.state_dir
    _corrupt_first_version(state)
    before, key_text = _rows(state), (state / KEY_FILE).read_text()
    with pytest.raises(opsgate.SecretError) as info:
        world.gate.rekey_secrets(tmp_path / "new.key", generate=True)
    assert info.value.code == "secret_corrupt"
    assert _rows(state) == before  # nothing sealed again
    assert (state / KEY_FILE).read_text() == key_text
    assert not [e for e in _events(world.gate) if e["type"] == "secrets.rekeyed"]
    assert read_secret(world.gate, world.token, "staging/db").value.reveal() == "second-value-2"
    world.gate.close()


def test_an_approval_of_a_write_pending_across_a_rekey_is_refused(
    world: SecretWorld, tmp_path: Path
) -> None:
    """The approval bound the value with the old key: resumed after the rekey, the same
    value no longer matches what was approved (ask again); nothing is written."""
    pending = write_secret(world.gate, world.token, "production/db", "approved-before")
    assert isinstance(pending, opsgate.PendingApproval)
    world.approve(pending.approval_id)
    world.gate.rekey_secrets(tmp_path / "new.key", generate=True)
    with pytest.raises(opsgate.ApprovalError) as info:
        resume_secret(world.gate, pending.approval_id, world.token, value="approved-before")
    assert info.value.code == "digest_mismatch"
    with pytest.raises(opsgate.SecretError):
        read_secret(world.gate, world.token, "production/db")
    world.gate.close()


@pytest.mark.parametrize("problem", ["same key", "loose mode", "not a key", "missing"])
def test_a_bad_new_key_changes_nothing(world: SecretWorld, tmp_path: Path, problem: str) -> None:
    state = world.gate.state_dir
    new = tmp_path / "new.key"
    if problem == "same key":
        new.write_text((state / KEY_FILE).read_text())
        new.chmod(0o600)
    elif problem == "loose mode":
        new.write_text("cd" * 32)
        new.chmod(0o644)
    elif problem == "not a key":
        new.write_text("not a key at all")
        new.chmod(0o600)
    before = _rows(state)
    with pytest.raises(opsgate.OpsgateError) as info:
        world.gate.rekey_secrets(new)
    expected = {
        "same key": "master_key_unchanged",
        "loose mode": "master_key_insecure",
        "not a key": "master_key_invalid",
        "missing": "master_key_unavailable",
    }[problem]
    assert info.value.code == expected
    assert _rows(state) == before
    assert "cd" * 32 not in info.value.message
    world.gate.close()


def test_the_vault_backend_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = {"backend": "vault", "vault": {"address": "http://127.0.0.1:9", "mount": "kv"}}
    config["vault"]["auth"] = {"token_env": "OPSGATE_T_NOT_SET"}
    with (
        opsgate.Gate.open(state, secrets=config) as gate,
        pytest.raises(opsgate.ConfigError) as info,
    ):
        gate.rekey_secrets(tmp_path / "new.key", generate=True)
    assert info.value.code == "secrets_rekey_unsupported"


def test_the_cli_rekeys_and_never_prints_a_key(world: SecretWorld, tmp_path: Path) -> None:
    state = world.gate.state_dir
    world.gate.close()
    new = tmp_path / "cli.key"
    args = ["--state-dir", str(state), "keys", "rekey-secrets", "--new-key-file", str(new)]
    result = runner.invoke(app, [*args, "--generate"])
    assert result.exit_code == 0, result.stderr
    assert "3 secret versions sealed again" in result.stdout
    key_text = new.read_text().strip()
    assert key_text not in result.stdout and key_text not in result.stderr
    assert os.stat(new).st_mode & 0o777 == 0o600
    # A second --generate over the same file is refused, one error line.
    again = runner.invoke(app, [*args, "--generate"])
    assert again.exit_code == 1 and "Traceback" not in again.stderr
    assert "master_key_unavailable" in again.stderr


def _events(gate: opsgate.Gate) -> list[dict[str, object]]:
    return [r.event for r in gate.audit.events()]


def test_the_key_installed_is_the_one_that_sealed_even_if_its_file_changed(
    world: SecretWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state dir's key file gets the key every version was sealed with, not what
    the new key's file holds by then (rewritten meanwhile: the sealing key would be
    nowhere, and every secret with it)."""
    gate, new = world.gate, tmp_path / "new.key"
    real = gate.secrets.reseal

    def reseal_then_rewrite(*args: Any, **kwargs: Any) -> int:
        count = real(*args, **kwargs)
        new.unlink()
        new.write_text("ef" * 32)
        new.chmod(0o600)
        return count

    monkeypatch.setattr(gate.secrets, "reseal", reseal_then_rewrite)
    done = gate.rekey_secrets(new, generate=True)
    gate.close()
    with opsgate.Gate.open(gate.state_dir) as again:
        assert again.secrets.master_key().key_id == done["new_key_id"]
        assert read_secret(again, world.token, "staging/db").value.reveal() == "second-value-2"
    assert (gate.state_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600


class _Died(BaseException):
    """The process ending between two steps (nothing after it runs)."""


def test_a_rekey_that_died_after_its_commit_is_finished_at_the_next_start(
    world: SecretWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the commit and before the key file was replaced: every version is
    sealed under the new key and the state dir held only the old one (every read
    secret_key_mismatch, and the key only in the operator's file, if kept)."""
    import opsgate.secrets.keys as keys

    gate, state, new = world.gate, world.gate.state_dir, tmp_path / "new.key"
    old_text = (state / KEY_FILE).read_text()

    def die(*_: Any) -> None:
        raise _Died

    monkeypatch.setattr(keys, "install_key_file", die)
    with pytest.raises(_Died):
        gate.rekey_secrets(new, generate=True)
    monkeypatch.undo()
    assert (state / KEY_FILE).read_text() == old_text  # the state dir's key: still the old
    new_text = new.read_text()
    new.unlink()  # and the operator's copy lost: the staged one is all there is
    with opsgate.Gate.open(state) as again:
        assert read_secret(again, world.token, "staging/db").value.reveal() == "second-value-2"
        write_secret(again, world.token, "staging/db", "after-the-restart")
    assert (state / KEY_FILE).read_text() == new_text
    assert (state / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert not (state / keys.STAGED_KEY_FILE).exists()


def test_a_staged_key_whose_rekey_never_committed_is_dropped(
    world: SecretWorld, tmp_path: Path
) -> None:
    import opsgate.secrets.keys as keys

    state = world.gate.state_dir
    _corrupt_first_version(state)
    key_text = (state / KEY_FILE).read_text()
    with pytest.raises(opsgate.SecretError):
        world.gate.rekey_secrets(tmp_path / "new.key", generate=True)
    world.gate.close()
    with opsgate.Gate.open(state) as again:
        assert read_secret(again, world.token, "staging/db").value.reveal() == "second-value-2"
    assert (state / KEY_FILE).read_text() == key_text  # never the key that sealed nothing
    assert not (state / keys.STAGED_KEY_FILE).exists()
