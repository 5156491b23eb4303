"""An operation that changes nothing (a secret read or listing, a monitoring view) has
its attempt and its outcome committed together, in one durable transaction, before the
caller gets anything: one disk sync per read. Everything else is written as before:
every record of a write is durable, the attempt before the run. A read whose records
cannot be written returns no value and leaves no record. Checked on the transaction
itself (SQLite's synchronous level, PostgreSQL's synchronous_commit) on both
databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import durable_level, sync_level
from secret_helpers import SecretWorld, open_world

import opsgate
from opsgate.secrets.sdk import SecretRead, list_secrets, read_secret, rotate_secret, write_secret

VALUE = "durability-check-value-7f3a"


@pytest.fixture
def world(
    tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretWorld]:
    monkeypatch.delenv("OPSGATE_MASTER_KEY", raising=False)
    w = open_world(
        tmp_path / "state", "embedded", monkeypatch=monkeypatch, database_url=database_url
    )
    try:
        yield w
    finally:
        w.gate.close()


@pytest.fixture
def commits(
    world: SecretWorld, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[tuple[str, ...], str]]:
    """Each audit transaction from now on: (its events' types, its sync level)."""
    writer = world.gate.audit._writer
    store = world.gate.store
    seen: list[tuple[tuple[str, ...], str]] = []
    batch_types: list[tuple[str, ...]] = []
    real_try, real_lock_head = writer._try, writer._sql.lock_head

    def recording_try(batch: list[Any], written: list[Any]) -> Any:
        batch_types.append(tuple(p.event["type"] for p in batch))
        return real_try(batch, written)

    def recording_lock_head(cur: Any) -> Any:
        seen.append((batch_types[-1], sync_level(store, cur, writer.connection)))
        return real_lock_head(cur)

    monkeypatch.setattr(writer, "_try", recording_try)
    monkeypatch.setattr(writer._sql, "lock_head", recording_lock_head)
    return seen


def test_a_read_syncs_once_and_a_write_syncs_every_record(
    world: SecretWorld, commits: list[tuple[tuple[str, ...], str]]
) -> None:
    w, store = world, world.gate.store
    write_secret(w.gate, w.token, "staging/db", VALUE)
    writes = list(commits)
    assert [t for t, _ in writes] == [("operation.attempt",), ("operation.outcome",)]
    assert {level for _, level in writes} == {durable_level(store)}

    commits.clear()
    before = world.gate.audit.head()[0]
    got = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(got, SecretRead) and got.value.reveal() == VALUE
    # One transaction, at the durable level, holding both records of the read.
    assert commits == [(("operation.attempt", "operation.outcome"), durable_level(store))]
    attempt, outcome = list(world.gate.audit.events(after_seq=before))
    assert (attempt.type, outcome.type) == ("operation.attempt", "operation.outcome")
    assert outcome.event["attempt_seq"] == attempt.seq == outcome.seq - 1
    assert attempt.event["capability"] == outcome.event["capability"]
    assert VALUE not in attempt.event.__repr__() + outcome.event.__repr__()

    commits.clear()
    list_secrets(w.gate, w.token, "staging")
    assert commits == [(("operation.attempt", "operation.outcome"), durable_level(store))]

    commits.clear()
    rotate_secret(w.gate, w.token, "staging/db")
    assert [t for t, _ in commits] == [("operation.attempt",), ("operation.outcome",)]
    assert {level for _, level in commits} == {durable_level(store)}
    assert world.gate.audit.verify().ok


def test_a_read_whose_outcome_cannot_be_written_returns_no_value(
    world: SecretWorld, commits: list[tuple[tuple[str, ...], str]]
) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", VALUE)
    commits.clear()
    before = w.gate.audit.head()[0]
    writer = w.gate.audit._writer
    real_try = writer._try
    calls = [0]

    def outcome_fails(batch: list[Any], written: list[Any]) -> Any:
        calls[0] += 1
        if any(p.event["type"] == "operation.outcome" for p in batch):
            raise OSError("simulated audit storage failure")
        return real_try(batch, written)

    writer._try = outcome_fails
    try:
        with pytest.raises(opsgate.OpsgateError) as err:
            read_secret(w.gate, w.token, "staging/db")
    finally:
        writer._try = real_try
    assert err.value.code == "audit_write_failed"
    assert VALUE not in str(err.value) and VALUE not in repr(err.value)
    # Nothing of the read holds: neither its attempt nor its outcome was written.
    assert calls[0] >= 1
    assert [r.type for r in w.gate.audit.events(after_seq=before)] == []
    assert w.gate.audit.verify().ok
