"""Every statement opsgate runs on a migration *target* database, by name.

The migration runner never composes SQL of its own: it reads the history, takes
and releases the run lock, records a migration as running, runs its statements
(in one transaction, or alone outside one) and marks it applied, failed or
repaired through the methods here.

A migration is recorded as `running` in its own committed transaction before its
statements start; the statements and the update to `applied` commit together. A
process killed in between leaves the database without any of the migration's
changes and a `running` row that no live holder of the lock owns: interrupted.

The connection URL is only used to connect: it is never kept in an attribute,
a message or a repr (it may hold a password).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

from opsgate.errors import ConfigError, MigrationError, StatementFailed, TargetDatabaseError, scrub

HISTORY_TABLE = "opsgate_schema_history"
LOCK_TABLE = "opsgate_migration_lock"  # SQLite: the lock row
#: PostgreSQL advisory lock (two int4 keys): "opsg" and the history table's lock.
PG_LOCK_KEYS = (0x6F707367, 1)
_MESSAGE_MAX = 300

TargetDialect = Literal["postgresql", "sqlite"]

_PG_HISTORY = """
CREATE TABLE IF NOT EXISTS opsgate_schema_history (
    id BIGSERIAL PRIMARY KEY,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    chain TEXT NOT NULL,
    state TEXT NOT NULL,
    success BOOLEAN,
    started_at DOUBLE PRECISION NOT NULL,
    applied_at DOUBLE PRECISION,
    duration_ms BIGINT,
    agent TEXT NOT NULL,
    transactional BOOLEAN NOT NULL,
    detail TEXT,
    repaired_by TEXT,
    repaired_at DOUBLE PRECISION
)"""

_SQLITE_HISTORY = """
CREATE TABLE IF NOT EXISTS opsgate_schema_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    chain TEXT NOT NULL,
    state TEXT NOT NULL,
    success INTEGER,
    started_at REAL NOT NULL,
    applied_at REAL,
    duration_ms INTEGER,
    agent TEXT NOT NULL,
    transactional INTEGER NOT NULL,
    detail TEXT,
    repaired_by TEXT,
    repaired_at REAL
)"""

_SQLITE_LOCK = """
CREATE TABLE IF NOT EXISTS opsgate_migration_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_start TEXT NOT NULL,
    token TEXT NOT NULL,
    acquired_at REAL NOT NULL
)"""

_SELECT_HISTORY = (
    "SELECT id, version, name, checksum, chain, state, success, started_at, applied_at, "
    "duration_ms, agent, transactional, detail, repaired_by, repaired_at "
    "FROM opsgate_schema_history ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One attempt at one migration: running, applied, failed, or failed then repaired."""

    id: int
    version: int
    name: str
    checksum: str
    chain: str
    state: str  # running | applied | failed | repaired
    success: bool | None
    started_at: float
    applied_at: float | None
    duration_ms: int | None
    agent: str
    transactional: bool
    detail: str | None = None
    repaired_by: str | None = None
    repaired_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "checksum": self.checksum,
            "chain": self.chain,
            "state": self.state,
            "success": self.success,
            "started_at": self.started_at,
            "applied_at": self.applied_at,
            "duration_ms": self.duration_ms,
            "agent": self.agent,
            "transactional": self.transactional,
            "detail": self.detail,
            "repaired_by": self.repaired_by,
            "repaired_at": self.repaired_at,
        }


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """Session limits on the target: a migration never waits or runs unbounded."""

    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 600_000
    application_name: str = "opsgate-migrate"


@dataclass(frozen=True, slots=True)
class NewRun:
    version: int
    name: str
    checksum: str
    chain: str
    agent: str
    transactional: bool


def _row(values: Sequence[Any]) -> HistoryRow:
    (rid, version, name, checksum, chain, state, success, started, applied, duration) = values[:10]
    agent, transactional, detail, repaired_by, repaired_at = values[10:]
    return HistoryRow(
        int(rid),
        int(version),
        str(name),
        str(checksum),
        str(chain),
        str(state),
        None if success is None else bool(success),
        float(started),
        None if applied is None else float(applied),
        None if duration is None else int(duration),
        str(agent),
        bool(transactional),
        detail,
        repaired_by,
        None if repaired_at is None else float(repaired_at),
    )


