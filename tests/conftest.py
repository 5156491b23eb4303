"""Shared fixtures: a fresh gate per test, on SQLite or on the real PostgreSQL.

PostgreSQL and OpenBao come from scripts/test.sh (OPSGATE_TEST_PG_URL,
OPSGATE_TEST_VAULT_ADDR/TOKEN); each PostgreSQL test gets its own database, dropped
afterwards. A PostgreSQL test without the server fails
loudly: it is never silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import opsgate
from opsgate.store import Store

SEED_CAPABILITIES = [
    "deploy:staging",
    "deploy:production",
    "read:secrets",
    "write:secrets",
    "migrate:database",
    "read:monitoring",
]


def _tables(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]


@pytest.fixture(scope="session", autouse=True)
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    """Most tests open a gate on a fresh SQLite state dir, and migrating it is most
    of the cost of that. The schema is migrated once per session by the real
    `Store.migrate`, and a fresh, empty SQLite database gets a copy of that file
    before `Store.migrate` looks at it (finding it current). A database with any
    table, PostgreSQL, and every subprocess run the real migrations as before;
    test_template_is_what_migrations_make checks the copy is what they make."""
    path = tmp_path_factory.mktemp("template") / "opsgate.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    store.dispose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    template = path.read_bytes()
    real = Store.migrate

    def migrate(self: Store) -> None:
        file = Path(make_url(self.url).database or "") if self.is_sqlite else None
        if file is not None and file.is_file() and not _tables(file):
            # No connection may hold the empty file while it is replaced.
            self._write_engine.dispose()
            self._read_engine.dispose()
            for extra in ("-wal", "-shm"):
                Path(f"{file}{extra}").unlink(missing_ok=True)
            with open(file, "r+b") as f:  # keeps the file's 0600 mode
                f.truncate(0)
                f.write(template)
        real(self)

    migrate.__wrapped__ = real  # type: ignore[attr-defined]
    patch = pytest.MonkeyPatch()
    patch.setattr(Store, "migrate", migrate)
    yield template
    patch.undo()


def _admin_url() -> str:
    url = os.environ.get("OPSGATE_TEST_PG_URL")
    if not url:
        pytest.fail("OPSGATE_TEST_PG_URL is not set: run the suite with scripts/test.sh")
    return url


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the test server, dropped afterwards."""
    admin = _admin_url()
    name = f"opsgate_t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the test server."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def pg_url_module() -> Iterator[str]:
    """One fresh database shared by the tests of a module (for costly setups)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def vault() -> tuple[str, str]:
    """(address, root token) of the real OpenBao dev server started by scripts/test.sh.

    Tests that use it create their own mounts/paths (uuid-named) so they never share state.
    """
    addr = os.environ.get("OPSGATE_TEST_VAULT_ADDR")
    token = os.environ.get("OPSGATE_TEST_VAULT_TOKEN")
    if not addr or not token:
        pytest.fail("OPSGATE_TEST_VAULT_ADDR is not set: run the suite with scripts/test.sh")
    return addr, token


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (embedded SQLite) or a fresh PostgreSQL database: storage tests run on both."""
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[opsgate.Gate]:
    g = opsgate.Gate.open(tmp_path / "state")
    yield g
    g.close()


@pytest.fixture
def supervisor(gate: opsgate.Gate) -> opsgate.Agent:
    return gate.register_agent(
        "devops-supervisor",
        capabilities=SEED_CAPABILITIES,
        sponsor="platform-team@company.com",
        trust_score=920,
    )


@pytest.fixture
def deploy_agent(supervisor: opsgate.Agent) -> opsgate.Agent:
    return supervisor.delegate(
        name="deploy-agent", capabilities=["deploy:staging", "deploy:production"]
    )
