"""Rotating the embedded master key while another replica writes, on PostgreSQL: a
replica still holding the old key may not add a version sealed with it that the
re-sealing does not see (that version would open under no key the gate still has)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from secret_helpers import open_world

from opsgate.secrets import SecretError, SecretValue
from opsgate.secrets.embedded import EmbeddedSecretStore
from opsgate.secrets.keys import MASTER_KEY_ENV, MasterKey, create_key_file, parse_master_key
from opsgate.secrets.sdk import read_secret, write_secret
from opsgate.store import secrets as sql

OLD = "ab" * 32


@pytest.mark.parametrize("first", [False, True], ids=["existing", "first-secret"])
def test_a_write_under_the_old_key_racing_a_rekey_is_sealed_again_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, first: bool
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, OLD)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch, database_url=pg_url)
    try:
        if not first:
            write_secret(w.gate, w.token, "staging/db", "sealed-before")
        # Another replica, still on the old key, on the same database: its write has
        # checked the recorded key and waits before inserting its version.
        stale = EmbeddedSecretStore(
            w.gate.store,
            gate_id=w.gate.gate_id,
            master_key=lambda: MasterKey(parse_master_key(OLD), "environment"),
        )
        paused, go = threading.Event(), threading.Event()
        real_insert = sql.insert_secret_version

        def slow_insert(*args: Any, **kwargs: Any) -> None:
            paused.set()
            go.wait(10)
            real_insert(*args, **kwargs)

        monkeypatch.setattr(sql, "insert_secret_version", slow_insert)
        outcomes: dict[str, BaseException | int] = {}

        def run(name: str, fn: Any) -> threading.Thread:
            def body() -> None:
                try:
                    outcomes[name] = fn()
                except BaseException as exc:  # handed to the test
                    outcomes[name] = exc

            thread = threading.Thread(target=body)
            thread.start()
            return thread

        new_key = create_key_file(tmp_path / "new.key")
        writer = run(
            "put",
            lambda: stale.put(
                "secrets/staging/other",
                SecretValue("written-meanwhile"),
                cas=0,
                actor="replica",
                now=1.0,
            ),
        )
        assert paused.wait(10)
        rekey = run("reseal", lambda: w.gate.secrets.reseal(new_key, also=lambda c, n: None))
        rekey.join(1.0)  # done by now unless the write in flight holds it off
        go.set()
        writer.join(10)
        rekey.join(10)
        assert not writer.is_alive() and not rekey.is_alive()
        with w.gate.store.read() as conn:
            rows = sql.sealed_versions(conn)
            recorded = sql.secret_key_id(conn)
        assert recorded == new_key.key_id, outcomes
        assert {r.key_id for r in rows} == {new_key.key_id}, "a version sealed with the old key"
        put = outcomes["put"]
        if isinstance(put, BaseException):
            assert isinstance(put, SecretError) and put.code == "secret_key_mismatch"
        else:  # written before the re-sealing read the rows: sealed again with them
            assert read_secret(w.gate, w.token, "staging/other").value.reveal() == (
                "written-meanwhile"
            )
    finally:
        w.gate.close()
