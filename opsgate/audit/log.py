"""Append-only, hash-chained audit log with group commit and signed checkpoints.

Each event is stored as the exact canonical JSON that was hashed:
hash = SHA-256(prev_hash ‖ body). An event passes through small processors
(redact → sanitize → chain → store) before it lands. Concurrent appenders are batched into
one transaction by whichever caller holds the writer lock (group commit), so
many threads share one fsync while a lone caller pays no thread hop.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection

from opsgate.audit.sanitize import clean, clean_event
from opsgate.boundary import typed_errors
from opsgate.credentials.keyring import KeyChain, rotation_payload
from opsgate.errors import AuditError, encodable, safe_text
from opsgate.identity.keys import b64url_decode, jwk_thumbprint, verify_signature
from opsgate.store import Store
from opsgate.store.audit_rows import AuditSQL

GENESIS_HASH = "0" * 64
# Events that introduce a gate signing key (their `kid`); checkpoints and anchors
# must be signed by one of these, and each must chain back to the pinned key.
_KEY_EVENTS = frozenset({"gate.key_created", "gate.key_rotated"})
CHECKPOINT_TYPE = "opsgate-audit-checkpoint"
# The newest checkpoint, kept in the state dir: outside the database, so someone
# who can only write the database cannot cut the log back below it unnoticed.
CHECKPOINT_FILE = "audit-checkpoint.json"
log = structlog.get_logger("opsgate.audit")

# Keys whose values are never written, whatever a caller passes in.
_REDACT_KEYS = frozenset(
    {
        "token",
        "credential_token",
        "approver_token",
        "password",
        "secret",
        "secret_value",
        "value",
        "private_key",
        "proof",
        "authorization",
    }
)
REDACTED = "[redacted]"


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise AuditError(f"audit event is not serialisable: {exc}", code="audit_invalid") from exc


_SCALARS = frozenset({str, int, float, bool, type(None)})


def redact(value: Any) -> Any:
    """Replace the values of secret-bearing keys, recursively.

    Exact-type checks come first: events are flat dicts of scalars and short
    lists, and this runs on every append.
    """
    t = type(value)
    if t in _SCALARS:
        return value
    if t is dict and _REDACT_KEYS.isdisjoint([str(k).lower() for k in value]):
        return {k: (v if type(v) in _SCALARS else redact(v)) for k, v in value.items()}
    if t is list or t is tuple:
        return [v if type(v) in _SCALARS else redact(v) for v in value]
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if str(k).lower() in _REDACT_KEYS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


_KID = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def _kid_text(kid: object) -> str:
    """A key id as found in the database: a thumbprint is shown (it is public; the
    shape alone would make `safe_text` hide it), anything else as `safe_text` says."""
    return kid if isinstance(kid, str) and _KID.match(kid) else safe_text(kid)


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: float
    type: str
    actor: str | None
    event: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Finding:
    """Something stored that does not chain back to the pinned gate key."""

    problem: str  # untrusted_key | untrusted_agent | gate_mismatch
    kind: str  # key | agent | gate
    subject: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "problem": self.problem,
            "kind": self.kind,
            "subject": self.subject,
            "reason": self.reason,
        }


@dataclass(slots=True)
class VerifyReport:
    """Outcome of `AuditLog.verify`: ok, or the first bad seq and why.

    `problem` is one of edit, deletion, insertion, reorder, truncation,
    replacement (the log), untrusted_key, untrusted_agent, gate_mismatch (what
    does not chain back to the key pinned in the state dir). Events after the
    last signed checkpoint are reported as unsigned: they verify, but someone
    who can write the database could have replaced them; that alone leaves
    `ok` true.
    """

    ok: bool
    events: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    first_bad_seq: int | None = None
    problem: str | None = None
    reason: str = ""
    checkpoints_checked: int = 0
    anchor_checked: bool = False
    state_checkpoint_seq: int | None = None  # the checkpoint kept in the state dir
    signed_seq: int = 0  # the log is signed up to here (checkpoints, state dir, anchor)
    unsigned_events: int = 0
    unsigned_since: float | None = None  # time of the oldest unsigned event
    unsigned_age_seconds: float | None = None
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "reason": self.reason,
            "checkpoints_checked": self.checkpoints_checked,
            "anchor_checked": self.anchor_checked,
            "state_checkpoint_seq": self.state_checkpoint_seq,
            "signed_seq": self.signed_seq,
            "unsigned_events": self.unsigned_events,
            "unsigned_since": self.unsigned_since,
            "unsigned_age_seconds": self.unsigned_age_seconds,
            "findings": [f.to_dict() for f in self.findings],
        }


# A state change that must commit together with its audit event; what it returns
# is merged into the event (e.g. the trust score an UPDATE ... RETURNING produced).
# It runs on the transaction's DBAPI cursor (placeholders through Store.q), after
# the audit head is locked. It may run more than once (a batch written again after
# a deadlock or a lost connection): each run starts from a rolled-back transaction.
Apply = Callable[[Any], "dict[str, Any] | None"]
# Where an Apply's row locks sit in the one global order, (depth, did) for an
# agent's row: a batch runs its callbacks sorted by it, as every transaction that
# locks several agents' rows does (see AgentRegistry.descendants).
LockOrder = tuple[Any, ...]
# Runs in the event's transaction once it is numbered (its record known), after
# every Apply of the batch: bookkeeping keyed by the event's seq.
Then = Callable[[Any, "AuditRecord"], None]
# A key an Apply may return: feed entries (kind, subject) for other replicas to see
# its change, written after every callback of the batch has taken its row locks.
FEED = "_feed"
# A key an Apply may return (true): its event is not written after all (a deferred
# event another replica chained first).
DROP = "_drop"
# How long a flush of deferred events waits before retrying after a failure (doubling).
_FLUSH_RETRY = (1.0, 10.0)
# Failures after which a batch is written again from the start: a deadlock the
# server broke, a serialization failure, a backend terminated under us. A lock or
# statement timeout is not among them: those fail the batch at once (fail fast).
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "57P01", "57P02", "57P03"})
_BATCH_ATTEMPTS = 3


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
class _Pending:
    event: dict[str, Any]
    at: float
    apply: Apply | None = None
    order: LockOrder = ()
    then: Then | None = None
    dropped: bool = False
    record: AuditRecord | None = None
    error: BaseException | None = None
    lead: bool = False  # woken to write the next batch rather than with a result
    # Held from creation until the slot's batch is written: a follower blocks on it.
    # (A bare lock is the cheapest one-shot wake-up CPython has.)
    gate: Any = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The head hash signed with the gate key; export it somewhere the database is not."""

    gate: str
    seq: int
    hash: str
    at: float
    kid: str
    signature: str
    public_key: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        return canonical(
            {
                "type": CHECKPOINT_TYPE,
                "gate": self.gate,
                "seq": self.seq,
                "hash": self.hash,
                "at": self.at,
                "kid": self.kid,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_TYPE,
            "gate": self.gate,
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "kid": self.kid,
            "signature": self.signature,
            "public_key": self.public_key,
        }


# Returns the current (kid, sign) pair atomically; sign(payload) -> base64url signature.
Signer = Callable[[], tuple[str, Callable[[bytes], str]]]
SignatureCheck = Callable[[str, bytes, str], bool]  # kid, payload, signature -> valid


@typed_errors
class AuditLog:
    """The gate's audit log. Thread-safe; every write is durable before it returns."""

    def __init__(
        self,
        store: Store,
        *,
        gate_id: str,
        signer: Signer,
        key_chain: Callable[[], KeyChain],
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
        self._feed = feed  # writes change-feed entries on a batch's cursor
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_file = checkpoint_file
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writing = False  # a leader is writing a batch (guarded by _queue_lock)
        self._writer_lock = threading.Lock()  # serialises batches with checkpoint()
        self._writer = store.dedicated_writer()  # used only under _writer_lock
        self.fail_next: int = 0  # test hook: simulate storage failures
        # Group-commit counters, for diagnostics: transactions and events in them.
        self.batches = 0
        self.batched_events = 0
        # The newest checkpoint this process knows of (seq), when it was taken
        # (monotonic), and the newest seq this process wrote: what decides the next
        # automatic checkpoint. Changed under _writer_lock.
        self._signed_seq = _published_seq(checkpoint_file)
        self._signed_at = time.monotonic()
        self._written_seq = 0
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._closed = False
        # The background flusher of deferred events: rounds asked for and done.
        self._flush_cond = threading.Condition()
        self._flush_requested = 0
        self._flush_tried = 0  # rounds that ended, successfully or not
        self._flush_done = 0  # rounds that succeeded
        self._flusher: threading.Thread | None = None

    # -- processors -------------------------------------------------------------

    @staticmethod
    def _prepare(event_type: str, actor: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
        event = {k: v for k, v in clean_event(redact(fields)).items() if v is not None}
        event["type"] = event_type
        if actor is not None:
            event["actor"] = clean(actor)
        return event

    def _chain_and_store(self, cur: Any, pending: list[_Pending]) -> list[AuditRecord]:
        """Number, hash and insert events after the current head, in the caller's transaction.

        Runs on a raw DBAPI cursor: this is the hot path of every operation, and
        the head row lock (FOR UPDATE on PostgreSQL, the write lock on SQLite)
        keeps seq gap-free across threads, processes and replicas.
        """
        return self._store_chain(cur, pending, *self._sql.lock_head(cur))

    def _store_chain(
        self, cur: Any, pending: list[_Pending], seq: int, prev: str
    ) -> list[AuditRecord]:
        """Number, hash and insert events after the head (seq, prev) the caller locked."""
        records: list[AuditRecord] = []
        rows: list[tuple[Any, ...]] = []
        for p in pending:
            seq += 1
            event = p.event
            event["seq"] = seq
            event["at"] = p.at
            body = canonical(event)
            digest = chain_hash(prev, body)
            actor = event.get("actor")
            records.append(AuditRecord(seq, p.at, event["type"], actor, event, prev, digest))
            rows.append((seq, p.at, event["type"], actor, body.decode("utf-8"), prev, digest))
            prev = digest
        self._sql.append(cur, rows, seq, prev)
        return records

    def _checkpoint_due(self, seq: int) -> bool:
        """Every N events, or T seconds after the last checkpoint when events wait."""
        if seq <= self._signed_seq:
            return False
        return (
            seq - self._signed_seq >= self._checkpoint_every
            or time.monotonic() - self._signed_at >= self._checkpoint_interval
        )

    # -- appending --------------------------------------------------------------

    def append(
        self,
        event_type: str,
        *,
        actor: str | None = None,
        at: float | None = None,
        apply: Apply | None = None,
        lock_order: LockOrder = (),
        then: Then | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """Durably append one event; raises AuditError (fail closed) if it cannot.

        `apply` runs inside the same transaction, so the state change it makes
        and this event commit together or not at all; `lock_order` places the row
        locks it takes in the global order (see `_try_batch`); `then` runs in the
        transaction too, once the event has its seq.
        """
        slot = _Pending(
            self._prepare(event_type, actor, fields),
            time.time() if at is None else at,
            apply,
            lock_order,
            then,
        )
        with self._queue_lock:
            lead = not self._writing
            if lead:
                self._writing = True
            else:
                slot.gate = threading.Lock()
                slot.gate.acquire()
            self._queue.append(slot)
        if not lead:
            slot.gate.acquire()  # released by the leader that wrote this slot's batch
            if slot.lead:  # handed the writer role by the previous leader
                self._lead()
        else:
            self._lead()
        if slot.error is not None:
            raise AuditError(
                f"audit write failed: {slot.error.__class__.__name__}", code="audit_write_failed"
            ) from slot.error
        assert slot.record is not None
        return slot.record

    def _lead(self) -> None:
        """Group commit: write everything queued in one transaction, wake its owners,
        then hand the writer role to the first caller that queued meanwhile.

        A lone caller writes its own event with no thread hop; under load, callers
        queue while a commit is in flight and share the next fsync.
        """
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self._writer_lock:
                self._write_batch(batch)  # never raises: failures land in each slot
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

    def _write_batch(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.batched_events += len(batch)
        originals = [dict(p.event) for p in batch]
        # The records of an attempt whose commit failed: it may have landed anyway
        # (a connection lost during COMMIT), which the head's hash then tells.
        written: list[AuditRecord | None] = []
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                if self.fail_next > 0:
                    self.fail_next -= 1
                    raise OSError("simulated audit storage failure")
                if attempt:
                    for p, event in zip(batch, originals, strict=True):
                        p.event = dict(event)
                        p.dropped = False
                records, cp = self._try_batch(batch, written)
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
        if last is not None:
            self._written_seq = max(self._written_seq, last.seq)
        if cp is not None:
            self._signed(cp)
        elif last is not None:
            self._schedule()

    def _try_batch(
        self, batch: list[_Pending], written: list[AuditRecord | None]
    ) -> tuple[list[AuditRecord | None], Checkpoint | None]:
        """One attempt at writing a batch in one transaction; its records in batch
        order (None for an event an Apply dropped).

        Lock order, the same in every transaction that locks more than one of these:
        the audit head, then agents' rows in (depth, did) order, then the change
        feed's counter. The head comes first, so batches from different replicas
        queue on it and never hold one agent's row while waiting for another's.
        """
        with self._writer.transaction() as cur:
            seq, prev = self._sql.lock_head(cur)
            landed = [r for r in written if r is not None]
            if landed and prev == landed[-1].hash:
                return list(written), None  # the last attempt did commit
            changes: list[tuple[str, str, float]] = []
            applies = [p for p in batch if p.apply is not None]
            applies.sort(key=lambda p: p.order)
            for p in applies:
                assert p.apply is not None
                extra = p.apply(cur)
                if extra:
                    if extra.pop(DROP, False):
                        p.dropped = True
                        continue
                    feed = extra.pop(FEED, None)
                    if feed:
                        changes.extend((kind, subject, p.at) for kind, subject in feed)
                    p.event.update(clean_event(redact(extra)))
            if changes:
                if self._feed is None:
                    raise AuditError("no change feed to record state changes in")
                self._feed(cur, changes)
            live = [p for p in batch if not p.dropped]
            records = self._store_chain(cur, live, seq, prev) if live else []
            for p, r in zip(live, records, strict=True):
                if p.then is not None:
                    p.then(cur, r)
            by_slot = iter(records)
            aligned = [None if p.dropped else next(by_slot) for p in batch]
            written[:] = aligned
            cp = None
            if records and self._checkpoint_due(records[-1].seq):
                last = records[-1]
                cp = self._write_checkpoint(cur, last.seq, last.hash, last.at)
        return aligned, cp

    # -- deferred events ----------------------------------------------------------

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
        event = self._prepare(event_type, actor, fields)
        t = time.time() if at is None else at
        self._sql.defer(conn, t, canonical(event).decode("utf-8"))

    def flush_deferred(self, *, wait: float = 0.0) -> bool:
        """Chain every deferred event into the log, in the background; wait until
        that attempt has succeeded or failed, at most `wait` seconds. True when it
        succeeded (nothing deferred is left). An attempt fails in about the
        database's lock timeout when a stalled replica holds the audit head; the
        flusher then keeps trying without the caller."""
        with self._flush_cond:
            if self._closed:
                return False
            self._flush_requested += 1
            target = self._flush_requested
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="opsgate-audit-flush", daemon=True
                )
                self._flusher.start()
            self._flush_cond.notify_all()
            if wait > 0:
                self._flush_cond.wait_for(lambda: self._flush_tried >= target, timeout=wait)
            return self._flush_done >= target

    def _flush_loop(self) -> None:
        delay = _FLUSH_RETRY[0]
        while True:
            with self._flush_cond:
                self._flush_cond.wait_for(
                    lambda: self._closed or self._flush_requested > self._flush_done
                )
                if self._closed:
                    return
                target = self._flush_requested
            try:
                self._flush_once()
            except Exception as exc:  # noqa: BLE001 - retried; the events are durable meanwhile
                log.warning("deferred audit events not chained yet", error=exc.__class__.__name__)
                with self._flush_cond:
                    self._flush_tried = max(self._flush_tried, target)
                    self._flush_cond.notify_all()
                    self._flush_cond.wait(timeout=delay)
                delay = min(delay * 2, _FLUSH_RETRY[1])
                continue
            delay = _FLUSH_RETRY[0]
            with self._flush_cond:
                self._flush_done = max(self._flush_done, target)
                self._flush_tried = max(self._flush_tried, target)
                self._flush_cond.notify_all()

    def _flush_once(self) -> None:
        """Chain the deferred events there are now, oldest first, in batches."""
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

                slots.append(_Pending(orjson.loads(body), at, claim))
            with self._writer_lock:
                self._write_batch(slots)
            for p in slots:
                if p.error is not None:
                    raise p.error

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
        if self.fail_next > 0:
            self.fail_next -= 1
            raise AuditError("audit write failed: OSError", code="audit_write_failed")
        slot = _Pending(self._prepare(event_type, actor, fields), time.time() if at is None else at)
        try:
            records = self._chain_and_store(conn.connection.cursor(), [slot])
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
        with self._flush_cond:
            pending = self._flush_requested > self._flush_done
        if pending:
            self.flush_deferred(wait=2.0)
        flusher = self._flusher
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
        with self._flush_cond:
            self._closed = True
            self._flush_cond.notify_all()
        if flusher is not None:
            flusher.join(timeout=2.0)
        with self._writer_lock:
            self._writer.close()

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

    def _write_checkpoint(self, cur: Any, seq: int, digest: str, at: float) -> Checkpoint:
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
        self._signed_at = time.monotonic()
        if self._checkpoint_file is not None:
            try:
                _publish(self._checkpoint_file, cp)
            except OSError as exc:
                log.warning("state dir checkpoint not written", error=exc.strerror)

    def checkpoint(self, *, at: float | None = None) -> Checkpoint:
        """Sign the current head and store the checkpoint; returns it for export."""
        with self._writer_lock:
            try:
                with self._writer.transaction() as cur:
                    seq, digest = self._sql.lock_head(cur)
                    cp = self._write_checkpoint(cur, seq, digest, time.time() if at is None else at)
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
            raise AuditError(
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
        if type(limit) is not int or not all(
            v is None or (type(v) is str and encodable(v) is v) for v in (event_type, actor)
        ):
            raise AuditError(
                "tail takes a number of events and text filters", code="audit_query_invalid"
            )
        with self._store.read() as conn:
            rows = self._sql.newest(
                conn, max(1, min(limit, 10_000)), event_type=event_type, actor=actor
            )
        return [self._record(r) for r in reversed(rows)]

    def events(
        self,
        *,
        after_seq: int = 0,
        actor: str | None = None,
        event_type: str | None = None,
        batch: int = 5000,
    ) -> Iterator[AuditRecord]:
        """Every event in seq order (for export), or every event of one actor and/or type."""
        last = after_seq
        while True:
            with self._store.read() as conn:
                rows = self._sql.after(conn, last, batch, event_type=event_type, actor=actor)
            if not rows:
                return
            for r in rows:
                yield self._record(r)
            last = int(rows[-1].seq)

    @staticmethod
    def _record(r: Any) -> AuditRecord:
        return AuditRecord(
            int(r.seq), float(r.at), r.type, r.actor, orjson.loads(r.body), r.prev_hash, r.hash
        )

    # -- verification -----------------------------------------------------------

    def _seq_with_hash(self, digest: str) -> int | None:
        with self._store.read() as conn:
            return self._sql.seq_with_hash(conn, digest)

    def verify(self, anchor: Checkpoint | None = None, *, now: float | None = None) -> VerifyReport:
        """Walk the whole chain; report the first bad seq and why (never raises on tampering).

        Then: every gate key the log introduces must chain to the pinned key, the
        anchor (if given), the checkpoint kept in the state dir and every stored
        checkpoint must be signed by such a key and match the chain, the key table
        must hold exactly the keys the log introduced, and (through `check_state`)
        every stored agent must chain back to them. Events after the last signed
        point are reported as the unsigned tail (how many, since when).
        """
        with self._store.read() as conn:
            cps = {int(r.seq): r for r in self._sql.checkpoints(conn)}
        report = VerifyReport(ok=True)
        prev_hash, expected = GENESIS_HASH, 1
        seen: dict[str, int] = {}
        cp_hashes: dict[int, str] = {}
        key_events: list[tuple[int, dict[str, Any]]] = []
        loads = orjson.loads
        sha = hashlib.sha256
        try:
            for seq, at, etype, actor, body, row_prev, row_hash in self._sql.stream():
                if type(seq) is not int or seq < expected:
                    # NULL, non-integer, duplicate or pre-genesis seq: a row that is not ours.
                    where = seq if type(seq) is int and seq > 0 else expected
                    return self._fail(
                        report, where, "insertion", f"a row with seq {seq!r:.20} was added"
                    )
                if seq != expected:
                    return self._fail(report, expected, "deletion", f"seq {expected} is missing")
                try:
                    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
                    intact = sha(row_prev.encode("ascii") + raw).hexdigest() == row_hash
                except (UnicodeError, AttributeError, TypeError, ValueError):
                    intact = False
                if not intact:
                    return self._fail(report, seq, "edit", "event content does not match its hash")
                try:
                    ev = loads(raw)
                    consistent = (
                        ev["seq"] == seq
                        and ev["type"] == etype
                        and ev.get("actor") == actor
                        and ev["at"] == at
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return self._fail(report, seq, "edit", "event body is not a valid event")
                if row_prev != prev_hash or ev["seq"] != seq:
                    return self._classify_link(
                        report, seq, ev.get("seq"), row_prev, prev_hash, seen
                    )
                if not consistent:
                    return self._fail(
                        report, seq, "edit", "indexed columns differ from the hashed event"
                    )
                if etype in _KEY_EVENTS:
                    key_events.append((seq, ev))
                if seq in cps:
                    cp_hashes[seq] = row_hash
                if len(seen) < 4096:
                    seen[row_hash] = seq
                else:
                    seen = {row_hash: seq}
                prev_hash, expected = row_hash, expected + 1
        finally:
            if not report.ok:  # stopped at a bad row: say how far the chain held
                report.events = report.head_seq = expected - 1
                report.head_hash = prev_hash
        report.events = expected - 1
        report.head_seq = expected - 1
        report.head_hash = prev_hash
        with self._store.read() as conn:
            heads = self._sql.head_rows(conn)
        if len(heads) != 1 or type(heads[0][0]) is not int or not isinstance(heads[0][1], str):
            return self._fail(
                report, report.head_seq, "edit", "the stored head is missing or malformed"
            )
        head = heads[0]
        if int(head[0]) != report.head_seq or str(head[1]) != prev_hash:
            if int(head[0]) > report.head_seq:
                return self._fail(
                    report,
                    report.head_seq + 1,
                    "truncation",
                    f"the head says seq {int(head[0])} but the log ends at {report.head_seq}",
                )
            if int(head[0]) < report.head_seq:
                first = int(head[0]) + 1
                return self._fail(
                    report,
                    first,
                    "insertion",
                    f"event(s) from seq {first} were added behind the log's back "
                    f"(its head is seq {int(head[0])})",
                )
            return self._fail(
                report, int(head[0]), "edit", "the stored head does not match the chain"
            )
        chain = self._key_chain()
        logged, key_problem = self._logged_keys(key_events)
        # A key counts only when both the log and the key table chain it to the pin.
        trusted = {k.kid: k.raw for k in chain.keys if logged.get(k.kid) == k.raw}
        if anchor is not None:
            report.anchor_checked = True
            self._check_anchor(report, anchor, trusted, "the anchor")
            if not report.ok:
                return report
        if self._checkpoint_file is not None:
            self._check_state_checkpoint(report, trusted)
            if not report.ok:
                return report
        for cp_seq, cp in sorted(cps.items()):
            try:
                stored = Checkpoint(
                    self._gate_id, cp_seq, str(cp.hash), float(cp.at), str(cp.kid), cp.signature
                )
                signed = _signed_by(trusted, stored.kid, stored.payload(), str(cp.signature))
            except (TypeError, ValueError, AuditError):
                signed = False
            if not signed:
                return self._fail(
                    report,
                    cp_seq,
                    "replacement",
                    "a stored checkpoint is not signed by a gate key that chains to the pinned key",
                )
            if cp_seq > report.head_seq:
                return self._fail(
                    report,
                    report.head_seq + 1,
                    "truncation",
                    f"checkpoint at seq {cp_seq} is beyond the end of the log",
                )
            if cp_hashes.get(cp_seq) != cp.hash:
                return self._fail(
                    report, cp_seq, "replacement", "the chain does not match a signed checkpoint"
                )
            report.checkpoints_checked += 1
            report.signed_seq = max(report.signed_seq, cp_seq)
        if key_problem is not None:
            return self._fail(report, *key_problem)
        table_problem = self._compare_key_table(report, chain, logged, key_events)
        if table_problem is not None:
            return self._fail(report, *table_problem)
        self._unsigned_tail(report, time.time() if now is None else now)
        findings = [
            Finding(
                "untrusted_key", "key", _kid_text(u.kid), f"gate key {_kid_text(u.kid)}: {u.reason}"
            )
            for u in chain.untrusted
        ]
        if self._check_state is not None:
            findings += self._check_state()
        if findings:
            report.findings = findings
            report.ok = False
            report.problem = findings[0].problem
            report.reason = findings[0].reason
            if len(findings) > 1:
                report.reason += f" (and {len(findings) - 1} more)"
        return report

    def _logged_keys(
        self, key_events: list[tuple[int, dict[str, Any]]]
    ) -> tuple[dict[str, bytes], tuple[int, str, str] | None]:
        """The gate keys the log introduces, each checked against its predecessor.

        The first must be the pinned key; every rotation must carry the endorsement
        the key it replaces signed. Returns them (kid -> public key) and the first
        event that fails (seq, problem, reason), if any.
        """
        logged: dict[str, bytes] = {}
        for seq, ev in key_events:
            kid, x = ev.get("kid"), ev.get("public_key")
            try:
                raw = b64url_decode(x) if isinstance(x, str) else b""
            except ValueError:
                raw = b""
            if (
                not isinstance(x, str)
                or len(raw) != 32
                or not isinstance(kid, str)
                or jwk_thumbprint(raw) != kid
            ):
                return logged, (
                    seq,
                    "untrusted_key",
                    f"the {ev.get('type')} event does not carry the key its kid names",
                )
            if ev.get("type") == "gate.key_created":
                if logged or kid != self._root_kid:
                    return logged, (
                        seq,
                        "untrusted_key",
                        f"gate key {kid} is not the key pinned in the state dir",
                    )
            else:
                prev = ev.get("retired")
                endorsement = ev.get("endorsement")
                at = ev.get("at")
                try:
                    ok = (
                        isinstance(prev, str)
                        and prev in logged
                        and isinstance(endorsement, str)
                        and isinstance(at, (int, float))
                        and verify_signature(
                            logged[prev],
                            b64url_decode(endorsement),
                            rotation_payload(self._gate_id, kid, x, prev, at),
                        )
                    )
                except ValueError:
                    ok = False
                if not ok or kid in logged:
                    return logged, (
                        seq,
                        "untrusted_key",
                        f"gate key {kid} is not endorsed by the key it claims to replace",
                    )
            logged[kid] = raw
        if self._root_kid not in logged:
            return logged, (
                1,
                "replacement",
                "the log does not record the creation of the gate key pinned in the state dir",
            )
        return logged, None

    @staticmethod
    def _compare_key_table(
        report: VerifyReport,
        chain: KeyChain,
        logged: dict[str, bytes],
        key_events: list[tuple[int, dict[str, Any]]],
    ) -> tuple[int, str, str] | None:
        """The key table must chain exactly the keys the log introduced."""
        at_seq = {ev.get("kid"): seq for seq, ev in key_events}
        in_table = {k.kid: k.raw for k in chain.keys}
        for kid, raw in logged.items():
            if in_table.get(kid) != raw:
                return (
                    at_seq.get(kid, 1),
                    "deletion",
                    f"gate key {kid} (introduced at seq {at_seq.get(kid)}) is missing from "
                    "the key table or no longer chains to the pinned key",
                )
        for kid in in_table:
            if kid not in logged:
                return (
                    report.head_seq + 1,
                    "truncation",
                    f"gate key {kid} chains to the pinned key but the log lacks the event "
                    "that introduced it: events were removed",
                )
        return None

    def _check_state_checkpoint(self, report: VerifyReport, trusted: dict[str, bytes]) -> None:
        assert self._checkpoint_file is not None
        try:
            cp = load_anchor(self._checkpoint_file)
            report.state_checkpoint_seq = cp.seq
            self._check_anchor(report, cp, trusted, "the state dir's checkpoint")
        except AuditError as exc:
            if exc.code != "anchor_missing":
                self._fail(
                    report, 1, "replacement", f"the state dir's checkpoint is invalid: {exc}"
                )

    def _unsigned_tail(self, report: VerifyReport, now: float) -> None:
        report.unsigned_events = max(0, report.head_seq - report.signed_seq)
        if not report.unsigned_events:
            return
        with self._store.read() as conn:
            at = self._sql.at_of(conn, report.signed_seq + 1)
        if isinstance(at, (int, float)) and math.isfinite(at):
            report.unsigned_since = float(at)
            report.unsigned_age_seconds = max(0.0, round(now - float(at), 3))

    def _check_anchor(
        self, report: VerifyReport, anchor: Checkpoint, trusted: dict[str, bytes], what: str
    ) -> None:
        """The anchor must be intact and signed by a key of this gate that both the log
        and the key table chain to the pin: a key carried only by the file proves nothing."""
        try:
            embedded = b64url_decode(str(anchor.public_key["x"]))
            sig = b64url_decode(anchor.signature)
        except (KeyError, ValueError, TypeError) as exc:
            raise AuditError(f"{what} is malformed", code="anchor_invalid") from exc
        if len(embedded) != 32 or not verify_signature(embedded, sig, anchor.payload()):
            raise AuditError(f"{what}'s signature does not verify", code="anchor_invalid")
        if jwk_thumbprint(embedded) != anchor.kid:
            raise AuditError(f"{what}'s key does not match its kid", code="anchor_invalid")
        if anchor.gate != self._gate_id:
            self._fail(report, 1, "replacement", f"{what} belongs to another gate's log")
            return
        if not _signed_by(trusted, anchor.kid, anchor.payload(), anchor.signature):
            self._fail(
                report,
                1,
                "replacement",
                f"{what} is not signed by a gate key that chains to the pinned key",
            )
            return
        if anchor.seq > report.head_seq:
            self._fail(
                report,
                report.head_seq + 1,
                "truncation",
                f"{what} covers seq {anchor.seq} but the log ends at {report.head_seq}",
            )
            return
        if anchor.seq > 0:
            with self._store.read() as conn:
                stored = self._sql.hash_at(conn, anchor.seq)
            if stored != anchor.hash:
                self._fail(
                    report,
                    anchor.seq,
                    "replacement",
                    f"the log up to {what} differs from what it signed",
                )
                return
        report.signed_seq = max(report.signed_seq, anchor.seq)

    def _classify_link(
        self,
        report: VerifyReport,
        seq: int,
        body_seq: Any,
        row_prev: str,
        expected_prev: str,
        seen: dict[str, int],
    ) -> VerifyReport:
        """A broken link: tell deletion, insertion, reorder and a rewritten predecessor apart."""
        if row_prev in seen and seen[row_prev] < seq - 1:
            first = seen[row_prev] + 1
            return self._fail(report, first, "insertion", f"event(s) inserted at seq {first}")
        later = self._seq_with_hash(row_prev)
        if later is not None and later > seq:
            return self._fail(report, seq, "reorder", f"event at seq {seq} is out of order")
        if isinstance(body_seq, int) and body_seq > seq:
            return self._fail(
                report, seq, "deletion", f"event(s) before seq {body_seq} were deleted"
            )
        if isinstance(body_seq, int) and body_seq < seq:
            return self._fail(report, seq, "insertion", f"event(s) inserted before seq {seq}")
        if row_prev != expected_prev:
            return self._fail(
                report, seq - 1, "edit", f"event at seq {seq - 1} was rewritten (its hash changed)"
            )
        return self._fail(report, seq, "edit", "event sequence number was changed")

    @staticmethod
    def _fail(report: VerifyReport, seq: int, problem: str, reason: str) -> VerifyReport:
        report.ok = False
        report.first_bad_seq = seq
        report.problem = problem
        report.reason = reason
        return report


def _signed_by(trusted: dict[str, bytes], kid: str, payload: bytes, signature: str) -> bool:
    key = trusted.get(kid)
    if key is None:
        return False
    try:
        return verify_signature(key, b64url_decode(signature), payload)
    except (ValueError, TypeError):
        return False


def _published_seq(path: Path | None) -> int:
    """The seq of the checkpoint kept in the state dir (0 when there is none)."""
    if path is None:
        return 0
    try:
        return load_anchor(path).seq
    except AuditError:
        return 0


def _publish(path: Path, cp: Checkpoint) -> None:
    """Replace the state dir's checkpoint with `cp` when it is newer (atomic, fsynced).

    Replicas share the state dir: a lock on the directory orders their writes,
    so the file never goes back to an older checkpoint.
    """
    import fcntl

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _published_seq(path) >= cp.seq:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = (json.dumps(cp.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(out, data)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_anchor(path: Path) -> Checkpoint:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("type") != CHECKPOINT_TYPE:
            raise ValueError("not a checkpoint")
        return Checkpoint(
            gate=str(data["gate"]),
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            at=float(data["at"]),
            kid=str(data["kid"]),
            signature=str(data["signature"]),
            public_key=dict(data["public_key"]),
        )
    except FileNotFoundError as exc:
        raise AuditError(f"anchor file '{path}' not found", code="anchor_missing") from exc
    except OSError as exc:
        raise AuditError(
            f"anchor file '{path.name}' cannot be read: {exc.strerror}", code="anchor_invalid"
        ) from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError(f"anchor file '{path.name}' is malformed", code="anchor_invalid") from exc
