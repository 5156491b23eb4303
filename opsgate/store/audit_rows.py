"""The audit log's rows: events, the head, checkpoints and the deferred events'
outbox, behind named statements (`AuditSQL`), and what other parts of the gate
ask of the log (`credential_issued`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Row, func, select

from opsgate.store import Store, gate_keys, schema

_e, _h, _c, _o = (
    schema.audit_events,
    schema.audit_head,
    schema.audit_checkpoints,
    schema.audit_outbox,
)


def credential_issued(conn: Connection, jti: str) -> bool:
    """Whether a `credential.issued` event names credential `jti`.

    Issuance keeps no per-token row (verification never needs one), so the audit
    log is the record; the type index bounds the search to issuances.
    """
    needle = orjson.dumps({"jti": jti}).decode()[1:-1]  # "jti":"<jti>", as stored
    row = conn.execute(
        select(_e.c.seq)
        .where(_e.c.type == "credential.issued", _e.c.body.contains(needle, autoescape=True))
        .limit(1)
    ).first()
    return row is not None


class Snapshot(NamedTuple):
    """The audit rows, the head and the gate's keys, as one read transaction sees them."""

    rows: Iterator[tuple[Any, ...]]
    head_rows: Callable[[], list[tuple[Any, Any]]]
    key_rows: Callable[[], list[gate_keys.KeyRow]]