def _message(exc: BaseException) -> str:
    """The database's own one-line reason (never the statement's data detail)."""
    diag = getattr(exc, "diag", None)
    # A data exception (class 22) quotes the offending value, which may be a row's
    # (`invalid input syntax for type integer: "<a password>"`): the agent and the
    # audit get the SQLSTATE only, as they never get a query's rows.
    if str(getattr(diag, "sqlstate", None) or "").startswith("22"):
        return "data exception (the value is not shown)"
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = str(primary or (exc.args[0] if exc.args else exc.__class__.__name__))
    text = " ".join(text.split())
    return scrub(text[:_MESSAGE_MAX])


def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (tells a reused pid from the lock's holder)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: a live pid is all we can know
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie holds nothing
        return False
    return not start or (len(fields) > 19 and fields[19] == start)


class MigrationTarget:
    """A connection to one target database (PostgreSQL or SQLite)."""

    def __init__(
        self, dialect: TargetDialect, conn: Any, settings: TargetSettings, *, label: str
    ) -> None:
        self.dialect = dialect
        self._conn = conn
        self._settings = settings
        self._label = label
        self._token = uuid.uuid4().hex
        self._locked = False
        self._deadline: float | None = None

    def __repr__(self) -> str:
        return f"MigrationTarget({self._label!r}, {self.dialect})"

    # -- connecting ----------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        label: str,
        settings: TargetSettings,
        read_only: bool = False,
        connect_timeout: float = 10.0,
    ) -> MigrationTarget:
        """Open `url`; read-only opens create nothing (a missing SQLite file is empty)."""
        try:
            parsed = make_url(url)
        except Exception as exc:  # any parse failure: the URL is not shown
            raise ConfigError(
                f"database {label!r} has an invalid url", code="database_url"
            ) from exc
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            return cls._connect_sqlite(parsed.database or "", label, settings, read_only)
        if backend == "postgresql":
            return cls._connect_postgres(parsed, label, settings, read_only, connect_timeout)
        raise ConfigError(
            f"database {label!r}: only sqlite and postgresql targets are supported",
            code="database_url",
        )

    @classmethod
    def _connect_sqlite(
        cls, path: str, label: str, settings: TargetSettings, read_only: bool
    ) -> MigrationTarget:
        if not path or path == ":memory:":
            raise ConfigError(f"database {label!r} needs a file path", code="database_url")
        try:
            if read_only:
                if not Path(path).exists():
                    return cls("sqlite", None, settings, label=label)
                conn = sqlite3.connect(
                    Path(path).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None
                )
            else:
                conn = sqlite3.connect(path, isolation_level=None, timeout=0.2)
        except sqlite3.Error as exc:
            raise TargetDatabaseError(
                f"cannot open database {label!r}: {exc.__class__.__name__}",
                code="database_unavailable",
            ) from exc
        # Confinement: a migration touches this file only, never another (ATTACH,
        # VACUUM INTO), whatever the classifier thought of the statement.
        conn.set_authorizer(_sqlite_authorizer)
        target = cls("sqlite", conn, settings, label=label)
        conn.set_progress_handler(target._past_deadline, 10_000)
        return target

    @classmethod
    def _connect_postgres(
        cls,
        parsed: Any,
        label: str,
        settings: TargetSettings,
        read_only: bool,
        connect_timeout: float,
    ) -> MigrationTarget:
        import psycopg

        options = {str(k): str(v) for k, v in parsed.query.items()}
        kwargs: dict[str, Any] = {
            "host": parsed.host,
            "port": parsed.port,
            "user": parsed.username,
            "password": parsed.password,
            "dbname": parsed.database,
            "application_name": settings.application_name[:63],
            "connect_timeout": max(1, int(connect_timeout)),
            **options,
        }
        if read_only:
            kwargs["options"] = "-c default_transaction_read_only=on"
        try:
            conn = psycopg.connect(
                autocommit=True, **{k: v for k, v in kwargs.items() if v is not None}
            )
        except psycopg.Error as exc:
            raise TargetDatabaseError(
                f"cannot connect to database {label!r}: {exc.__class__.__name__}",
                code="database_unavailable",
            ) from exc
        target = cls("postgresql", conn, settings, label=label)
        if not read_only:
            target._apply_settings()
        return target

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> MigrationTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _past_deadline(self) -> int:
        """SQLite progress handler: abort the running statement past its deadline."""
        return 1 if self._deadline is not None and time.monotonic() > self._deadline else 0

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "sqlite":
            return list(self._conn.execute(sql, tuple(params)).fetchall())
        with self._conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s").encode(), tuple(params))
            return list(cur.fetchall()) if cur.description else []

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        if self.dialect == "sqlite":
            return int(self._conn.execute(sql, tuple(params)).rowcount)
        with self._conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s").encode(), tuple(params))
            return int(cur.rowcount)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.dialect == "sqlite":
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        else:
            with self._conn.transaction():
                yield

    def _errors(self) -> tuple[type[BaseException], ...]:
        if self.dialect == "sqlite":
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    @contextlib.contextmanager
    def _unavailable(self, what: str) -> Iterator[None]:
        """A database error in bookkeeping: typed, with the class name only."""
        try:
            yield
        except self._errors() as exc:
            raise TargetDatabaseError(
                f"database {self._label!r}: {what} failed: {exc.__class__.__name__}",
                code="database_unavailable",
            ) from exc

    def _apply_settings(self) -> None:
        """Session limits, re-applied before each migration (a migration's own SET
        cannot lift them for the next one)."""
        s = self._settings
        with self._unavailable("setting timeouts"):
            self._run(
                "SELECT set_config('lock_timeout', ?, false), "
                "set_config('statement_timeout', ?, false), "
                "set_config('idle_in_transaction_session_timeout', ?, false), "
                # Strings as the classifier (pglast) read them, in the UTF-8 sent: with
                # strings not standard, or a client encoding (SJIS, BIG5, GBK) where a
                # byte before a backslash joins it into one character, a string (and
                # so a statement) ends elsewhere than the classifier saw.
                "set_config('standard_conforming_strings', 'on', false), "
                "set_config('client_encoding', 'UTF8', false)",
                (f"{s.lock_timeout_ms}ms", f"{s.statement_timeout_ms}ms", "60000ms"),
            )
            # A gate process that dies mid-statement is noticed within a second, so
            # its transaction rolls back and its lock is freed instead of running on.
            if int(self._conn.info.server_version) >= 140000:
                self._run("SELECT set_config('client_connection_check_interval', '1000ms', false)")

    # -- history -------------------------------------------------------------------------

    def holds_gate(self, gate_id: str) -> bool:
        """Whether this database holds the state of the gate `gate_id` (its `gate_meta`
        row, in any schema): the gate's own database reached under another name (a host
        alias, a socket, another path to the file). A `gate_meta` that cannot be read
        counts as the gate's (fail closed)."""
        if self._conn is None:
            return False  # a SQLite file that does not exist yet
        try:
            if self.dialect == "sqlite":
                found = self._fetch(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND lower(name) = 'gate_meta'"
                )
                held = (
                    self._fetch("SELECT value FROM gate_meta WHERE key = 'gate_id'")
                    if found
                    else []
                )
                return any(row[0] == gate_id for row in held)
            from psycopg import sql

            schemas = self._fetch(
                "SELECT n.nspname FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = 'gate_meta'"
            )
            query = sql.SQL("SELECT value FROM {}.gate_meta WHERE key = 'gate_id'")
            for (schema,) in schemas:
                with self._conn.cursor() as cur:
                    cur.execute(query.format(sql.Identifier(schema)))
                    if any(row[0] == gate_id for row in cur.fetchall()):
                        return True
        except self._errors():
            return True
        return False

    def read_history(self) -> tuple[HistoryRow, ...]:
        """Every recorded attempt, oldest first; empty when nothing was ever applied."""
        if self._conn is None:
            return ()
        with self._unavailable("reading the history"):
            if self.dialect == "sqlite":
                exists = self._fetch(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (HISTORY_TABLE,),
                )
            else:
                exists = self._fetch("SELECT 1 WHERE to_regclass(?) IS NOT NULL", (HISTORY_TABLE,))
            if not exists:
                return ()
            rows = self._fetch(_SELECT_HISTORY)
        return tuple(_row(r) for r in rows)

    def ensure_history(self) -> None:
        with self._unavailable("creating the history table"):
            if self.dialect == "sqlite":
                with self._transaction():
                    self._run(_SQLITE_HISTORY)
                    self._run(_SQLITE_LOCK)
            else:
                self._run(_PG_HISTORY)

    # -- the run lock --------------------------------------------------------------------

    def try_lock(self, holder: str, now: float) -> bool:
        """Take the run lock if it is free (or its SQLite holder is dead). Never waits."""
        with self._unavailable("taking the migration lock"):
            if self.dialect == "postgresql":
                got = self._fetch("SELECT pg_try_advisory_lock(?, ?)", PG_LOCK_KEYS)
                self._locked = bool(got and got[0][0])
                return self._locked
            pid = os.getpid()
            try:
                with self._transaction():
                    self._run(_SQLITE_HISTORY)
                    self._run(_SQLITE_LOCK)
                    row = self._fetch(
                        "SELECT host, pid, process_start FROM opsgate_migration_lock WHERE id = 1"
                    )
                    if row and not self._holder_dead(*row[0]):
                        return False
                    self._run("DELETE FROM opsgate_migration_lock WHERE id = 1")
                    self._run(
                        "INSERT INTO opsgate_migration_lock (id, holder, host, pid, process_start, "
                        "token, acquired_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
                        (holder, socket.gethostname(), pid, _process_start(pid), self._token, now),
                    )
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    return False  # another writer (a running migration) holds the file
                raise
            self._locked = True
            return True

    @staticmethod
    def _holder_dead(host: str, pid: int, start: str) -> bool:
        """Only a holder on this host can be seen to be dead; elsewhere it is alive."""
        return host == socket.gethostname() and not _process_alive(int(pid), str(start))

    def lock_holder(self) -> str | None:
        """Who holds the run lock now (None: nobody, or a SQLite holder that died)."""
        if self._conn is None:
            return None
        with self._unavailable("reading the migration lock"):
            if self.dialect == "postgresql":
                rows = self._fetch(
                    "SELECT a.application_name, a.pid, a.backend_start::text "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ?::oid "
                    "AND l.objid = ?::oid AND l.objsubid = 2 AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())",
                    PG_LOCK_KEYS,
                )
                if not rows:
                    return None
                app, pid, since = rows[0]
                return f"{app or 'unknown'} (backend pid {pid}, connected {since})"
            exists = self._fetch(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LOCK_TABLE,)
            )
            if not exists:
                return None
            rows = self._fetch(
                "SELECT holder, host, pid, process_start, acquired_at FROM opsgate_migration_lock"
            )
            if not rows:
                return None
            holder, host, pid, start, since = rows[0]
            if self._holder_dead(host, pid, start):
                return None
            return f"{holder} (pid {pid} on {host}, since {float(since):.0f})"

    def unlock(self) -> None:
        if not self._locked or self._conn is None:
            return
        self._locked = False
        with contextlib.suppress(*self._errors()):
            if self.dialect == "postgresql":
                self._run("SELECT pg_advisory_unlock(?, ?)", PG_LOCK_KEYS)
            else:
                with self._transaction():
                    self._run("DELETE FROM opsgate_migration_lock WHERE token = ?", (self._token,))

    # -- running a migration -------------------------------------------------------------

    def record_running(self, run: NewRun, started_at: float) -> int:
        """Commit a `running` row before the migration starts; returns its id."""
        with self._unavailable("recording the migration"), self._transaction():
            params = (
                run.version,
                run.name,
                run.checksum,
                run.chain,
                "running",
                started_at,
                run.agent,
                run.transactional,
            )
            insert = (
                "INSERT INTO opsgate_schema_history (version, name, checksum, chain, state, "
                "started_at, agent, transactional) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            )
            if self.dialect == "sqlite":
                return int(self._conn.execute(insert, params).lastrowid)
            return int(self._fetch(insert + " RETURNING id", params)[0][0])

    def run_migration(
        self,
        row_id: int,
        statements: Sequence[str],
        *,
        transactional: bool,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        """Run the statements and mark the row applied: together in one transaction, or
        (a lone statement that cannot run in one) the statement, then the mark.

        Raises StatementFailed (index, sqlstate) with everything rolled back.
        """
        if self.dialect == "postgresql":
            self._apply_settings()
        index = 0  # the statement running; 0 while recording the result
        try:
            if transactional:
                with self._transaction():
                    for index, sql in enumerate(statements, start=1):  # noqa: B007
                        self._statement(sql)
                    index = 0
                    self._mark_applied(row_id, clock(), started)
            else:
                for index, sql in enumerate(statements, start=1):  # noqa: B007
                    self._statement(sql)
                index = 0
                with self._transaction():
                    self._mark_applied(row_id, clock(), started)
        except self._errors() as exc:
            sqlstate = getattr(exc, "sqlstate", None) or exc.__class__.__name__
            where = f"statement {index}" if index else "recording the result"
            raise StatementFailed(
                f"{where} failed: [{sqlstate}] {_message(exc)}",
                statement=index,
                sqlstate=sqlstate,
            ) from exc
        finally:
            self._deadline = None

    def _statement(self, sql: str) -> None:
        """One classified statement, exactly as classified (one statement per call)."""
        if self.dialect == "sqlite":
            self._deadline = time.monotonic() + self._settings.statement_timeout_ms / 1000
            self._conn.execute(sql)
        else:
            # Prepared (the extended protocol): the server takes exactly one statement,
            # so nothing the classifier did not see can ride along after a ';' it read
            # differently (a migration's own SET of standard_conforming_strings or
            # client_encoding changes how later text is read).
            with self._conn.cursor() as cur:
                cur.execute(sql.encode(), prepare=True)

    def _mark_applied(self, row_id: int, at: float, started: float) -> None:
        """The run's row marked applied, in the migration's transaction; a row the
        migration itself changed or removed fails the run (all of it rolled back)."""
        changed = self._run(
            "UPDATE opsgate_schema_history SET state = 'applied', success = ?, applied_at = ?, "
            "duration_ms = ? WHERE id = ? AND state = 'running'",
            (True, at, int(max(0.0, at - started) * 1000), row_id),
        )
        if changed != 1:
            raise StatementFailed(
                "recording the result failed: the migration changed its own history row",
                statement=0,
                sqlstate="history_changed",
            )

    def record_failed(self, row_id: int, detail: str, at: float, started: float) -> None:
        with self._unavailable("recording the failure"), self._transaction():
            self._run(
                "UPDATE opsgate_schema_history SET state = 'failed', success = ?, applied_at = ?, "
                "duration_ms = ?, detail = ? WHERE id = ? AND state = 'running'",
                (False, at, int(max(0.0, at - started) * 1000), detail[:_MESSAGE_MAX], row_id),
            )

    def record_repaired(self, row_ids: Sequence[int], by: str, at: float, reason: str) -> int:
        """Mark failed/running rows repaired; returns how many changed (all or none)."""
        with self._unavailable("recording the repair"), self._transaction():
            changed = 0
            for rid in row_ids:
                rows = self._fetch(
                    "UPDATE opsgate_schema_history SET state = 'repaired', repaired_by = ?, "
                    "repaired_at = ?, detail = COALESCE(detail || '; ', '') || ? "
                    "WHERE id = ? AND state IN ('failed', 'running') RETURNING id",
                    (by, at, reason[:_MESSAGE_MAX], rid),
                )
                changed += len(rows)
            if changed != len(row_ids):
                raise MigrationError(
                    "the history changed while repairing; nothing was repaired",
                    code="migration_plan_stale",
                )
            return changed


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _sqlite_authorizer(action: int, *_: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


__all__ = [
    "HISTORY_TABLE",
    "LOCK_TABLE",
    "HistoryRow",
    "MigrationTarget",
    "NewRun",
    "StatementFailed",
    "TargetSettings",
]
