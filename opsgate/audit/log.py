"""The gate's append-only, hash-chained audit log, from its parts:

- `events`: an event as a value (redact → sanitize → canonical JSON → chain hash), pure;
- `writer`: units of work (an event and the state change that commits with it),
  group-committed, and the flusher of deferred events;
- `checkpoints`: the signed head, kept in the database, the state dir and exports;
- `verify`: the whole log checked as a pure function of its rows;
- `opsgate.store.audit_rows`: every statement on the log's tables.

`AuditLog` ties them to one database and schedules the automatic checkpoints.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection

from opsgate.audit.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_TYPE,
    Checkpoint,
    SignatureCheck,
    Signer,
    load_anchor,
    publish,
    published_seq,
)
from opsgate.audit.events import (
    GENESIS_HASH,
    REDACTED,
    AuditRecord,
    canonical,
    chain_hash,
    number,
    prepare,
    redact,
)
from opsgate.audit.verify import Finding, Trust, VerifyReport, verify_log
from opsgate.audit.writer import (
    DROP,
    FEED,
    Change,
    DeferredFlusher,
    GroupCommit,
    LockOrder,
    Pending,
    Then,
    Unit,
    wait_for,
)
from opsgate.boundary import typed_errors
from opsgate.credentials.keyring import KeyChain
from opsgate.errors import AuditError, ConfigError, OutputUnwritable, plain_text
from opsgate.store import Store
from opsgate.store.audit_rows import AuditSQL

log = structlog.get_logger("opsgate.audit")


@typed_errors
class AuditLog:
    """The gate's audit log. Thread-safe; every write is durable before it returns."""

    def __init__(
        self,
        store: Store,
        *,
        gate_id: str,
        signer: Signer,
        key_chain: Callable[[Iterable[Any]], KeyChain],
        root_kid: str,
        public_jwk: Callable[[str], dict[str, str]],
        check_state: Callable[[], list[Finding]] | None = None,
        feed: Callable[[Any, list[tuple[str, str, float]]], None] | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        checkpoint_file: Path | None = None,
    ) -> None:
        self._store = store
        self._sql = AuditSQL(store)
        self._gate_id = gate_id
        self._signer = signer
        self._key_chain = key_chain
        self._root_kid = root_kid
        self._public_jwk = public_jwk
        self._check_state = check_state
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_file = checkpoint_file
        self._writer = GroupCommit(
            store,
            self._sql,
            feed=feed,
            on_batch=self._checkpoint_in_batch,
            after_batch=self._after_batch,
        )
        self._flusher = DeferredFlusher(store, self._sql, self._writer)
        # The newest checkpoint this process knows of (seq), when it was taken
        # (monotonic), and the newest seq this process wrote: what decides the next
        # automatic checkpoint. Changed under the writer's lock.
        self._signed_seq = published_seq(checkpoint_file)
        self._signed_at = time.monotonic()
        # The newest checkpoint this process signed (seq, hash): a later one must extend it.
        self._last_signed: tuple[int, str] | None = None
        self._written_seq = 0
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._closed = False

    @property
    def batches(self) -> int:
        """Group-commit transactions written (diagnostics)."""
        return self._writer.batches

    @property
    def batched_events(self) -> int:
        """Events written in them (diagnostics)."""
        return self._writer.batched_events

    # -- appending --------------------------------------------------------------

    def append(
        self, event_type: str, *, actor: str | None = None, at: float | None = None, **fields: Any
    ) -> AuditRecord:
        """Durably append one event; raises AuditError (fail closed) if it cannot."""
        return self.commit(Unit(event_type, fields, actor, at))

    def commit(self, unit: Unit) -> AuditRecord:
        """Commit one unit of work: its event and, in the same transaction, its change
        and its `then` (group-committed with other callers' units), durably; raises
        AuditError (fail closed) if it cannot, and then nothing of it holds."""
        return self.commit_all([unit])[0]

    def commit_all(self, units: list[Unit]) -> list[AuditRecord]:
        """Commit several units durably in one transaction, in order, all or none (a
        read's attempt and its outcome)."""
        records = self.commit_droppable(units)
        if any(r is None for r in records):
            raise AuditError("a unit's change dropped its event", code="audit_write_failed")
        return [r for r in records if r is not None]

    def commit_droppable(
        self, units: list[Unit], *, sync_later: bool = False
    ) -> list[AuditRecord | None]:
        """`commit_all` for units whose change may drop its event (DROP): None for
        each event dropped; the rest committed durably in one transaction, in order.

        `sync_later`: committed, and durable only once the caller has synced the
        store's log (`Store.sync_log`), which it does before it answers anyone."""
        slots: list[Pending] = []
        for unit in units:
            slot = Pending(
                prepare(unit.event_type, unit.actor, unit.fields),
                time.time() if unit.at is None else unit.at,
                unit.change,
                unit.then,
                sync_later=sync_later,
            )
            if unit.previous_seq_field is not None and slots:
                slot.link = (unit.previous_seq_field, slots[-1])
            slots.append(slot)
        self._writer.submit(*slots)
        return [None if slot.dropped and slot.error is None else wait_for(slot) for slot in slots]

    def _checkpoint_in_batch(self, cur: Any, last: AuditRecord) -> Checkpoint | None:
        """In a batch's transaction: sign its last event when a checkpoint is due (the
        events commit whether or not a checkpoint may be signed over them)."""
        if not self._checkpoint_due(last.seq):
            return None
        try:
            return self._write_checkpoint(cur, last.seq, last.hash, last.at)
        except AuditError as exc:
            if exc.code != "audit_chain_broken":
                raise
            log.warning("automatic checkpoint refused", error=exc.message)
            return None

    def _after_batch(self, last: AuditRecord | None, cp: Checkpoint | None) -> None:
        if last is not None:
            self._written_seq = max(self._written_seq, last.seq)
        if cp is not None:
            self._signed(cp)
        elif last is not None:
            self._schedule()

    def _checkpoint_due(self, seq: int) -> bool:
        """Every N events, or T seconds after the last checkpoint when events wait."""
        if seq <= self._signed_seq:
            return False
        return (
            seq - self._signed_seq >= self._checkpoint_every
            or time.monotonic() - self._signed_at >= self._checkpoint_interval
        )

    # -- in the caller's transaction ----------------------------------------------

    def defer_in(
        self,
        conn: Connection,
        event_type: str,
        *,
        actor: str | None = None,
        at: float | None = None,
        **fields: Any,
    ) -> None:
        """Record an event in the caller's transaction without waiting for the audit
        head: it commits with the change it explains, and `flush_deferred` (this
        replica's, or any other's, or the next start's) chains it into the log
        exactly once. For changes that must hold even while a stalled replica holds
        the head: revocations and status changes."""
        event = prepare(event_type, actor, fields)
        t = time.time() if at is None else at
        self._sql.defer(conn, t, canonical(event).decode("utf-8"))

    def flush_deferred(self, *, wait: float = 0.0) -> bool:
        """Chain every deferred event into the log, in the background; wait until
        that attempt has succeeded or failed, at most `wait` seconds. True when it
        succeeded (nothing deferred is left). An attempt fails in about the
        database's lock timeout when a stalled replica holds the audit head; the
        flusher then keeps trying without the caller."""
        return self._flusher.request(wait)

    def hold_head(self, conn: Connection) -> None:
        """Lock the audit head first in a write transaction that will lock agents'
        rows or the change feed's counter and then `append_in`: the global lock
        order (head, agents by (depth, did), counter) that group-commit batches
        follow too. SQLite's write transaction already holds everything."""
        if not self._store.is_sqlite:
            self._sql.lock_head(conn.connection.cursor())

    def append_in(
        self,
        conn: Connection,
        event_type: str,
        *,
        actor: str | None = None,
        at: float | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """Append inside the caller's write transaction: change and record commit together."""
        event = prepare(event_type, actor, fields)
        try:
            cur = conn.connection.cursor()
            records, rows = number(
                [(event, time.time() if at is None else at)], *self._sql.lock_head(cur)
            )
            self._sql.append(cur, rows, records[-1].seq, records[-1].hash)
        except Exception as exc:
            raise AuditError(
                f"audit write failed: {exc.__class__.__name__}", code="audit_write_failed"
            ) from exc
        # Not signed here: the caller's transaction may still roll back.
        self._written_seq = max(self._written_seq, records[0].seq)
        self._schedule()
        return records[0]

    def close(self, *, sign: bool = True) -> None:
        """Chain what this process deferred and sign what it left unsigned (best
        effort), then let go of the writer."""
        if self._flusher.pending:
            self.flush_deferred(wait=2.0)
        with self._timer_lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if sign and self._written_seq > self._signed_seq:
            try:
                self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - closing must not fail on it
                log.warning("closing checkpoint not written", error=exc.__class__.__name__)
        self._flusher.close()
        with self._writer.lock:
            self._writer.connection.close()

    # -- checkpoints ------------------------------------------------------------

    def _schedule(self) -> None:
        """Make sure events left unsigned get a checkpoint within the interval, even
        when no further event arrives (one timer at most, only while events wait)."""
        if self._timer is not None or self._closed:
            return
        with self._timer_lock:
            if self._timer is not None or self._closed:
                return
            delay = self._checkpoint_interval - (time.monotonic() - self._signed_at)
            timer = threading.Timer(max(0.05, delay), self._on_timer)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _on_timer(self) -> None:
        with self._timer_lock:
            self._timer = None
            if self._closed:
                return
        try:
            if self.head()[0] > self._signed_seq:
                self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - the next append or timer tries again
            log.warning("automatic checkpoint not written", error=exc.__class__.__name__)

    def _kept_points(self) -> list[tuple[int, str]]:
        """(seq, hash) pairs the log must still hold before the gate signs more of it:
        the checkpoint kept in the state dir and the newest this process signed."""
        points = [] if self._last_signed is None else [self._last_signed]
        if self._checkpoint_file is not None:
            try:
                kept = load_anchor(self._checkpoint_file)
            except AuditError:  # none yet; one that cannot be read is `verify`'s to report
                kept = None
            if kept is not None:
                points.append((kept.seq, kept.hash))
        return points

    def _check_extends(self, cur: Any, seq: int) -> None:
        """Refuse to sign a head that does not extend the checkpoints already signed:
        whoever replaced the log in the database (from below the state dir's
        checkpoint, the stored checkpoints wiped) would otherwise get the replacement
        signed, and the state dir's copy replaced by that signature."""
        for kept_seq, kept_hash in self._kept_points():
            if kept_seq <= 0:
                continue
            if kept_seq > seq or self._sql.stored_hash(cur, kept_seq) != kept_hash:
                raise AuditError(
                    f"the audit log no longer holds the event signed at seq {kept_seq}: "
                    "no checkpoint is signed over it (see 'opsgate audit verify')",
                    code="audit_chain_broken",
                )

    def check_checkpoint_file(self) -> None:
        """Raise ConfigError (`checkpoint_unwritable`) when the kept checkpoint's file
        cannot be kept safely: its directory not writable (a read-only state dir, a
        missing directory) or open to other users (who could hold its lock or plant
        links), or a file there that is not a checkpoint. A server must not run on
        checkpoints kept only in the database, which a database writer can wipe before
        rewriting the log."""
        path = self._checkpoint_file
        if path is None:
            return
        try:
            info = os.stat(path.parent)
            if info.st_uid not in (os.getuid(), 0) or info.st_mode & 0o022:
                raise PermissionError(1, "its directory can be changed by other users")
            probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            os.unlink(probe)
            if os.path.lexists(path):
                try:
                    load_anchor(path)
                except AuditError as exc:
                    if exc.code != "anchor_missing":
                        raise FileExistsError(
                            17, "a file that is not a checkpoint is there"
                        ) from exc
        except OSError as exc:
            raise ConfigError(
                f"the audit checkpoint file '{path}' cannot be kept ({exc.strerror}): the "
                "gate keeps its newest signed checkpoint there, out of a database writer's "
                "reach; point audit.checkpoint_file at a writable, persistent path of the "
                "gate's own",
                code="checkpoint_unwritable",
            ) from None

    def _write_checkpoint(self, cur: Any, seq: int, digest: str, at: float) -> Checkpoint:
        self._check_extends(cur, seq)
        at = float(at)
        kid, sign = self._signer()
        signature = sign(Checkpoint(self._gate_id, seq, digest, at, kid, "").payload())
        self._sql.store_checkpoint(cur, seq, digest, at, kid, signature)
        return Checkpoint(
            self._gate_id, seq, digest, at, kid, signature, public_key=self._public_jwk(kid)
        )

    def _signed(self, cp: Checkpoint) -> None:
        """After a checkpoint committed: remember it and keep it in the state dir."""
        if cp.seq > self._signed_seq:
            self._signed_seq = cp.seq
        if self._last_signed is None or cp.seq >= self._last_signed[0]:
            self._last_signed = (cp.seq, cp.hash)
        self._signed_at = time.monotonic()
        if self._checkpoint_file is not None:
            try:
                publish(self._checkpoint_file, cp)
            except OSError as exc:
                log.warning("state dir checkpoint not written", error=exc.strerror)

    def checkpoint(self, *, at: float | None = None) -> Checkpoint:
        """Sign the current head and store the checkpoint; returns it for export."""
        with self._writer.lock:
            try:
                with self._writer.connection.transaction() as cur:
                    seq, digest = self._sql.lock_head(cur)
                    cp = self._write_checkpoint(cur, seq, digest, time.time() if at is None else at)
            except AuditError:
                raise
            except Exception as exc:
                raise AuditError(
                    f"checkpoint failed: {exc.__class__.__name__}", code="audit_write_failed"
                ) from exc
            self._signed(cp)
            return cp

    def export_checkpoint(self, path: Path) -> Checkpoint:
        """Sign the head and write it to `path`; the file is opened first, so nothing is
        stored when it cannot be written."""
        try:
            out = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise OutputUnwritable(
                f"cannot write '{path}': {exc.strerror or 'not a file'}", code="output_unwritable"
            ) from exc
        with out:
            cp = self.checkpoint()
            out.write(json.dumps(cp.to_dict(), indent=2, sort_keys=True) + "\n")
        return cp

    # -- reading ----------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        with self._store.read() as conn:
            return self._sql.head(conn)

    def count(self) -> int:
        with self._store.read() as conn:
            return self._sql.count(conn)

    def tail(
        self, limit: int = 20, *, event_type: str | None = None, actor: str | None = None
    ) -> list[AuditRecord]:
        if type(limit) is not int:
            raise AuditError(
                "tail takes a number of events and text filters", code="audit_query_invalid"
            )
        _check_filters(event_type, actor)
        with self._store.read() as conn:
            rows = self._sql.newest(
                conn, max(1, min(limit, 10_000)), event_type=event_type, actor=actor
            )
        return [_record(r) for r in reversed(rows)]

    def events(
        self,
        *,
        after_seq: int = 0,
        actor: str | None = None,
        event_type: str | None = None,
        batch: int = 5000,
    ) -> Iterator[AuditRecord]:
        """Every event in seq order (for export), or every event of one actor and/or type."""
        _check_filters(event_type, actor)
        last = after_seq
        while True:
            with self._store.read() as conn:
                rows = self._sql.after(conn, last, batch, event_type=event_type, actor=actor)
            if not rows:
                return
            for r in rows:
                yield _record(r)
            last = int(rows[-1].seq)

    # -- verification -----------------------------------------------------------

    def verify(self, anchor: Checkpoint | None = None, *, now: float | None = None) -> VerifyReport:
        """Walk the whole chain as stored; report the first bad seq and why (never
        raises on tampering). See `opsgate.audit.verify.verify_log`."""
        with self._store.read() as conn:
            checkpoints = {int(r.seq): r for r in self._sql.checkpoints(conn)}
        state_checkpoint: Checkpoint | AuditError | None = None
        if self._checkpoint_file is not None:
            try:
                state_checkpoint = load_anchor(self._checkpoint_file)
            except AuditError as exc:
                if exc.code != "anchor_missing":
                    state_checkpoint = exc

        def seq_of_hash(digest: str) -> int | None:
            with self._store.read() as conn:
                return self._sql.seq_with_hash(conn, digest)

        # The rows and the head from one snapshot: taken after the checkpoints were
        # read, so none of those is beyond it either.
        with self._sql.snapshot() as snap:
            return verify_log(
                snap.rows,
                head_rows=snap.head_rows,
                checkpoints=checkpoints,
                trust=Trust(
                    self._gate_id, self._root_kid, lambda: self._key_chain(snap.key_rows())
                ),
                now=time.time() if now is None else now,
                anchor=anchor,
                state_checkpoint=state_checkpoint,
                seq_of_hash=seq_of_hash,
                check_state=self._check_state,
            )


def _check_filters(event_type: object, actor: object) -> None:
    """An audit query's filters are one line of text each, or none: a NUL (PostgreSQL
    refuses it in a query, as a 500), another control character or a lone surrogate is
    refused typed, on every database."""
    for name, value in (("type", event_type), ("actor", actor)):
        if value is not None and (type(value) is not str or not plain_text(value)):
            raise AuditError(
                f"the {name} filter must be one line of text", code="audit_query_invalid"
            )


def _record(r: Any) -> AuditRecord:
    return AuditRecord(
        int(r.seq), float(r.at), r.type, r.actor, orjson.loads(r.body), r.prev_hash, r.hash
    )


__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_TYPE",
    "DROP",
    "FEED",
    "GENESIS_HASH",
    "REDACTED",
    "AuditLog",
    "AuditRecord",
    "Change",
    "Checkpoint",
    "Finding",
    "LockOrder",
    "SignatureCheck",
    "Signer",
    "Then",
    "Unit",
    "VerifyReport",
    "canonical",
    "chain_hash",
    "load_anchor",
    "redact",
]
