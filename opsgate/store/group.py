"""Group commit: callers that arrive while a transaction is in flight share the next.

One caller at a time leads: it takes everything queued, writes it in one
transaction through `write`, hands each caller its own result, and passes the
lead to the first caller that queued meanwhile. A lone caller writes at once,
with no thread hop; under load, N callers cost one commit (one fsync) instead of
N. The audit log batches its events the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("error", "gate", "item", "lead", "written")

    def __init__(self, item: T) -> None:
        self.item = item
        self.gate: threading.Lock | None = None
        self.lead = False
        self.written: tuple[R] | None = None  # (result,) once written: R may be None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """`submit(item)` returns `write(batch)`'s result for that item, or raises what
    `write` raised (every caller of a failed batch fails: nothing was committed)."""

    def __init__(self, write: Callable[[list[T]], Sequence[R]]) -> None:
        self._write = write
        self._queue: list[_Slot[T, R]] = []
        self._lock = threading.Lock()
        self._writing = False
        self.batches = 0  # diagnostics: transactions, and items in them
        self.items = 0

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            lead = not self._writing
            if lead:
                self._writing = True
            else:
                slot.gate = threading.Lock()
                slot.gate.acquire()
            self._queue.append(slot)
        if not lead:
            assert slot.gate is not None
            slot.gate.acquire()  # released by the leader that wrote this slot's batch
            if slot.lead:  # or handed the lead: this slot is in the next batch
                self._lead()
        else:
            self._lead()
        if slot.error is not None:
            raise slot.error
        assert slot.written is not None
        return slot.written[0]

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        self.batches += 1
        self.items += len(batch)
        try:
            results = self._write([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError("a group commit returned a result per item")
            for s, r in zip(batch, results, strict=True):
                s.written = (r,)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch sees it
            for s in batch:
                s.error = exc
        for s in batch:
            if s.gate is not None and not s.lead:
                s.gate.release()
        with self._lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                assert nxt.gate is not None
                nxt.gate.release()
            else:
                self._writing = False
