"""`Store.write(durable=False)`: a proof id committed without a disk sync of its own
(the audit commit the answer waits for syncs it) must never leave a connection that
later durable writes would use without their sync."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection

import opsgate
from opsgate.store import Store


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[Store]:
    gate = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    yield gate.store
    gate.close()


def _sync_level(store: Store, conn: Connection) -> str:
    if store.is_sqlite:
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}[
            int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
        ]
    return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar_one())


def _durable_level(store: Store) -> str:
    return "full" if store.is_sqlite else "on"


def test_an_undurable_write_is_undurable_and_every_later_write_is_durable(store: Store) -> None:
    with store.write(durable=False) as conn:
        assert _sync_level(store, conn) in ("normal", "off")
    # Several at once: whichever pooled connection a writer gets is back at full sync.
    for _ in range(5):
        with store.write() as conn:
            assert _sync_level(store, conn) == _durable_level(store)


def test_a_failed_undurable_write_commits_nothing_and_leaves_writes_durable(
    store: Store,
) -> None:
    from opsgate.store import schema

    with pytest.raises(RuntimeError), store.write(durable=False) as conn:
        conn.execute(schema.used_proofs.insert().values(jti="x" * 22, expires_at=1e12))
        raise RuntimeError("boom")
    with store.write() as conn:
        assert _sync_level(store, conn) == _durable_level(store)
        rows = conn.execute(schema.used_proofs.select()).fetchall()
    assert [r.jti for r in rows] == []
