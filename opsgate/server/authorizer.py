"""The authorize route's kernel threads: one decides queued requests in batches and
commits them, the other waits for the disk and answers.

`POST /v1/authorize` is the agents' hottest call. Each request used to take a pool
thread of its own for `Gate.authorize`: tens of threads contending for the GIL, a
hand-off to the pool and back per request, and a turn at the audit log's group
commit per request. Here the event loop queues the request (its credential, its
DPoP check, the capability) and one thread takes everything queued at once:
`Gate.commit_authorize_batch` authenticates and decides each request exactly as
`Gate.authorize` does and commits all the decisions' audit records in one
transaction. The other thread syncs the store's log (`Store.sync_log`: one sync
for every batch committed meanwhile), and only then are the requests' answers
handed back to the event loop (`Gate.complete_authorize_batch`; one wake-up for
the whole batch). A commit or a sync that fails fails every decision of its batch
(`audit_write_failed`): no answer says allowed without its record on disk.

While one batch waits for the disk, the next one is decided and committed; while
both threads work, the event loop parses the requests of the batch after.

Used on SQLite, where a request's reads and its proof id's record are local calls.
On PostgreSQL each is a round trip to the server, which one thread would make one
request after another: there `Gate.authorize` stays on the worker pool, where the
round trips of concurrent requests overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from opsgate.decision import Decision
from opsgate.errors import AuditError, HttpRefusal
from opsgate.gate import AuthorizeBatch, AuthorizeRequest, Gate, authorize_internal

log = structlog.get_logger("opsgate.server")

# Requests decided in one batch at most: beyond it, the rest wait for the next batch,
# so that no answer waits on an unbounded one.
MAX_BATCH = 256
# Batches committed and waiting for the disk at most: the deciding thread waits
# beyond it (one sync makes them all durable).
MAX_UNSYNCED = 8


@dataclass(slots=True)
class _Queued:
    request: AuthorizeRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Decision]


class Authorizer:
    """Decides authorize requests on two threads of its own, in batches. Thread-safe.

    `decide` is awaited on an event loop; `close` stops taking requests, lets the
    threads decide, write and answer what was queued, and waits for them.
    """

    def __init__(
        self, gate: Gate, *, max_batch: int = MAX_BATCH, max_unsynced: int = MAX_UNSYNCED
    ) -> None:
        self._gate = gate
        self._max_batch = max_batch
        self._max_unsynced = max_unsynced
        lock = threading.Lock()
        # Guarded by `lock`: requests to decide (the deciding thread waits on
        # `_to_decide`), batches committed and not answered yet (the answering thread
        # waits on `_to_answer`).
        self._queue: deque[_Queued] = deque()
        self._committed: deque[tuple[list[_Queued], AuthorizeBatch]] = deque()
        self._to_decide = threading.Condition(lock)
        self._to_answer = threading.Condition(lock)
        self._decider: threading.Thread | None = None
        self._answerer: threading.Thread | None = None
        self._decider_done = False  # closed, and everything queued was committed
        self._closed = False
        # Diagnostics: batches decided, requests in them, and syncs that answered them.
        self.batches = 0
        self.decided = 0
        self.syncs = 0

    async def decide(self, request: AuthorizeRequest) -> Decision:
        """The request's Decision, once its audit record is durable; raises the
        OpsgateError `Gate.authorize` would have raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        with self._to_decide:
            if self._closed:
                raise HttpRefusal("the server is stopping", code="not_ready")
            if self._decider is None:
                self._start()  # if they cannot start, the next request tries again
            self._queue.append(_Queued(request, loop, future))
            if len(self._queue) == 1:
                self._to_decide.notify()
        # A client that goes away cancels only its wait: its request stays in the
        # queue and is decided and audited all the same, as on a pool thread.
        return await future

    def _start(self) -> None:
        """The answering thread, then the deciding one (a batch is never committed
        with no one to answer it). Called with the lock held."""
        if self._answerer is None:
            answerer = threading.Thread(
                target=self._run_answerer, name="opsgate-authorize-sync", daemon=True
            )
            answerer.start()
            self._answerer = answerer
        decider = threading.Thread(target=self._run_decider, name="opsgate-authorize", daemon=True)
        decider.start()
        self._decider = decider

    def close(self, timeout: float = 30.0) -> None:
        """Take no more requests; what is queued is still decided (and audited) and
        answered; wait up to `timeout` seconds for the threads to finish."""
        with self._to_decide:
            self._closed = True
            if self._decider is None:
                self._decider_done = True
            self._to_decide.notify()
            self._to_answer.notify()
            threads = [t for t in (self._decider, self._answerer) if t is not None]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("authorize thread did not finish", timeout=timeout)

    def _run_decider(self) -> None:
        while True:
            with self._to_decide:
                while not self._queue or len(self._committed) >= self._max_unsynced:
                    if self._closed and not self._queue:
                        self._decider_done = True  # nothing left: the answerer may end
                        self._to_answer.notify()
                        return
                    self._to_decide.wait()
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            try:
                committed = self._gate.commit_authorize_batch([q.request for q in batch])
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any batch
                # Every request of the batch is answered now (failed): none waits
                # forever, and the requests queued behind it are decided.
                log.error("authorize batch not decided", error=type(exc).__name__)
                _hand_back([(q, authorize_internal(exc)) for q in batch])
                continue
            with self._to_answer:
                self._committed.append((batch, committed))
                self._to_answer.notify()

    def _run_answerer(self) -> None:
        while True:
            with self._to_answer:
                while not self._committed:
                    if self._decider_done:
                        return  # closed, and nothing left to decide or answer
                    self._to_answer.wait()
                taken = list(self._committed)
                self._committed.clear()
                self._to_decide.notify()  # room for the decider
            self._answer(taken)

    def _answer(self, taken: list[tuple[list[_Queued], AuthorizeBatch]]) -> None:
        """Sync once for every batch taken, then answer each."""
        answers: list[tuple[_Queued, Decision | BaseException]] = []
        try:
            self._gate.store.sync_log()
        except Exception as exc:  # noqa: BLE001 - not durable: every request fails closed
            log.error("authorize batches not synced", error=type(exc).__name__)
            for batch, _ in taken:
                for q in batch:
                    err = AuditError("audit write failed: not synced", code="audit_write_failed")
                    err.__cause__ = exc
                    answers.append((q, err))
            _hand_back(answers)
            return
        self.syncs += 1
        for batch, committed in taken:
            try:
                results = self._gate.complete_authorize_batch(committed)
                answers += zip(batch, results, strict=True)
            except BaseException as exc:  # noqa: BLE001 - every request of the batch fails closed
                log.error("authorize batch not answered", error=type(exc).__name__)
                answers += [(q, authorize_internal(exc)) for q in batch]
            self.batches += 1
            self.decided += len(batch)
        _hand_back(answers)


def _hand_back(results: list[tuple[_Queued, Decision | BaseException]]) -> None:
    """Hand each request its result on its own event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Queued, Any]]] = {}
    for q, r in results:
        by_loop.setdefault(q.loop, []).append((q, r))
    for loop, answers in by_loop.items():
        # A closed loop (RuntimeError) has no one waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[_Queued, Decision | BaseException]]) -> None:
    """On the event loop: hand each request its result (a request answered already
    keeps its answer)."""
    for q, result in answers:
        if q.future.done():
            continue
        if isinstance(result, BaseException):
            q.future.set_exception(result)
        else:
            q.future.set_result(result)


__all__ = ["MAX_BATCH", "MAX_UNSYNCED", "Authorizer"]
