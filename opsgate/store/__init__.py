"""Storage: one SQLAlchemy engine pair over SQLite (embedded default) or PostgreSQL.

`read()` gives a snapshot transaction; `write()` gives a transaction that holds
the database's write lock from its first statement (SQLite `BEGIN IMMEDIATE`),
so read-modify-write sequences never deadlock or interleave across processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from opsgate import filelock
from opsgate.errors import ConfigError, StoreError
from opsgate.store import schema

DB_FILE = "opsgate.db"
MIGRATIONS = Path(__file__).parent / "migrations"


_PG_TIMEOUTS = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,  # ms
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
}

# The drivers opsgate ships with; any other driver name is refused up front.
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


# Lock wait and statement timeouts (lock_timeout, statement_timeout, or a bound
# set for one transaction): the database answered, but not in time.
_TIMEOUT_STATES = frozenset({"55P03", "57014"})


def unavailable(exc: OperationalError) -> StoreError:
    """The StoreError for a database that failed or did not answer in time."""
    return driver_failure(exc.orig)


def driver_failure(orig: BaseException | None) -> StoreError:
    """The StoreError for a driver's own error (raised on a raw DBAPI cursor)."""
    if getattr(orig, "sqlstate", None) in _TIMEOUT_STATES:
        return StoreError(
            "the state database did not answer in time (a lock held elsewhere, or overload)",
            code="store_timeout",
        )
    return StoreError(f"state database unavailable: {orig.__class__.__name__}")


def _normalise_url(url: str) -> str:
    try:
        parsed = make_url(url)
        _ = parsed.port  # a non-numeric port is only noticed here
    except (ArgumentError, ValueError, TypeError) as exc:
        raise ConfigError(
            "database url is not a valid SQLAlchemy url", code="database_url"
        ) from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"database driver {parsed.drivername[:40]!r} is not supported "
            "(sqlite, postgresql+psycopg)",
            code="database_url",
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


#: URL query parameters that carry a secret (libpq connection parameters).
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _check_known(current: set[str]) -> None:
    """Refuse a database whose schema is at a revision this version does not know: a
    newer opsgate migrated it (a replica left behind in a rolling upgrade), and this
    code would read and write tables it does not understand."""
    unknown = sorted(current - _schema_revisions())
    if unknown:
        raise StoreError(
            f"the state database's schema is at revision {', '.join(unknown)!r}, which this "
            "version of opsgate does not know (a newer one migrated it): upgrade this replica",
            code="schema_unknown",
        )


@functools.cache
def _schema_revisions() -> frozenset[str]:
    """Every revision this code knows (read once per process)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions())


@functools.cache
def _schema_heads() -> frozenset[str]:
    """The newest revisions this code knows: read once per process, since parsing the
    migration scripts is most of the cost of opening an up-to-date database."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


