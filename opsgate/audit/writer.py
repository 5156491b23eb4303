"""The audit log's writer: group commit of units of work, and the deferred events' flusher.

A `Unit` is one audit event and the state change that must commit with it (an
issuance and the agent's `last_issued_at`, an outcome and its trust change): one
transaction, all or nothing. Concurrent callers' units are batched into one
transaction by whichever caller holds the writer role (group commit), so many
threads share one fsync while a lone caller pays no thread hop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from opsgate.audit.checkpoints import Checkpoint
from opsgate.audit.events import AuditRecord, merge, number
from opsgate.errors import AuditError
from opsgate.store import Store
from opsgate.store.audit_rows import AuditSQL

log = structlog.get_logger("opsgate.audit")

# Where a change's row locks sit in the one global order, (depth, did) for an
# agent's row: a batch runs its changes sorted by it, as every transaction that
# locks several agents' rows does (see AgentRegistry.descendants).
LockOrder = tuple[Any, ...]
# A key a change may return: feed entries (kind, subject) for other replicas to see
# it, written after every change of the batch has taken its row locks.
FEED = "_feed"
# A key a change may return (true): its event is not written after all (a deferred
# event another replica chained first).
DROP = "_drop"
# Failures after which a batch is written again from the start: a deadlock the
# server broke, a serialization failure, a backend terminated under us. A lock or
# statement timeout is not among them: those fail the batch at once (fail fast).
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "57P01", "57P02", "57P03"})
_BATCH_ATTEMPTS = 3
# How long a flush of deferred events waits before retrying after a failure (doubling).
_FLUSH_RETRY = (1.0, 10.0)


@dataclass(frozen=True, slots=True)
class Change:
    """A state change that commits in its audit event's transaction.

    `run` gets the transaction's DBAPI cursor once the audit head is locked (its
    statements are a store module's); what it returns joins the event (e.g. the
    trust score an UPDATE ... RETURNING produced; FEED, DROP). It may run more than
    once (a batch written again after a deadlock or a lost connection): each run
    starts from a rolled-back transaction. `lock_order` places the row locks it
    takes in the global order.
    """

    run: Callable[[Any], dict[str, Any] | None]
    lock_order: LockOrder = ()


# Runs in the event's transaction once it is numbered (its record known), after
# every change of the batch: bookkeeping keyed by the event's seq.
Then = Callable[[Any, AuditRecord], None]


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of work: an audit event (type, actor, time, fields) and what must
    commit with it or not at all: `change` (a state change whose result joins the
    event) and `then` (bookkeeping keyed by the event's seq)."""

    event_type: str
    fields: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    at: float | None = None
    change: Change | None = None
    then: Then | None = None
    # In `AuditLog.commit_all`: the field of this event that holds the seq of the unit
    # committed just before it (an outcome naming the attempt it commits with).
    previous_seq_field: str | None = None


