"""Operations between their attempt and their outcome, in one place.

A row is written in the attempt's audit transaction and deleted in the outcome's,
so the two records and the row agree. A row whose process is gone (same host, pid
and start time no longer running) is a run that never got its outcome: its
process died, or every write of the outcome failed. The next start repairs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select

from opsgate.store import Store, schema
from opsgate.store.processes import holder_dead, host_name, process_start

if TYPE_CHECKING:
    from opsgate.audit.log import AuditRecord


@dataclass(frozen=True, slots=True)
class OrphanRun:
    attempt_seq: int
    agent_did: str
    capability: str
    digest: str | None
    host: str
    pid: int
    started_at: float


class RunsSQL:
    """The statements, rendered once for the store's driver."""

    def __init__(self, store: Store) -> None:
        q = store.q
        self._store = store
        self._insert = q(
            "INSERT INTO operation_runs (attempt_seq, agent_did, capability, digest, host, pid, "
            "process_start, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._delete = q("DELETE FROM operation_runs WHERE attempt_seq = ?")
        self._host = host_name()
        self._pid = 0
        self._start = ""

    def started(self, agent_did: str, capability: str, digest: str | None) -> Any:
        """The attempt record's `then`: this process runs the operation it names."""
        pid = os.getpid()
        if pid != self._pid:  # forked: another process
            self._pid, self._start = pid, process_start(pid)

        def then(cur: Any, record: AuditRecord) -> None:
            cur.execute(
                self._insert,
                (
                    record.seq,
                    agent_did,
                    capability[:256],
                    digest,
                    self._host,
                    self._pid,
                    self._start,
                    record.at,
                ),
            )

        return then

    def finished(self, attempt_seq: int) -> Any:
        """The outcome record's `then`: the run is over."""

        def then(cur: Any, _record: AuditRecord) -> None:
            cur.execute(self._delete, (attempt_seq,))

        return then

    def orphans(self) -> list[OrphanRun]:
        """Runs whose process is gone (only one on this host can be seen to be)."""
        r = schema.operation_runs
        with self._store.read() as conn:
            rows = conn.execute(select(r).order_by(r.c.attempt_seq)).all()
        return [
            OrphanRun(
                int(x.attempt_seq),
                x.agent_did,
                x.capability,
                x.digest,
                x.host,
                int(x.pid),
                float(x.started_at),
            )
            for x in rows
            if holder_dead(x.host, int(x.pid), x.process_start)
        ]

    @staticmethod
    def claim(conn: Connection, attempt_seq: int) -> bool:
        """Delete an orphan's row in the repairing transaction; False when another
        replica repaired it first."""
        r = schema.operation_runs
        return bool(conn.execute(delete(r).where(r.c.attempt_seq == attempt_seq)).rowcount == 1)


__all__ = ["OrphanRun", "RunsSQL"]
