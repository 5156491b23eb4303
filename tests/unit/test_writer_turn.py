"""Writers of one SQLite state database queue for their turn across processes.

Several processes serve one state dir (`opsgate serve --workers N`); SQLite's busy
handler sleeps 1 to 100 ms per retry, so the processes queue on a lock file beside
the database instead. It is only a queue: SQLite's own lock still decides."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

import opsgate
from opsgate.errors import StoreError
from opsgate.store import DB_FILE, Store, WriterTurn

CHILD = """
import sys, threading
import opsgate
gate = opsgate.Gate.open(sys.argv[1], create=False)
def run(t):
    for i in range(int(sys.argv[3])):
        gate.audit.append("test.concurrent", actor=sys.argv[2], thread=t, n=i)
threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
gate.close()
"""


def _held(path: str) -> int:
    """Another holder of the turn: a separate open file description, flock'ed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_the_lock_file_sits_beside_the_database_owner_only(tmp_path: Path) -> None:
    store = Store.for_state_dir(tmp_path, None)
    try:
        with store.write() as conn:
            conn.execute(text("SELECT 1"))
        lock = tmp_path / f"{DB_FILE}-writer"
        assert lock.is_file()
        assert lock.stat().st_mode & 0o777 == 0o600
    finally:
        store.dispose()


def test_a_turn_held_elsewhere_times_out_typed_and_writes_nothing(tmp_path: Path) -> None:
    store = Store.for_state_dir(tmp_path, None)
    with store.write() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    store._sqlite_writer = WriterTurn(store.url, timeout=0.3)
    fd = _held(str(tmp_path / f"{DB_FILE}-writer"))
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as exc, store.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        assert exc.value.code == "store_timeout"
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        os.close(fd)
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    # Released: the next write goes through.
    with store.write() as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))
    with store.read() as conn:
        assert conn.execute(text("SELECT x FROM t")).scalars().all() == [2]
    store.dispose()


def test_a_waiting_writer_goes_as_soon_as_the_turn_is_released(tmp_path: Path) -> None:
    turn = WriterTurn(f"sqlite:///{tmp_path / 'db'}", timeout=10)
    fd = _held(str(tmp_path / "db-writer"))
    threading.Timer(0.2, lambda: os.close(fd)).start()
    started = time.monotonic()
    with turn.turn():
        waited = time.monotonic() - started
    assert 0.15 <= waited < 0.5
    turn.close()


def test_a_database_without_a_file_has_no_lock_file_and_still_writes() -> None:
    turn = WriterTurn("sqlite://")
    with turn.turn():
        pass
    turn.close()


def test_processes_appending_at_once_leave_one_gap_free_verified_chain(tmp_path: Path) -> None:
    state = tmp_path / "state"
    opsgate.Gate.open(state).close()
    per_thread = 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), f"proc-{n}", str(per_thread)], env=env
        )
        for n in range(3)
    ]
    for child in children:
        assert child.wait(timeout=300) == 0
    with opsgate.Gate.open(state, create=False) as gate:
        report = gate.audit.verify()
        events = list(gate.audit.events(event_type="test.concurrent"))
    assert report.ok, report
    assert len(events) == 3 * 4 * per_thread
    seqs = [r.seq for r in events]
    assert len(set(seqs)) == len(seqs)
    for n in range(3):
        mine = [r.event["n"] for r in events if r.actor == f"proc-{n}"]
        assert sorted(mine) == sorted(list(range(per_thread)) * 4)


def test_a_lock_file_open_to_others_is_not_used(tmp_path: Path) -> None:
    """Someone else made the lock file (or made it readable to others) and holds its
    lock: writers do not queue on it (they would wait for a stranger), SQLite's own lock
    still orders them."""
    lock = tmp_path / "db-writer"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    os.fchmod(fd, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        turn = WriterTurn(f"sqlite:///{tmp_path / 'db'}", timeout=0.3)
        started = time.monotonic()
        with turn.turn():
            pass
        assert time.monotonic() - started < 0.3
        turn.close()
    finally:
        os.close(fd)
