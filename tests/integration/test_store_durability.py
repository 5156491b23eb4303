"""`DedicatedWriter.transaction(durable=False)`: a commit without a disk sync of its
own (a proof id, a read's attempt: the durable commit the answer waits for syncs it)
must never leave the connection at a level that later durable writes would use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import durable_level, sync_level

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
                assert sync_level(store, cur) in ("normal", "off")
            with writer.transaction() as cur:
                assert sync_level(store, cur) == durable_level(store)
            with writer.transaction() as cur:
                assert sync_level(store, cur) == durable_level(store)
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
            assert sync_level(store, cur) == durable_level(store)
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
