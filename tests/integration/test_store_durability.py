"""`DedicatedWriter.transaction(durable=False)`: a commit without a disk sync of its
own (a proof id, a read's attempt: the durable commit the answer waits for syncs it)
must never leave the connection at a level that later durable writes would use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import durable_level, sync_level
from sqlalchemy.engine import make_url

import opsgate
from opsgate.store import DedicatedWriter, Store


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[Store]:
    gate = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    yield gate.store
    gate.close()


def test_an_undurable_commit_is_undurable_and_every_later_one_durable(store: Store) -> None:
    writer = DedicatedWriter(store)
    try:
        for _ in range(3):
            with writer.transaction(durable=False) as cur:
                assert sync_level(store, cur, writer) in ("normal", "off")
            with writer.transaction() as cur:
                assert sync_level(store, cur, writer) == durable_level(store)
            with writer.transaction() as cur:
                assert sync_level(store, cur, writer) == durable_level(store)
    finally:
        writer.close()


def test_a_failed_undurable_commit_commits_nothing_and_leaves_commits_durable(
    store: Store,
) -> None:
    writer = DedicatedWriter(store)
    insert = store.q("INSERT INTO used_proofs (jti, expires_at) VALUES (?, ?)")
    try:
        with pytest.raises(RuntimeError), writer.transaction(durable=False) as cur:
            cur.execute(insert, ("x" * 22, 1e12))
            raise RuntimeError("boom")
        with writer.transaction() as cur:
            assert sync_level(store, cur, writer) == durable_level(store)
            cur.execute("SELECT jti FROM used_proofs")
            assert cur.fetchall() == []
    finally:
        writer.close()


def test_a_driver_error_on_the_replay_store_is_a_store_error(store: Store) -> None:
    """A raw cursor's failure reaches callers in the error family, not as the driver's."""
    from opsgate.credentials.proof import ProofChecker

    checker = ProofChecker(store)
    try:
        with store.write() as conn:
            conn.exec_driver_sql("DROP TABLE used_proofs")
        with pytest.raises(opsgate.StoreError):
            checker._record_uses([("gone-0123456789abcdef", 0.0, 1e12)])
    finally:
        checker.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    gate = opsgate.Gate.open(tmp_path / "state")
    yield gate.store
    gate.close()


def test_a_durable_sqlite_commit_syncs_its_log_after_its_turn(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite in WAL mode a durable transaction commits at NORMAL and syncs the
    write-ahead log itself, after the commit and outside the writers' turn (the next
    writer goes on meanwhile); an undurable one syncs nothing."""
    import opsgate.store as store_module

    store = sqlite_store
    synced: list[tuple[str, bool, list[Any]]] = []
    entries: list[bool] = []  # whether each sync took the log's directory entry too
    real = store_module.sync_file
    insert = store.q("INSERT INTO used_proofs (jti, expires_at) VALUES (?, ?)")

    def recording(path: str, *, directory: bool = False) -> None:
        turn_free = store._sqlite_writer._lock.acquire(blocking=False)
        if turn_free:
            store._sqlite_writer._lock.release()
        with store.read() as conn:  # committed (visible elsewhere) before the sync
            rows = list(conn.exec_driver_sql("SELECT jti FROM used_proofs"))
        synced.append((path, turn_free, rows))
        entries.append(directory)
        real(path, directory=directory)

    monkeypatch.setattr(store_module, "sync_file", recording)
    writer = DedicatedWriter(store)
    try:
        with writer.transaction(durable=False) as cur:
            cur.execute(insert, ("a" * 22, 1e12))
        assert synced == []
        with writer.transaction() as cur:
            cur.execute(insert, ("b" * 22, 1e12))
        assert len(synced) == 1
        path, turn_free, rows = synced[0]
        assert path == f"{make_url(store.url).database}-wal"
        assert turn_free
        assert sorted(r[0] for r in rows) == ["a" * 22, "b" * 22]
        with writer.transaction() as cur:
            cur.execute(insert, ("e" * 22, 1e12))
        assert entries == [True, False]  # the log's entry once per connection
    finally:
        writer.close()


def test_a_log_that_cannot_be_synced_fails_the_commit_closed(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A durable transaction whose log cannot be synced raises StoreError: its caller
    answers no one as if it were durable."""
    store = sqlite_store
    writer = DedicatedWriter(store)
    insert = store.q("INSERT INTO used_proofs (jti, expires_at) VALUES (?, ?)")
    try:
        with writer.transaction() as cur:  # opens the connection and finds its log
            cur.execute(insert, ("c" * 22, 1e12))
        store._wal = str(tmp_path / "gone" / "opsgate.db-wal")  # a log that is not there
        with pytest.raises(opsgate.StoreError) as caught, writer.transaction() as cur:
            cur.execute(insert, ("d" * 22, 1e12))
        assert caught.value.code == "store_unavailable"
        assert "log could not be synced" in caught.value.message
    finally:
        writer.close()


def test_sync_file_syncs_the_data_then_the_entry_and_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's data is synced with the data sync (fdatasync on Linux, as SQLite
    syncs its own log), its directory entry with a full fsync; a data sync that fails
    is a StoreError, never a silent success."""
    import os

    import opsgate.store as store_module

    log = tmp_path / "db-wal"
    log.write_bytes(b"frames")
    calls: list[tuple[str, bool]] = []
    real_data, real_full = store_module._sync_data, os.fsync

    def data(fd: int) -> None:
        calls.append(("data", os.path.isdir(f"/proc/self/fd/{fd}")))
        real_data(fd)

    def full(fd: int) -> None:
        calls.append(("full", os.path.isdir(f"/proc/self/fd/{fd}")))
        real_full(fd)

    monkeypatch.setattr(store_module, "_sync_data", data)
    monkeypatch.setattr(os, "fsync", full)
    store_module.sync_file(str(log), directory=True)
    assert calls == [("data", False), ("full", True)]
    if hasattr(os, "fdatasync"):
        assert real_data is os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module, "_sync_data", failing)
    with pytest.raises(opsgate.StoreError) as caught:
        store_module.sync_file(str(log))
    assert "log could not be synced" in caught.value.message