class Store:
    """The state database. Thread-safe; share one per process."""

    def __init__(self, url: str, *, session_options: str | None = None) -> None:
        """`session_options`: libpq options for every PostgreSQL session (the lock,
        statement and idle-in-transaction timeouts, see DatabaseTimeouts)."""
        self.url = _normalise_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            self._write_engine = _sqlite_engine(self.url, immediate=True)
            self._read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            given = make_url(self.url).query
            # A database that stops answering must turn into an error, not a hang:
            # bounded connects, and the kernel drops a connection whose data goes
            # unacknowledged (a partition). URL parameters win over these.
            timeouts: dict[str, Any] = {k: v for k, v in _PG_TIMEOUTS.items() if k not in given}
            if session_options and "options" not in given:
                timeouts["options"] = session_options
            self._write_engine = create_engine(
                self.url,
                pool_size=20,
                max_overflow=20,
                pool_pre_ping=True,
                connect_args=timeouts,
            )
            self._read_engine = self._write_engine
        self._migrate_lock = threading.Lock()
        # SQLite has one writer at a time. Writers queue here rather than in SQLite's
        # busy handler, which sleeps 1 to 100 ms per retry: this process's threads on a
        # lock, the processes serving one state dir on a lock file beside the database.
        self._sqlite_writer = WriterTurn(self.url) if self.dialect == "sqlite" else None
        # SQLite in WAL mode: the log the dedicated writers' durable commits sync.
        self._wal: str | None = None
        self._wal_entry_synced = False

    @classmethod
    def for_state_dir(
        cls,
        state_dir: Path,
        database_url: str | None,
        *,
        create: bool = True,
        session_options: str | None = None,
    ) -> Store:
        """The state dir's database; with `create=False` a missing embedded database
        is an error, so opening never leaves an empty one behind."""
        if database_url:
            return cls(database_url, session_options=session_options)
        path = (state_dir / DB_FILE).resolve()
        if not create and not path.is_file():
            raise ConfigError(
                f"the state database '{DB_FILE}' is missing from '{state_dir}'",
                code="gate_mismatch",
            )
        try:
            # Created owner-only before SQLite opens it: SQLite gives its -wal and
            # -shm files the database file's mode, so none is ever world-readable.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot open the state database: {exc.strerror}") from exc
        return cls(f"sqlite:///{path}")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self, *, within: float | None = None) -> Iterator[Connection]:
        """A snapshot transaction; with `within` (seconds, PostgreSQL), each of its
        statements, lock waits included, fails after that long."""
        try:
            with self._read_engine.connect() as conn:
                if within is not None and not self.is_sqlite:
                    ms = max(1, round(within * 1000))
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                yield conn
                conn.rollback()
        except OperationalError as exc:
            raise unavailable(exc) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A durable write transaction."""
        with self.writer_turn():
            try:
                with self._write_engine.begin() as conn:
                    yield conn
            except OperationalError as exc:
                raise unavailable(exc) from exc

    @property
    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """What the driver raises on a raw DBAPI cursor (its PEP 249 `Error`)."""
        return (self._write_engine.dialect.loaded_dbapi.Error,)

    @contextmanager
    def writer_turn(self) -> Iterator[None]:
        """This writer's turn to write (SQLite; nothing to wait for on PostgreSQL)."""
        if self._sqlite_writer is None:
            yield
            return
        with self._sqlite_writer.turn():
            yield

    @contextmanager
    def raw_reader(self) -> Iterator[Any]:
        """A DBAPI connection of the read engine, rolled back and returned afterwards:
        for streaming a large snapshot without SQLAlchemy's per-row cost."""
        raw = self._read_engine.raw_connection()
        try:
            yield raw
        finally:
            try:
                raw.rollback()
            finally:
                raw.close()

    def dedicated_writer(self) -> DedicatedWriter:
        return DedicatedWriter(self)

    def syncs_own_log(self, cur: Any) -> bool:
        """Whether durable commits on `cur` (a new dedicated writer's connection) sync
        the write-ahead log themselves: an SQLite database file in WAL mode, whose log
        `sync_log` then syncs. False elsewhere (PostgreSQL, a database in memory,
        another journal mode): commits there are durable as they are."""
        if not self.is_sqlite:
            return False
        path = make_url(self.url).database
        if not path or path == ":memory:" or path.startswith("file:"):
            return False
        cur.execute("PRAGMA journal_mode")
        row = cur.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            return False
        self._wal = f"{path}-wal"
        return True

    def sync_log(self) -> None:
        """Make every commit of a `DedicatedWriter` so far durable: on SQLite in WAL
        mode, a sync of the write-ahead log (its directory entry too, the first time:
        the log is not removed while a connection is open). Nothing to do where
        commits sync themselves. StoreError when the log cannot be synced."""
        if self._wal is None:
            return
        sync_file(self._wal, directory=not self._wal_entry_synced)
        self._wal_entry_synced = True

    def q(self, sql: str) -> str:
        """Rewrite '?' placeholders for the driver (psycopg wants %s)."""
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def insert_ignore(self, table: Any, values: dict[str, Any] | list[dict[str, Any]]) -> Any:
        """INSERT (of one row, or several) that skips a row whose primary key exists
        (safe under races)."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table).values(values).on_conflict_do_nothing()
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table).values(values).on_conflict_do_nothing()

    def upsert(self, table: Any, values: dict[str, Any], keys: list[str]) -> Any:
        """INSERT ... ON CONFLICT (keys) DO UPDATE with the other values."""
        changed = {k: v for k, v in values.items() if k not in keys}
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            lite = sqlite_insert(table).values(**values)
            return lite.on_conflict_do_update(index_elements=keys, set_=changed)
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        pg = postgresql_insert(table).values(**values)
        return pg.on_conflict_do_update(index_elements=keys, set_=changed)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent, safe across replicas)."""
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.runtime.migration import MigrationContext

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        heads = _schema_heads()
        with self._migrate_lock:
            try:
                engine = create_engine(self.url, poolclass=NullPool)
                with engine.connect() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_lock(7400431)"))
                        conn.commit()
                    try:
                        current = set(MigrationContext.configure(conn).get_current_heads())
                        _check_known(current)
                        if current != heads:
                            cfg.attributes["connection"] = conn
                            command.upgrade(cfg, "head")
                            conn.commit()
                    finally:
                        if self.dialect == "postgresql":
                            conn.execute(text("SELECT pg_advisory_unlock(7400431)"))
                            conn.commit()
                engine.dispose()
            except OperationalError as exc:
                raise StoreError(
                    f"cannot reach the state database: {exc.orig.__class__.__name__}"
                ) from exc
            except SQLAlchemyError as exc:
                raise StoreError(f"migration failed: {exc.__class__.__name__}") from exc

    def stored_gate_id(self) -> str | None:
        """The gate id this database holds, read without creating or migrating anything
        (None for an empty database)."""
        try:
            with self.read() as conn:
                if not inspect(conn).has_table("gate_meta"):
                    return None
                return self.meta_get(conn, "gate_id")
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read the state database: {getattr(exc, 'orig', exc).__class__.__name__}"
            ) from exc

    def describe(self) -> str:
        """The database for messages: its url without the password, wherever it is
        given (libpq also takes `?password=` and `?sslpassword=`)."""
        url = make_url(self.url)
        hidden = {k: "***" for k in url.query if k.lower() in _SECRET_QUERY_KEYS}
        return url.update_query_dict(hidden).render_as_string(hide_password=True)

    def meta_get(self, conn: Connection, key: str) -> str | None:
        row = conn.execute(
            select(schema.gate_meta.c.value).where(schema.gate_meta.c.key == key)
        ).first()
        return None if row is None else str(row[0])

    def meta_insert(self, conn: Connection, key: str, value: str) -> None:
        conn.execute(schema.gate_meta.insert().values(key=key, value=value))

    def ping(self) -> None:
        """A round trip to the database (StoreError when it does not answer)."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def restrict_files(self) -> None:
        """The embedded database holds the audit log and approver token hashes: owner only."""
        if not self.is_sqlite:
            return
        path = make_url(self.url).database
        if not path:
            return
        for suffix in ("", "-wal", "-shm"):
            f = Path(path + suffix)
            if f.exists():
                f.chmod(0o600)

    def dispose(self) -> None:
        self._write_engine.dispose()
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()
        if self._read_engine is not self._write_engine:
            self._read_engine.dispose()


# fdatasync where the platform has it (Linux); fsync elsewhere (macOS has no fdatasync).
_sync_data = getattr(os, "fdatasync", os.fsync)


def sync_file(path: str, *, directory: bool = False) -> None:
    """Sync the file at `path` to disk (with `directory`, its directory too: the
    file's own entry); StoreError when it cannot be (the write it was to make durable
    is then not known to be).

    The file's data with `fdatasync`, as SQLite syncs its own log on Linux: it
    writes the data and whatever metadata reading it back needs (the file's size),
    not its timestamps, one journal commit fewer than `fsync` (~30% less CPU and
    ~25% less time per sync measured here). The directory with `fsync`."""
    try:
        for name, flags, sync in (
            (path, os.O_RDONLY, _sync_data),
            *(
                [(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY, os.fsync)]
                if directory
                else []
            ),
        ):
            fd = os.open(name, flags | os.O_CLOEXEC)
            try:
                sync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"the state database's log could not be synced: {exc.strerror or type(exc).__name__}"
        ) from exc


class WriterTurn:
    """Whose turn it is to write an SQLite database: one thread of this process (a
    lock), and one process of those that share the file (an exclusive `flock` on
    `<database>-writer`, which the kernel releases if its holder dies).

    Only a queue: SQLite's own write lock (BEGIN IMMEDIATE) still decides, so a
    database whose lock file cannot be opened (a read-only directory, a database in
    memory) is written as correctly, only with the busy handler's sleeps between
    processes. A process waits for the file lock in steps of 0.1 to 2 ms (a blocking
    wait could not be bounded) and gives up after `timeout` seconds, as SQLite's busy
    timeout does.
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout
        self._fd: int | None = None
        path = make_url(url).database
        # Opened at the first write, so that opening a state dir that is then refused
        # (another gate's database) leaves no file behind.
        self._path = (
            f"{path}-writer"
            if path and path != ":memory:" and not path.startswith("file:")
            else None
        )

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            if self._fd is None and self._path is not None:
                self._fd = filelock.open_own(self._path)
                if self._fd is None:
                    self._path = None  # SQLite's busy handler alone
            fd = self._fd
            if fd is None:
                yield
                return
            self._acquire(fd)
            try:
                yield
            finally:
                filelock.unlock(fd)

    def _acquire(self, fd: int) -> None:
        if not filelock.lock_within(fd, self._timeout):
            raise StoreError(
                "the state database did not answer in time (a lock held elsewhere, or overload)",
                code="store_timeout",
            )

    def close(self) -> None:
        """Close the lock file (after any writer of this process has finished)."""
        if not self._lock.acquire(timeout=self._timeout):
            return  # a writer still holds its turn: the file stays open
        try:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
        finally:
            self._lock.release()


class DedicatedWriter:
    """A DBAPI connection kept out of the pool for one writer at a time.

    The audit log's group-commit leader writes every batch through it: no pool
    checkout, reset or return per batch, which is most of the CPU of a small
    transaction. The owner serialises use (the audit writer lock). A connection
    that fails is dropped and a fresh one is opened on the next use.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn: Any = None
        self._cur: Any = None
        self._sync = "FULL"  # SQLite's synchronous level on the connection (set on connect)
        self._own_log = False  # its durable commits sync the log (`Store.syncs_own_log`)
        # The transaction in progress is made durable by a sync of the log after it.
        self.syncs_log = False
        # Set inside a `sync_later` transaction: sync all the same before returning.
        self.sync_now = False

    @contextmanager
    def transaction(self, *, durable: bool = True, sync_later: bool = False) -> Iterator[Any]:
        """One transaction. `durable=False` commits without waiting for the disk
        (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit off): only for a
        caller that makes a durable commit of its own before it answers anyone. Both
        databases log in order, so that later commit (its fsync of the WAL, its flush
        up to its own record) makes this one durable too; what a crash can lose is
        only the record of a request that was never answered.

        On an SQLite database in WAL mode a durable transaction commits the same way
        and then syncs the write-ahead log itself, once its turn is over: the next
        writer (another worker process) writes while this one waits for the disk,
        and a sync carries every commit before it. The log is only appended to until
        a checkpoint has copied it into the database and synced that, so the sync
        makes this commit durable, in the log or already in the database.

        `sync_later`: that sync is the caller's (`Store.sync_log`, before it answers
        anyone), unless the transaction sets `sync_now` (a record that must be durable
        before this returns). Nothing changes where commits sync themselves."""
        if self._conn is None:
            try:
                conn = self._store._write_engine.raw_connection()
            except OperationalError as exc:
                raise StoreError(
                    f"state database unavailable: {exc.orig.__class__.__name__}"
                ) from exc
            conn.detach()  # ours until close(); never handed to another caller
            self._conn, self._cur, self._sync = conn, conn.cursor(), "FULL"
            self._own_log = self._store.syncs_own_log(self._cur)
        conn, cur = self._conn, self._cur
        sync_after = durable and self._own_log
        self.syncs_log = sync_after
        self.sync_now = False
        with self._store.writer_turn():
            try:
                if self._store.is_sqlite:
                    # Set before every transaction that needs another level (SQLite
                    # refuses to change it inside one): never a durable commit at
                    # NORMAL without the sync of the log after it.
                    level = "FULL" if durable and not sync_after else "NORMAL"
                    if self._sync != level:
                        cur.execute(f"PRAGMA synchronous={level}")
                        self._sync = level
                    cur.execute("BEGIN IMMEDIATE")
                elif not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield cur
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:  # noqa: BLE001 - the connection is gone; open a new one next time
                    self.close()
                raise
        if sync_after and (self.sync_now or not sync_later):
            self._store.sync_log()

    def close(self) -> None:
        conn, self._conn, self._cur = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


__all__ = ["DedicatedWriter", "Store", "WriterTurn", "schema"]
