"""The migration plan: a pure function of the files, the target's history and the request.

It checks that history and files agree (an applied file edited, missing, renamed,
inserted below the head or reordered is a typed error naming the file), picks the
pending migrations up to the requested version, classifies each, and renders the
content an approval binds: every file's checksum and chain, and the SQL of every
pending statement with its findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from opsgate.errors import MigrationError
from opsgate.operations.migrate.classify import Dialect, FileAnalysis, Finding, classify
from opsgate.operations.migrate.files import CHAIN_START, MigrationFile
from opsgate.store.migration_target import HistoryRow

Mode = Literal["apply", "repair"]
_STEP_SQL_MAX = 160


@dataclass(frozen=True, slots=True)
class PendingMigration:
    file: MigrationFile
    analysis: FileAnalysis

    @property
    def destructive(self) -> bool:
        return self.analysis.destructive

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.file.version,
            "name": self.file.name,
            "checksum": self.file.checksum,
            "chain": self.file.chain,
            "transactional": self.analysis.transactional,
            "destructive": self.destructive,
            "statements": [s.to_dict() for s in self.analysis.statements],
        }


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    database: str
    dialect: Dialect
    mode: Mode
    target: int | None
    files: tuple[MigrationFile, ...]
    applied: tuple[HistoryRow, ...]
    pending: tuple[PendingMigration, ...]
    unresolved: tuple[HistoryRow, ...]  # failed or running rows no repair has cleared

    @property
    def head(self) -> int:
        return self.applied[-1].version if self.applied else 0

    @property
    def head_chain(self) -> str:
        return self.applied[-1].chain if self.applied else CHAIN_START

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for p in self.pending for s in p.analysis.statements for f in s.findings)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every finding code of the pending statements, once each, sorted: for policy."""
        return tuple(sorted({f.code for f in self.findings}))

    @property
    def destructive(self) -> bool:
        if self.mode == "repair":
            return True  # clearing a failed migration is a human's call
        return any(p.destructive for p in self.pending)

    @property
    def errors(self) -> tuple[str, ...]:
        """Why this plan may not run at all (error findings), one line each."""
        return tuple(
            f"{p.file.name} statement {s.index}: {f.code} {f.message}"
            for p in self.pending
            for s, f in p.analysis.errors
        )

    def content(self) -> dict[str, Any]:
        """What an approval is bound to (hashed into the plan digest)."""
        body: dict[str, Any] = {
            "database": self.database,
            "dialect": self.dialect,
            "mode": self.mode,
            "target": self.target,
            "head": {"version": self.head, "chain": self.head_chain},
            "files": [
                {"version": f.version, "name": f.name, "checksum": f.checksum, "chain": f.chain}
                for f in self.files
            ],
        }
        if self.mode == "repair":
            body["repair"] = [r.to_dict() for r in self.unresolved]
        else:
            body["pending"] = [p.to_dict() for p in self.pending]
            body["findings"] = list(self.codes)
        return body

    def steps(self) -> tuple[str, ...]:
        """Readable lines for the approver: each migration, each flagged statement."""
        if self.mode == "repair":
            return tuple(
                f"mark {r.name} ({r.state} since {r.started_at:.0f}, row {r.id}) as repaired"
                for r in self.unresolved
            )
        lines: list[str] = []
        for p in self.pending:
            how = "" if p.analysis.transactional else ", outside a transaction"
            mark = "DESTRUCTIVE " if p.destructive else ""
            count = len(p.analysis.statements)
            lines.append(f"{mark}apply {p.file.name} ({count} statement(s){how})")
            for s in p.analysis.statements:
                if not s.findings:
                    continue
                flag = "!!" if s.destructive else "  "
                sql = " ".join(s.sql.split())
                if len(sql) > _STEP_SQL_MAX:
                    sql = sql[: _STEP_SQL_MAX - 3] + "..."
                lines.append(f"  {flag} [{', '.join(s.codes)}] {sql}")
        return tuple(lines)

    def summary(self) -> str:
        if self.mode == "repair":
            names = ", ".join(r.name for r in self.unresolved)
            return f"repair {self.database}: clear {names}"
        if not self.pending:
            return f"migrate {self.database}: nothing to apply (at V{self.head})"
        last = self.pending[-1].file.version
        harmful = sum(1 for p in self.pending if p.destructive)
        kind = f" ({harmful} destructive)" if harmful else ""
        return (
            f"migrate {self.database}: apply {len(self.pending)} migration(s){kind}, "
            f"V{self.head} -> V{last}"
        )


def _drift(code: str, message: str, name: str) -> MigrationError:
    return MigrationError(message, code=code, file=name)


def check_history(
    files: tuple[MigrationFile, ...], history: tuple[HistoryRow, ...]
) -> tuple[tuple[HistoryRow, ...], tuple[HistoryRow, ...]]:
    """(applied rows in version order, unresolved rows); raises on any drift."""
    applied = sorted((r for r in history if r.state == "applied"), key=lambda r: r.version)
    unresolved = tuple(r for r in history if r.state in ("failed", "running"))
    by_version = {f.version: f for f in files}
    seen: set[int] = set()
    for row in applied:
        if row.version in seen:
            raise _drift(
                "migration_reordered",
                f"version {row.version} is recorded as applied twice",
                row.name,
            )
        seen.add(row.version)
        file = by_version.get(row.version)
        if file is None:
            raise _drift(
                "migration_missing",
                f"applied migration {row.name!r} is no longer in the directory",
                row.name,
            )
        if file.name != row.name:
            raise _drift(
                "migration_renamed",
                f"applied migration {row.name!r} is now named {file.name!r}",
                file.name,
            )
        if file.checksum != row.checksum:
            raise _drift(
                "migration_edited",
                f"applied migration {file.name!r} was edited after it was applied",
                file.name,
            )
    head = applied[-1].version if applied else 0
    for file in files:
        if file.version < head and file.version not in seen:
            raise _drift(
                "migration_inserted",
                f"migration {file.name!r} was added below the applied head V{head}",
                file.name,
            )
    for row in applied:
        if by_version[row.version].chain != row.chain:
            raise _drift(
                "migration_reordered",
                f"the chained checksum of {row.name!r} does not match the files before it",
                row.name,
            )
    return tuple(applied), unresolved


def build_plan(
    database: str,
    dialect: Dialect,
    files: tuple[MigrationFile, ...],
    history: tuple[HistoryRow, ...],
    *,
    mode: Mode = "apply",
    target: int | None = None,
) -> MigrationPlan:
    """The plan for `database`; raises MigrationError for drift or a bad target."""
    applied, unresolved = check_history(files, history)
    head = applied[-1].version if applied else 0
    if target is not None:
        if target < head:
            raise MigrationError(
                f"target V{target} is below the applied head V{head} (no down migrations)",
                code="migration_target_invalid",
            )
        if target not in {f.version for f in files}:
            raise MigrationError(
                f"there is no migration with version {target}", code="migration_target_invalid"
            )
    limit = target if target is not None else max((f.version for f in files), default=0)
    shown = tuple(f for f in files if f.version <= limit)
    pending: tuple[PendingMigration, ...] = ()
    if mode == "apply":
        pending = tuple(
            PendingMigration(f, classify(f.text, dialect)) for f in shown if f.version > head
        )
    return MigrationPlan(database, dialect, mode, target, shown, applied, pending, unresolved)


__all__ = ["MigrationPlan", "Mode", "PendingMigration", "build_plan", "check_history"]