class AuditSQL:
    """The audit log's statements, rendered once for the store's driver.

    The writes run on a raw DBAPI cursor (the hot path of every operation: a
    group-commit batch's transaction, or the caller's), the reads on a connection.
    The head row's lock (FOR UPDATE on PostgreSQL; SQLite's write transaction
    holds the database) keeps seq gap-free across threads, processes and replicas.
    """

    def __init__(self, store: Store) -> None:
        q = store.q
        self._store = store
        lock = "" if store.is_sqlite else " FOR UPDATE"
        self._head = f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}"  # noqa: S608
        self._insert = q(
            "INSERT INTO audit_events (seq, at, type, actor, body, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self._move_head = q("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")
        self._claim = q("DELETE FROM audit_outbox WHERE id = ?")
        self._hash_of = q("SELECT hash FROM audit_events WHERE seq = ?")
        self._drop_checkpoint = q("DELETE FROM audit_checkpoints WHERE seq = ?")
        self._checkpoint = q(
            "INSERT INTO audit_checkpoints (seq, hash, at, kid, signature) VALUES (?, ?, ?, ?, ?)"
        )

    # -- writes, on a DBAPI cursor ------------------------------------------------------

    def lock_head(self, cur: Any) -> tuple[int, str]:
        """The head (seq, hash), its row locked until the transaction ends."""
        cur.execute(self._head)
        head = cur.fetchone()
        return int(head[0]), str(head[1])

    def stored_hash(self, cur: Any, seq: int) -> Any:
        """The hash stored for event `seq` (None when there is none), in the caller's
        transaction."""
        cur.execute(self._hash_of, (seq,))
        row = cur.fetchone()
        return None if row is None else row[0]

    def holds(self, cur: Any, seq: int, digest: str) -> bool:
        """Whether event `seq` is in the log with hash `digest` (a record this writer
        may have committed, whatever was appended after it)."""
        return bool(self.stored_hash(cur, seq) == digest)

    def append(self, cur: Any, rows: list[tuple[Any, ...]], seq: int, digest: str) -> None:
        """Insert (seq, at, type, actor, body, prev_hash, hash) rows and move the head
        to (seq, digest), under the head lock the caller holds."""
        cur.executemany(self._insert, rows)
        cur.execute(self._move_head, (seq, digest))

    def claim_deferred(self, cur: Any, row_id: int) -> bool:
        """Take a deferred event out of the outbox; False when another writer did."""
        cur.execute(self._claim, (row_id,))
        return bool(cur.rowcount == 1)

    def store_checkpoint(
        self, cur: Any, seq: int, digest: str, at: float, kid: str, signature: str
    ) -> None:
        cur.execute(self._drop_checkpoint, (seq,))
        cur.execute(self._checkpoint, (seq, digest, at, kid, signature))

    # -- the deferred events' outbox ----------------------------------------------------

    @staticmethod
    def defer(conn: Connection, at: float, body: str) -> None:
        """Keep an event (canonical JSON) in the caller's transaction, to be chained later."""
        conn.execute(_o.insert().values(at=at, event=body))

    @staticmethod
    def deferred(conn: Connection, limit: int) -> list[tuple[int, float, str]]:
        """(id, at, event) of the oldest deferred events."""
        rows = conn.execute(select(_o.c.id, _o.c.at, _o.c.event).order_by(_o.c.id).limit(limit))
        return [(int(r[0]), float(r[1]), str(r[2])) for r in rows.all()]

    # -- reads --------------------------------------------------------------------------

    @staticmethod
    def head(conn: Connection) -> tuple[int, str]:
        row = conn.execute(select(_h.c.seq, _h.c.hash)).one()
        return int(row[0]), str(row[1])

    @staticmethod
    def head_rows(conn: Connection) -> list[tuple[Any, Any]]:
        """Every row of the head table as stored (verification: exactly one is expected)."""
        return [(r[0], r[1]) for r in conn.execute(select(_h.c.seq, _h.c.hash)).all()]

    @staticmethod
    def count(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(_e)).scalar_one())

    @staticmethod
    def newest(
        conn: Connection, limit: int, *, event_type: str | None, actor: str | None
    ) -> list[Row[Any]]:
        """The newest `limit` rows (of a type, of an actor), newest first."""
        q = select(_e).order_by(_e.c.seq.desc()).limit(limit)
        if event_type:
            q = q.where(_e.c.type == event_type)
        if actor:
            q = q.where(_e.c.actor == actor)
        return list(conn.execute(q).all())

    @staticmethod
    def after(
        conn: Connection,
        after_seq: int,
        limit: int,
        *,
        event_type: str | None,
        actor: str | None,
    ) -> list[Row[Any]]:
        """Up to `limit` rows after `after_seq` (of a type, of an actor), in seq order."""
        q = select(_e).where(_e.c.seq > after_seq)
        if actor is not None:
            q = q.where(_e.c.actor == actor)
        if event_type is not None:
            q = q.where(_e.c.type == event_type)
        return list(conn.execute(q.order_by(_e.c.seq).limit(limit)).all())

    @staticmethod
    def seq_with_hash(conn: Connection, digest: str) -> int | None:
        row = conn.execute(select(_e.c.seq).where(_e.c.hash == digest)).first()
        return None if row is None else int(row[0])

    @staticmethod
    def hash_at(conn: Connection, seq: int) -> Any:
        """The stored hash of event `seq` as stored (None when there is none)."""
        row = conn.execute(select(_e.c.hash).where(_e.c.seq == seq)).first()
        return None if row is None else row[0]

    @staticmethod
    def at_of(conn: Connection, seq: int) -> Any:
        """The stored time of event `seq` as stored (None when there is none)."""
        return conn.execute(select(_e.c.at).where(_e.c.seq == seq)).scalar()

    @staticmethod
    def checkpoints(conn: Connection) -> list[Row[Any]]:
        return list(conn.execute(select(_c)).all())

    @contextmanager
    def snapshot(self, batch: int = 20_000) -> Iterator[Snapshot]:
        """Every (seq, at, type, actor, body, prev_hash, hash) row in seq order, as
        stored, cheaply (a server-side cursor on PostgreSQL), and readers of the head
        table's (seq, hash) rows and of the gate's key rows: all from one snapshot, so
        events appended (or a key rotated) while a log of millions is walked are
        neither walked nor in what it is checked against."""
        sql = (
            "SELECT seq, at, type, actor, body, prev_hash, hash FROM audit_events "
            "ORDER BY seq NULLS FIRST"
        )
        with self._store.raw_reader() as raw:
            if self._store.is_sqlite:
                cur = raw.cursor()
                cur.execute("BEGIN")  # WAL: one snapshot until the rollback
            else:
                # One snapshot for every statement of the transaction, not one each
                # (set before any query: nothing of a checkout's ping stays open).
                raw.rollback()
                raw.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = raw.driver_connection.cursor(name="opsgate_audit_verify")  # server-side
                cur.itersize = batch

            def rows() -> Iterator[tuple[Any, ...]]:
                cur.execute(sql)
                while True:
                    found = cur.fetchmany(batch)
                    if not found:
                        break
                    yield from found

            def head_rows() -> list[tuple[Any, Any]]:
                head = raw.cursor()
                head.execute("SELECT seq, hash FROM audit_head")
                return [(r[0], r[1]) for r in head.fetchall()]

            try:
                yield Snapshot(rows(), head_rows, lambda: gate_keys.chain_rows_on(raw.cursor()))
            finally:
                cur.close()
