"""The authorize route's kernel thread: one thread decides queued requests in batches.

`POST /v1/authorize` is the agents' hottest call. Each request used to take a pool
thread of its own for `Gate.authorize`: tens of threads contending for the GIL, a
hand-off to the pool and back per request, and a turn at the audit log's group
commit per request. Here the event loop queues the request (its credential, its
DPoP check, the capability) and one thread takes everything queued at once:
`Gate.authorize_batch` authenticates and decides each request exactly as
`Gate.authorize` does, writes all the decisions' audit records in one durable commit,
and only then are the requests' answers handed back to the event loop (one wake-up
for the whole batch). A commit that fails fails every decision of its batch
(`audit_write_failed`): no answer says allowed without its record on disk.

While one batch is being decided and committed, the event loop parses the next
requests, which form the next batch.

Used on SQLite, where a request's reads and its proof id's record are local calls.
On PostgreSQL each is a round trip to the server, which one thread would make one
request after another: there `Gate.authorize` stays on the worker pool, where the
round trips of concurrent requests overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from opsgate.decision import Decision
from opsgate.errors import HttpRefusal
from opsgate.gate import AuthorizeRequest, Gate, authorize_internal

log = structlog.get_logger("opsgate.server")

# Requests decided in one batch at most (one audit transaction): beyond it, the rest
# wait for the next batch, so that no answer waits on an unbounded one.
MAX_BATCH = 256


@dataclass(slots=True)
class _Queued:
    request: AuthorizeRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Decision]


class Authorizer:
    """Decides authorize requests on one thread of its own, in batches. Thread-safe.

    `decide` is awaited on an event loop; `close` stops taking requests, lets the
    thread decide what was queued, and waits for it.
    """

    def __init__(self, gate: Gate, *, max_batch: int = MAX_BATCH) -> None:
        self._gate = gate
        self._max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        # Diagnostics: batches decided, and requests in them.
        self.batches = 0
        self.decided = 0

    async def decide(self, request: AuthorizeRequest) -> Decision:
        """The request's Decision, once its audit record is durable; raises the
        OpsgateError `Gate.authorize` would have raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        with self._cond:
            if self._closed:
                raise HttpRefusal("the server is stopping", code="not_ready")
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="opsgate-authorize", daemon=True)
                thread.start()  # if it cannot start, the next request tries again
                self._thread = thread
            self._queue.append(_Queued(request, loop, future))
            if len(self._queue) == 1:
                self._cond.notify()
        # A client that goes away cancels only its wait: its request stays in the
        # queue and is decided and audited all the same, as on a pool thread.
        return await future

    def close(self, timeout: float = 30.0) -> None:
        """Take no more requests; what is queued is still decided (and audited) and
        answered; wait up to `timeout` seconds for the thread to finish."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("authorize thread did not finish", timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed, and nothing left to decide
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            try:
                self._decide(batch)
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any batch
                # Every request of the batch not answered yet is answered now (failed):
                # none waits forever, and the requests queued behind it are decided.
                log.error("authorize batch not answered", error=type(exc).__name__)
                _hand_back([(q, authorize_internal(exc)) for q in batch])

    def _decide(self, batch: list[_Queued]) -> None:
        results: list[Decision | BaseException]
        try:
            results = list(self._gate.authorize_batch([q.request for q in batch]))
        except BaseException as exc:  # noqa: BLE001 - every request of the batch fails closed
            log.error("authorize batch failed", error=type(exc).__name__)
            results = [authorize_internal(exc) for _ in batch]
        self.batches += 1
        self.decided += len(batch)
        _hand_back(list(zip(batch, results, strict=True)))


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


__all__ = ["MAX_BATCH", "Authorizer"]
