"""Applying, repairing and reporting: the I/O half of migrations.

Each run takes the target's lock with a bounded wait (PostgreSQL: an advisory
lock; SQLite: a lock row whose holder is checked for life), re-reads the history
under it and refuses unless it is exactly what the plan was made from, then runs
each migration as: a `running` row committed on its own, then the statements and
the `applied` mark in one transaction. A failure rolls the migration back, marks
its row `failed` and stops. A failed or interrupted row blocks every later run
until an explicit repair clears it; nothing is ever retried on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opsgate.errors import MigrationContended, MigrationError, StoreError
from opsgate.operations.migrate.files import CHAIN_START
from opsgate.store.migration_target import (
    HistoryRow,
    MigrationTarget,
    NewRun,
    StatementFailed,
)

_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Step:
    """One pending migration as the plan content holds it (what was approved)."""

    version: int
    name: str
    checksum: str
    chain: str
    transactional: bool
    statements: tuple[str, ...]

    @classmethod
    def from_content(cls, item: dict[str, Any]) -> Step:
        return cls(
            int(item["version"]),
            str(item["name"]),
            str(item["checksum"]),
            str(item["chain"]),
            bool(item["transactional"]),
            tuple(str(s["sql"]) for s in item["statements"]),
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    applied: tuple[str, ...] = ()
    failed: str | None = None  # the file that failed
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def locked_error(database: str, holder: str | None, waited: float) -> MigrationContended:
    who = holder or "another run that has just finished or is starting"
    return MigrationContended(
        f"database {database!r} is being migrated by {who}; waited {waited:.1f}s",
        code="migration_locked",
        holder=holder,
    )


@contextmanager
def run_lock(
    target: MigrationTarget,
    database: str,
    *,
    holder: str,
    wait_seconds: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the target's migration lock; after `wait_seconds`, `migration_locked`."""
    start = time.monotonic()
    while not target.try_lock(holder, clock()):
        waited = time.monotonic() - start
        if waited >= wait_seconds:
            try:
                who = target.lock_holder()
            except StoreError:
                who = None  # busy with the holder's own transaction: no name to give
            raise locked_error(database, who, waited)
        sleep(min(_POLL_SECONDS, max(0.0, wait_seconds - waited)))
    try:
        yield
    finally:
        target.unlock()


def needs_repair(database: str, rows: tuple[HistoryRow, ...]) -> MigrationError:
    row = rows[0]
    what = "failed" if row.state == "failed" else "was interrupted"
    return MigrationError(
        f"migration {row.name!r} on {database!r} {what}; nothing runs until a repair clears it",
        code="migration_needs_repair",
        file=row.name,
        state=row.state,
    )


def _check_unchanged(
    database: str, history: tuple[HistoryRow, ...], head: int, head_chain: str
) -> None:
    """Under the lock: the history must still be what the plan was made from."""
    applied = sorted((r for r in history if r.state == "applied"), key=lambda r: r.version)
    now_head = applied[-1].version if applied else 0
    now_chain = applied[-1].chain if applied else CHAIN_START
    unresolved = tuple(r for r in history if r.state in ("failed", "running"))
    if unresolved:
        raise needs_repair(database, unresolved)
    if (now_head, now_chain) != (head, head_chain):
        # Another run moved it between plan and lock: contention, nothing applied.
        raise MigrationContended(
            f"database {database!r} moved to V{now_head} since the plan was made at V{head}; "
            "plan again",
            code="migration_plan_stale",
        )


def apply(
    target: MigrationTarget,
    database: str,
    steps: tuple[Step, ...],
    *,
    head: int,
    head_chain: str,
    agent: str,
    wait_seconds: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """Apply `steps` in order under the lock; stop at the first failure."""
    with run_lock(
        target, database, holder=agent, wait_seconds=wait_seconds, clock=clock, sleep=sleep
    ):
        target.ensure_history()
        _check_unchanged(database, target.read_history(), head, head_chain)
        applied: list[str] = []
        for step in steps:
            started = clock()
            row_id = target.record_running(
                NewRun(
                    step.version,
                    step.name,
                    step.checksum,
                    step.chain,
                    agent,
                    step.transactional,
                ),
                started,
            )
            try:
                target.run_migration(
                    row_id,
                    step.statements,
                    transactional=step.transactional,
                    clock=clock,
                    started=started,
                )
            except StatementFailed as exc:
                target.record_failed(row_id, exc.message, clock(), started)
                return RunResult(
                    tuple(applied),
                    step.name,
                    exc.message,
                    {
                        "statement": exc.detail.get("statement"),
                        "sqlstate": exc.detail.get("sqlstate"),
                    },
                )
            applied.append(step.name)
        return RunResult(tuple(applied))


def repair(
    target: MigrationTarget,
    database: str,
    row_ids: tuple[int, ...],
    *,
    agent: str,
    reason: str,
    wait_seconds: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Clear exactly the failed/interrupted rows the plan named, under the lock (so
    no run that still holds it can be running them)."""
    with run_lock(
        target, database, holder=agent, wait_seconds=wait_seconds, clock=clock, sleep=sleep
    ):
        target.ensure_history()
        current = tuple(r.id for r in target.read_history() if r.state in ("failed", "running"))
        if tuple(sorted(current)) != tuple(sorted(row_ids)):
            raise MigrationError(
                f"the failed migrations of {database!r} changed since the plan; plan again",
                code="migration_plan_stale",
            )
        # The target's errors are MigrationErrors already (TargetDatabaseError).
        return target.record_repaired(row_ids, agent, clock(), reason)


__all__ = ["RunResult", "Step", "apply", "locked_error", "needs_repair", "repair", "run_lock"]