def _transient(exc: BaseException) -> bool:
    """A failure that writing the batch again can cure (PostgreSQL only)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _RETRY_SQLSTATES:
        return True
    # psycopg's OperationalError without a state: the connection is gone.
    return (
        sqlstate is None
        and type(exc).__module__.startswith("psycopg")
        and type(exc).__name__ == "OperationalError"
    )


@dataclass(slots=True)
class Pending:
    """A unit waiting in the queue: its prepared event, and in the end its record
    (None when its change dropped it) or the error that failed its batch."""

    event: dict[str, Any]
    at: float
    change: Change | None = None
    then: Then | None = None
    dropped: bool = False
    record: AuditRecord | None = None
    error: BaseException | None = None
    # (field, slot): set `field` to that slot's seq once the batch is numbered; the
    # slot is an earlier one of the same submission (if it was dropped, the batch
    # fails: a record never names a seq that is not in the log).
    link: tuple[str, Pending] | None = None
    lead: bool = False  # woken to write the next batch rather than with a result
    # Its caller syncs the store's log itself before it answers (`Store.sync_log`): a
    # batch of such slots only commits (see DedicatedWriter.transaction).
    sync_later: bool = False
    # Held from creation until the slot's batch is written: a follower blocks on it.
    # (A bare lock is the cheapest one-shot wake-up CPython has.)
    gate: Any = None


# In the batch's transaction, with its last record: the checkpoint written there, if any.
OnBatch = Callable[[Any, AuditRecord], Checkpoint | None]
# After a batch committed: its last record (None if it wrote none) and its checkpoint.
AfterBatch = Callable[[AuditRecord | None, Checkpoint | None], None]


class GroupCommit:
    """Writes queued units in as few transactions as the load allows. Thread-safe."""

    def __init__(
        self,
        store: Store,
        sql: AuditSQL,
        *,
        feed: Callable[[Any, list[tuple[str, str, float]]], None] | None,
        on_batch: OnBatch,
        after_batch: AfterBatch,
    ) -> None:
        self._sql = sql
        self._feed = feed  # writes change-feed entries on a batch's cursor
        self._on_batch = on_batch
        self._after_batch = after_batch
        self._queue: list[Pending] = []
        self._queue_lock = threading.Lock()
        self._writing = False  # a leader is writing a batch (guarded by _queue_lock)
        self.lock = threading.Lock()  # serialises batches with checkpoints
        self.connection = store.dedicated_writer()  # used only under `lock`
        # Counters, for diagnostics: transactions and events in them.
        self.batches = 0
        self.batched_events = 0

    def submit(self, slot: Pending, *more: Pending) -> None:
        """Queue a slot (and `more`, in the same batch, after it) and return once its
        batch is written (each slot's record or error set)."""
        with self._queue_lock:
            lead = not self._writing
            if lead:
                self._writing = True
            else:
                slot.gate = threading.Lock()
                slot.gate.acquire()
            self._queue.append(slot)
            self._queue.extend(more)
        if not lead:
            slot.gate.acquire()  # released by the leader that wrote this slot's batch
            if slot.lead:  # handed the writer role by the previous leader
                self._lead()
        else:
            self._lead()

    def _lead(self) -> None:
        """Write everything queued in one transaction, wake its owners, then hand the
        writer role to the first caller that queued meanwhile.

        A lone caller writes its own event with no thread hop; under load, callers
        queue while a commit is in flight and share the next fsync.
        """
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self.lock:
                self.write(batch)  # never raises: failures land in each slot
        except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt: fail the batch
            for p in batch:
                if p.record is None and p.error is None:
                    p.error = exc
        for p in batch:
            if p.gate is not None and not p.lead:
                p.gate.release()
        with self._queue_lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.gate.release()
            else:
                self._writing = False

    def write(self, batch: list[Pending]) -> None:
        """Write a batch (the caller holds `lock`), again from the start after a
        transient failure; a failure lands in every slot, never raised."""
        self.batches += 1
        self.batched_events += len(batch)
        originals = [dict(p.event) for p in batch]
        # The records of an attempt whose commit failed: it may have landed anyway
        # (a connection lost during COMMIT), which the head's hash then tells.
        written: list[AuditRecord | None] = []
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                if attempt:
                    for p, event in zip(batch, originals, strict=True):
                        p.event = dict(event)
                        p.dropped = False
                records, cp = self._try(batch, written)
                break
            except Exception as exc:  # noqa: BLE001 - every failure fails every caller, closed
                if attempt + 1 < _BATCH_ATTEMPTS and _transient(exc):
                    log.warning("audit batch written again", error=exc.__class__.__name__)
                    continue
                for p in batch:
                    p.error = exc
                return
        last = None
        for p, r in zip(batch, records, strict=True):
            p.record = r
            p.dropped = r is None
            last = r or last
        self._after_batch(last, cp)

    def _try(
        self, batch: list[Pending], written: list[AuditRecord | None]
    ) -> tuple[list[AuditRecord | None], Checkpoint | None]:
        """One attempt at writing a batch in one transaction; its records in batch
        order (None for an event its change dropped).

        Lock order, the same in every transaction that locks more than one of these:
        the audit head, then agents' rows in (depth, did) order, then the change
        feed's counter. The head comes first, so batches from different replicas
        queue on it and never hold one agent's row while waiting for another's.
        """
        sync_later = all(p.sync_later for p in batch)
        with self.connection.transaction(sync_later=sync_later) as cur:
            seq, prev = self._sql.lock_head(cur)
            landed = [r for r in written if r is not None]
            if landed and self._sql.holds(cur, landed[-1].seq, landed[-1].hash):
                return list(written), None  # the last attempt did commit (appends may follow)
            changes: list[tuple[str, str, float]] = []
            changing = [p for p in batch if p.change is not None]
            changing.sort(key=lambda p: p.change.lock_order if p.change is not None else ())
            for p in changing:
                assert p.change is not None
                extra = p.change.run(cur)
                if extra:
                    if extra.pop(DROP, False):
                        p.dropped = True
                        continue
                    feed = extra.pop(FEED, None)
                    if feed:
                        changes.extend((kind, subject, p.at) for kind, subject in feed)
                    merge(p.event, extra)
            if changes:
                if self._feed is None:
                    raise AuditError("no change feed to record state changes in")
                self._feed(cur, changes)
            live = [p for p in batch if not p.dropped]
            records: list[AuditRecord] = []
            if live:
                # By identity: two slots may hold equal events (one agent, one instant).
                position = {id(p): i for i, p in enumerate(live)}
                for p in live:
                    if p.link is not None:
                        key, other = p.link
                        p.event[key] = seq + 1 + position[id(other)]
                records, rows = number([(p.event, p.at) for p in live], seq, prev)
                self._sql.append(cur, rows, records[-1].seq, records[-1].hash)
            for p, r in zip(live, records, strict=True):
                if p.then is not None:
                    p.then(cur, r)
            by_slot = iter(records)
            aligned = [None if p.dropped else next(by_slot) for p in batch]
            written[:] = aligned
            cp = self._on_batch(cur, records[-1]) if records else None
            if cp is not None:
                # Published once the batch is back: never a checkpoint of records a
                # crash could still take away.
                self.connection.sync_now = True
        return aligned, cp


class DeferredFlusher:
    """Chains events deferred into the outbox (`AuditLog.defer_in`) into the log, on
    a background thread, retrying with back-off while the audit head is held
    elsewhere (a stalled replica). Each is chained exactly once, whichever replica
    gets to it."""

    def __init__(self, store: Store, sql: AuditSQL, writer: GroupCommit) -> None:
        self._store = store
        self._sql = sql
        self._writer = writer
        self._cond = threading.Condition()
        self._requested = 0
        self._tried = 0  # rounds that ended, successfully or not
        self._done = 0  # rounds that succeeded
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._requested > self._done

    def request(self, wait: float) -> bool:
        """Ask for a round; wait until it succeeded or failed, at most `wait` seconds.
        True when it succeeded (nothing deferred is left)."""
        with self._cond:
            if self._closed:
                return False
            self._requested += 1
            target = self._requested
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="opsgate-audit-flush", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            if wait > 0:
                self._cond.wait_for(lambda: self._tried >= target, timeout=wait)
            return self._done >= target

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        delay = _FLUSH_RETRY[0]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._requested > self._done)
                if self._closed:
                    return
                target = self._requested
            try:
                self.flush_once()
            except Exception as exc:  # noqa: BLE001 - retried; the events are durable meanwhile
                log.warning("deferred audit events not chained yet", error=exc.__class__.__name__)
                with self._cond:
                    self._tried = max(self._tried, target)
                    self._cond.notify_all()
                    self._cond.wait(timeout=delay)
                delay = min(delay * 2, _FLUSH_RETRY[1])
                continue
            delay = _FLUSH_RETRY[0]
            with self._cond:
                self._done = max(self._done, target)
                self._tried = max(self._tried, target)
                self._cond.notify_all()

    def flush_once(self) -> None:
        """Chain the deferred events there are now, oldest first, in batches: each is
        claimed (deleted from the outbox) in the transaction that chains it."""
        sql = self._sql
        while True:
            with self._store.read() as conn:
                rows = sql.deferred(conn, 500)
            if not rows:
                return
            slots = []
            for row_id, at, body in rows:

                def claim(cur: Any, row_id: int = row_id) -> dict[str, Any] | None:
                    return None if sql.claim_deferred(cur, row_id) else {DROP: True}

                slots.append(Pending(orjson.loads(body), at, Change(claim)))
            with self._writer.lock:
                self._writer.write(slots)
            for p in slots:
                if p.error is not None:
                    raise p.error


def wait_for(slot: Pending) -> AuditRecord:
    """The slot's record once its batch is written; AuditError (fail closed) if it failed."""
    if slot.error is not None:
        raise AuditError(
            f"audit write failed: {slot.error.__class__.__name__}", code="audit_write_failed"
        ) from slot.error
    assert slot.record is not None
    return slot.record


__all__ = [
    "DROP",
    "FEED",
    "Change",
    "DeferredFlusher",
    "GroupCommit",
    "Pending",
    "Unit",
    "wait_for",
]
