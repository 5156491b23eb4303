"""Refusals no agent can be charged for, counted and written as periodic summaries.

A forged, garbage or foreign token (or one naming no known agent) proves nothing
about who sent it: one durable audit row per such refusal would let anyone turn a
flood of junk into a flood of fsyncs and rows. They are counted instead, exactly,
per code, and written as one `credential.rejected_summary` event per interval
(at the first refusal after it, or by a timer when none follows) and when the gate
closes: counts per code, the first and last time, and a few samples (code and the
gate's own reason text; never the token, which is not kept).

What this gives up: the individual refusals of unproven tokens are not in the log,
only how many of each kind, when, and a few examples; a refusal that names a
proven agent (a genuine credential expired, revoked or presented without proof)
is still recorded on its own and charged.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import structlog

from opsgate.errors import OpsgateError

log = structlog.get_logger("opsgate.audit")
SUMMARY_EVENT = "credential.rejected_summary"
MAX_SAMPLES = 5


class _Appender(Protocol):
    def append(self, event_type: str, *, actor: str | None = None, **fields: Any) -> Any: ...


class RefusalSummary:
    """Exact per-code counts of unproven refusals, flushed as one event per interval."""

    def __init__(self, audit: _Appender, *, interval: float) -> None:
        self._audit = audit
        self._interval = interval
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._samples: list[dict[str, str]] = []
        self._since: float | None = None
        self._until: float | None = None
        self._opened = time.monotonic()  # when the current window began
        self._timer: threading.Timer | None = None
        self._closed = False

    def add(self, code: str, reason: str, at: float) -> None:
        """Count one refusal; writes the summary when the window is over."""
        with self._lock:
            if not self._counts:
                self._opened = time.monotonic()
            self._counts[code] = self._counts.get(code, 0) + 1
            if len(self._samples) < MAX_SAMPLES and all(s["code"] != code for s in self._samples):
                self._samples.append({"code": code, "reason": reason})
            self._since = at if self._since is None else min(self._since, at)
            self._until = at if self._until is None else max(self._until, at)
            due = time.monotonic() - self._opened >= self._interval
        if due:
            self.flush()
        else:
            self._schedule()

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def flush(self) -> bool:
        """Write what was counted as one event (nothing when nothing was). A failed
        write puts the counts back, so none is lost or counted twice."""
        with self._lock:
            if not self._counts:
                return False
            counts, samples, since, until = self._counts, self._samples, self._since, self._until
            self._counts, self._samples, self._since, self._until = {}, [], None, None
            self._opened = time.monotonic()
        try:
            self._audit.append(
                SUMMARY_EVENT,
                count=sum(counts.values()),
                codes=dict(sorted(counts.items())),
                since=since,
                until=until,
                samples=samples,
            )
        except OpsgateError as exc:
            with self._lock:
                for code, n in counts.items():
                    self._counts[code] = self._counts.get(code, 0) + n
                self._samples = (samples + self._samples)[:MAX_SAMPLES]
                assert since is not None and until is not None
                self._since = since if self._since is None else min(since, self._since)
                self._until = until if self._until is None else max(until, self._until)
            log.warning("refusal summary not audited yet", code=exc.code)
            self._schedule()
            return False
        return True

    def _schedule(self) -> None:
        """One timer at most, while counts wait: a lone burst is written without a
        later refusal to trigger it."""
        if self._timer is not None or self._closed:
            return
        with self._lock:
            if self._timer is not None or self._closed:
                return
            delay = max(0.05, self._interval - (time.monotonic() - self._opened))
            timer = threading.Timer(delay, self._on_timer)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - a timer thread must not die loudly
            log.warning("refusal summary not audited", error=type(exc).__name__)

    def close(self) -> None:
        """Stop the timer and write what is left (best effort: the gate is closing)."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - closing must not fail on it
            log.warning("refusal summary not audited at close", error=type(exc).__name__)


__all__ = ["MAX_SAMPLES", "SUMMARY_EVENT", "RefusalSummary"]
