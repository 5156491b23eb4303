"""The suite's migrated template (tests/conftest.py) must be exactly what the real
migrations make of an empty database, or every test using it would test another
schema."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import opsgate
from opsgate.store import Store


def _dump(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(conn.iterdump())


def test_template_is_what_migrations_make(tmp_path: Path, migrated_template: bytes) -> None:
    fresh = tmp_path / "fresh.db"
    store = Store(f"sqlite:///{fresh}")
    Store.migrate.__wrapped__(store)  # type: ignore[attr-defined]  # the real migrations
    store.dispose()
    copy = tmp_path / "copy.db"
    copy.write_bytes(migrated_template)
    assert _dump(copy) == _dump(fresh)
    assert any("CREATE TABLE" in line and "audit_events" in line for line in _dump(fresh))


def test_a_gate_on_the_template_is_a_new_gate_with_a_0600_database(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "state") as gate:
        assert gate.audit.verify().ok
        assert gate.audit.count() >= 1  # its own creation events, nothing of another gate
        mode = (tmp_path / "state" / "opsgate.db").stat().st_mode & 0o777
    assert mode == 0o600
