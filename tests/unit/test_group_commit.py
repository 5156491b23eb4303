"""Group commit: concurrent callers share transactions, and the replay store stays
exact under it — one proof id is accepted once whether its uses race in one batch,
in two batches or on two gates over one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import opsgate
from opsgate.errors import InvalidCredential, StoreError
from opsgate.store.group import GroupCommit


def _race(n: int, fn: Any) -> list[Any]:
    """Run fn(i) for i in range(n) on n threads released together; results in order."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # the result under test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_each_caller_gets_its_own_result_and_callers_share_batches() -> None:
    seen: list[list[int]] = []

    def write(batch: list[int]) -> list[int]:
        time.sleep(0.005)  # a commit: callers arriving meanwhile queue for the next
        seen.append(list(batch))
        return [x * 10 for x in batch]

    group: GroupCommit[int, int] = GroupCommit(write)
    results = _race(32, group.submit)
    assert results == [i * 10 for i in range(32)]
    assert sorted(x for batch in seen for x in batch) == list(range(32))
    assert group.batches == len(seen) < 32  # some callers shared a transaction


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs() -> None:
    fail = threading.Event()
    fail.set()

    def write(batch: list[int]) -> list[int]:
        if fail.is_set():
            raise StoreError("state database unavailable: OperationalError")
        return batch

    group: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(StoreError):
        group.submit(1)
    fail.clear()
    assert group.submit(2) == 2


def test_a_write_that_returns_the_wrong_number_of_results_fails_closed() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda batch: [])
    with pytest.raises(RuntimeError):
        group.submit(1)


def _bad(why: str, code: str = "bad_proof") -> InvalidCredential:
    return InvalidCredential(why, code=code)


def _use(gate: opsgate.Gate, jti: str, iat: float | None = None) -> str:
    try:
        gate.credential_manager.proofs.use_once(jti, time.time() if iat is None else iat, 65, _bad)
    except InvalidCredential as exc:
        return exc.code
    return "accepted"


def test_one_proof_id_raced_by_many_threads_is_accepted_once(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        for round_ in range(5):
            jti = f"race-{round_}-0123456789abcdef"
            results = Counter(_race(16, lambda _i, j=jti: _use(gate, j)))
            assert results == {"accepted": 1, "proof_replayed": 15}, results


def test_distinct_proof_ids_raced_are_all_accepted_and_then_refused(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        jtis = [f"distinct-{i:04d}-0123456789abcdef" for i in range(64)]
        assert _race(64, lambda i: _use(gate, jtis[i])) == ["accepted"] * 64
        assert _race(64, lambda i: _use(gate, jtis[i])) == ["proof_replayed"] * 64


def test_a_proof_id_twice_in_one_batch_is_accepted_once_and_stale_ones_never(
    tmp_path: Path, database_url: str | None
) -> None:
    """The batch itself (what one leader writes in one transaction)."""
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        now = time.time()
        batch = [
            ("twice-0123456789abcdef", now, 65.0),
            ("stale-0123456789abcdef", now - 600, 65.0),
            ("twice-0123456789abcdef", now, 65.0),
            ("future-0123456789abcdef", now + 600, 65.0),
            ("once-0123456789abcdef", now, 65.0),
        ]
        verdicts = gate.credential_manager.proofs._record_uses(batch)
        assert verdicts == ["accepted", "stale", "replayed", "stale", "accepted"]
        assert _use(gate, "stale-0123456789abcdef") == "accepted"  # stale was not recorded
        assert _use(gate, "once-0123456789abcdef") == "proof_replayed"


def test_two_gates_on_one_database_accept_a_raced_proof_once(
    tmp_path: Path, database_url: str | None
) -> None:
    a = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    try:
        for round_ in range(5):
            jti = f"pair-{round_}-0123456789abcdef"
            results = Counter(_race(16, lambda i, j=jti: _use(a if i % 2 else b, j)))
            assert results == {"accepted": 1, "proof_replayed": 15}, results
    finally:
        b.close()
        a.close()


def test_two_gates_batching_the_same_ids_in_opposite_orders_never_deadlock(
    tmp_path: Path, database_url: str | None
) -> None:
    """Each replica's batch holds the same proof ids (one proof sent to both), listed in
    opposite orders: on PostgreSQL that was a lock cycle, broken by failing one batch
    (a 503 for a genuine request). Every id is accepted exactly once, no batch fails."""
    a = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    try:
        for round_ in range(4):
            now = time.time()
            ids = [f"cross-{round_}-{k:04d}-0123456789abcdef" for k in range(3000)]
            batches = [[(j, now, 65.0) for j in ids], [(j, now, 65.0) for j in reversed(ids)]]
            out = _race(2, lambda i: (a, b)[i].credential_manager.proofs._record_uses(batches[i]))
            assert not any(isinstance(o, Exception) for o in out), out
            first, second = out[0], list(reversed(out[1]))
            for k, j in enumerate(ids):
                assert sorted((first[k], second[k])) == ["accepted", "replayed"], (j, out)
    finally:
        b.close()
        a.close()
