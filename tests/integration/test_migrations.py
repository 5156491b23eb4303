"""Migrations against real databases: the same set on SQLite and on the real
PostgreSQL, failures rolled back and recorded, drift refused by name, locks and
timeouts, a run killed with SIGKILL mid-migration, and two processes applying at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from opsgate.config import Config
from opsgate.errors import MigrationError
from opsgate.operations.base import Operation, Outcome, RunContext
from opsgate.operations.migrate import MigrationExecutor
from opsgate.store.migration_target import MigrationTarget, TargetSettings

CHILD = Path(__file__).parent / "migrate_child.py"
AGENT = RunContext("did:key:z6MkTest", "database-agent")

SLOW = {
    "postgresql": "SELECT pg_sleep(60);",
    # A long computation that writes nothing: SQLite's equivalent of a slow statement.
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000000000) "
    "SELECT max(x) FROM c;",
}

COMMON_SET = {
    "V1__customers.sql": """
        CREATE TABLE customers (id integer PRIMARY KEY, email text NOT NULL, name text);
        INSERT INTO customers (id, email, name)
            VALUES (1, 'a@example.com', 'A'), (2, 'b@example.com', NULL);
    """,
    "V2__orders.sql": """
        -- orders belong to customers; the semicolon in this comment is not a statement end;
        CREATE TABLE orders (
            id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), note text
        );
        CREATE INDEX orders_customer ON orders (customer_id);
        INSERT INTO orders VALUES (10, 1, 'first; order');
    """,
    "V3__backfill.sql": """
        ALTER TABLE customers ADD COLUMN active integer DEFAULT 1;
        UPDATE customers SET name = 'unknown' WHERE name IS NULL;
        CREATE VIEW active_customers AS SELECT id, email FROM customers WHERE active = 1;
    """,
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def executor(url: str, migrations: Path, **target: Any) -> MigrationExecutor:
    config = Config.model_validate(
        {"databases": {"orders": {"url": url, "migrations": str(migrations), **target}}}
    )
    return MigrationExecutor(config)


def apply(ex: MigrationExecutor, **params: Any) -> Outcome:
    plan = ex.plan(Operation("migrate", "database/orders", params))
    return ex.run_with_context(plan, AGENT)


def repair(ex: MigrationExecutor) -> Outcome:
    plan = ex.plan(Operation("migrate", "database/orders", {"mode": "repair", "reason": "checked"}))
    return ex.run_with_context(plan, AGENT)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql)).all()]
    finally:
        engine.dispose()


def tables(url: str, dialect: str) -> set[str]:
    if dialect == "sqlite":
        if not Path(url.removeprefix("sqlite:///")).exists():
            return set()
        rows = query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


def history(url: str) -> list[dict[str, Any]]:
    rows = query(
        url,
        "SELECT version, name, checksum, chain, state, success, applied_at, duration_ms, agent, "
        "transactional FROM opsgate_schema_history ORDER BY id",
    )
    keys = ["version", "name", "checksum", "chain", "state", "success", "applied_at"]
    keys += ["duration_ms", "agent", "transactional"]
    return [dict(zip(keys, r, strict=True)) for r in rows]


def write(migrations: Path, files: dict[str, str]) -> None:
    for name, sql in files.items():
        (migrations / name).write_text(sql)


# -- the same set on both ----------------------------------------------------------------


def test_the_same_migration_set_applies_on_both_dialects(
    url: str, dialect: str, migrations: Path
) -> None:
    write(migrations, COMMON_SET)
    ex = executor(url, migrations)
    assert ex.status("orders").pending == tuple(COMMON_SET)
    outcome = apply(ex)
    assert outcome.status == "succeeded", outcome.summary
    assert {"customers", "orders", "opsgate_schema_history"} <= tables(url, dialect)
    assert query(url, "SELECT name FROM customers ORDER BY id") == [("A",), ("unknown",)]
    assert query(url, "SELECT note FROM orders") == [("first; order",)]
    rows = history(url)
    assert [(r["version"], r["name"], r["state"]) for r in rows] == [
        (1, "V1__customers.sql", "applied"),
        (2, "V2__orders.sql", "applied"),
        (3, "V3__backfill.sql", "applied"),
    ]
    plan = ex.preview("orders")
    assert plan.pending == () and plan.head == 3
    for row, file in zip(rows, plan.files, strict=True):
        assert row["checksum"] == file.checksum and row["chain"] == file.chain
        assert bool(row["success"]) and row["applied_at"] and row["duration_ms"] is not None
        assert row["agent"] == "database-agent (did:key:z6MkTest)"
    assert ex.status("orders").state == "up_to_date"
    assert apply(ex).summary == "orders: nothing to apply"


# -- failures, repair, drift -------------------------------------------------------------


def test_a_failing_migration_rolls_back_is_recorded_and_stops_the_run(
    url: str, dialect: str, migrations: Path
) -> None:
    write(
        migrations,
        {
            "V1__ok.sql": "CREATE TABLE one (id integer);",
            "V2__bad.sql": "CREATE TABLE two (id integer);\nINSERT INTO nowhere VALUES (1);",
            "V3__later.sql": "CREATE TABLE three (id integer);",
        },
    )
    ex = executor(url, migrations)
    outcome = apply(ex)
    assert outcome.status == "failed" and outcome.failure_kind == "migration"
    assert outcome.detail["failed"] == "V2__bad.sql" and outcome.detail["statement"] == 2
    assert outcome.detail["applied"] == ["V1__ok.sql"]
    found = tables(url, dialect)
    assert "one" in found and "two" not in found and "three" not in found
    assert [(r["name"], r["state"]) for r in history(url)] == [
        ("V1__ok.sql", "applied"),
        ("V2__bad.sql", "failed"),
    ]
    status = ex.status("orders")
    assert status.state == "failed" and status.unresolved[0][0].name == "V2__bad.sql"
    with pytest.raises(MigrationError) as exc:
        apply(ex)
    assert exc.value.code == "migration_needs_repair"
    # Fix the file (never applied, so editing it is not drift), repair, apply again.
    (migrations / "V2__bad.sql").write_text("CREATE TABLE two (id integer);")
    assert repair(ex).status == "succeeded"
    assert history(url)[1]["state"] == "repaired"
    assert apply(ex).status == "succeeded"
    assert {"one", "two", "three"} <= tables(url, dialect)


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ("edit", "migration_edited", "V1__a.sql"),
        ("delete", "migration_missing", "V2__b.sql"),
        ("rename", "migration_renamed", "V2__renamed.sql"),
        ("swap", "migration_renamed", "V1__b.sql"),
    ],
)
def test_drift_in_applied_files_is_a_typed_error_naming_the_file(
    url: str, migrations: Path, change: str, code: str, named: str
) -> None:
    write(
        migrations,
        {"V1__a.sql": "CREATE TABLE a (id int);", "V2__b.sql": "CREATE TABLE b (id int);"},
    )
    ex = executor(url, migrations)
    assert apply(ex).status == "succeeded"
    if change == "edit":
        (migrations / "V1__a.sql").write_text("CREATE TABLE a (id int, x int);")
    elif change == "delete":
        (migrations / "V2__b.sql").unlink()
    elif change == "rename":
        (migrations / "V2__b.sql").rename(migrations / "V2__renamed.sql")
    elif change == "swap":
        (migrations / "V1__a.sql").rename(migrations / "tmp")
        (migrations / "V2__b.sql").rename(migrations / "V1__b.sql")
        (migrations / "tmp").rename(migrations / "V2__a.sql")
    with pytest.raises(MigrationError) as exc:
        ex.plan(Operation("migrate", "database/orders", {}))
    assert exc.value.code == code
    assert named in exc.value.message
    assert ex.status("orders").state == "drift"


def test_a_file_inserted_below_the_head_is_refused(url: str, migrations: Path) -> None:
    write(
        migrations,
        {"V1__a.sql": "CREATE TABLE a (id int);", "V3__c.sql": "CREATE TABLE c (id int);"},
    )
    ex = executor(url, migrations)
    assert apply(ex).status == "succeeded"
    (migrations / "V2__late.sql").write_text("CREATE TABLE late (id int);")
    with pytest.raises(MigrationError) as exc:
        ex.preview("orders")
    assert exc.value.code == "migration_inserted" and "V2__late.sql" in exc.value.message


def test_bad_directories_are_refused_by_name(url: str, migrations: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.sql"
    secret.write_text("DROP TABLE users;")
    cases = {
        "V1_init.sql": "migration_invalid",  # one underscore: a near miss, not skipped
    }
    for name, code in cases.items():
        (migrations / name).write_text("SELECT 1;")
        with pytest.raises(MigrationError) as exc:
            executor(url, migrations).preview("orders")
        assert exc.value.code == code and name in exc.value.message
        (migrations / name).unlink()
    (migrations / "V1__link.sql").symlink_to(secret)
    with pytest.raises(MigrationError) as exc:
        executor(url, migrations).preview("orders")
    assert exc.value.code == "migration_invalid" and "symlink" in exc.value.message
    (migrations / "V1__link.sql").unlink()
    (migrations / "V1__a.sql").write_text("SELECT 1;")
    (migrations / "V01__b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError) as exc:
        executor(url, migrations).preview("orders")
    assert exc.value.code == "migration_invalid" and "share version 1" in exc.value.message


def test_a_target_version_bounds_the_run(url: str, migrations: Path) -> None:
    write(migrations, COMMON_SET)
    ex = executor(url, migrations)
    outcome = apply(ex, target=2)
    assert outcome.detail["applied"] == ["V1__customers.sql", "V2__orders.sql"]
    with pytest.raises(MigrationError) as exc:
        ex.plan(Operation("migrate", "database/orders", {"target": 1}))
    assert exc.value.code == "migration_target_invalid"
    with pytest.raises(MigrationError) as exc:
        ex.plan(Operation("migrate", "database/orders", {"target": 7}))
    assert exc.value.code == "migration_target_invalid"


def test_transaction_control_in_a_file_is_refused_before_anything_runs(
    url: str, dialect: str, migrations: Path
) -> None:
    write(migrations, {"V1__tx.sql": "BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;"})
    with pytest.raises(MigrationError) as exc:
        executor(url, migrations).plan(Operation("migrate", "database/orders", {}))
    assert exc.value.code == "migration_refused" and "OG301" in exc.value.message
    assert "t" not in tables(url, dialect)


# -- locks and timeouts ------------------------------------------------------------------


def test_a_held_lock_is_migration_locked_naming_the_holder(url: str, migrations: Path) -> None:
    write(migrations, {"V1__a.sql": "CREATE TABLE a (id int);"})
    ex = executor(url, migrations, lock_wait_seconds=0.3)
    plan = ex.plan(Operation("migrate", "database/orders", {}))
    other = MigrationTarget.connect(
        url, label="orders", settings=TargetSettings(application_name="opsgate-migrate other-agent")
    )
    try:
        assert other.try_lock("opsgate-migrate other-agent", time.time())
        started = time.monotonic()
        with pytest.raises(MigrationError) as exc:
            ex.run_with_context(plan, AGENT)
        assert exc.value.code == "migration_locked"
        assert "other-agent" in exc.value.message
        assert time.monotonic() - started < 5
        assert "other-agent" in (ex.status("orders").lock_holder or "")
    finally:
        other.unlock()
        other.close()
    assert ex.run_with_context(plan, AGENT).status == "succeeded"


@pytest.mark.postgres
def test_postgres_statement_timeout_fails_the_migration(pg_url: str, migrations: Path) -> None:
    write(migrations, {"V1__slow.sql": "SELECT pg_sleep(10);"})
    ex = executor(pg_url, migrations, statement_timeout_seconds=0.5)
    started = time.monotonic()
    outcome = apply(ex)
    assert outcome.status == "failed" and "57014" in outcome.summary
    assert time.monotonic() - started < 8


def pg_setup(pg_url: str, *statements: str) -> None:
    """Run setup statements on the test's own database, committed."""
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("option", "sql"),
    [
        # Non-standard strings: the backslash escapes the quote.
        (
            "options=-c%20standard_conforming_strings%3Doff",
            "SELECT '\\', '; DROP TABLE keep; --';\n",
        ),
        # SJIS: the last byte of U+0101 in UTF-8 and the backslash are one character.
        ("client_encoding=sjis", "SELECT E'\u0101\\' ; DROP TABLE keep; --';\n"),
    ],
    ids=["standard_conforming_strings", "client_encoding"],
)
def test_postgres_statements_run_as_they_were_classified_whatever_the_session_settings(
    pg_url: str, migrations: Path, option: str, sql: str
) -> None:
    # A database, role or URL setting must not make what the classifier saw as one
    # SELECT of strings run as a SELECT and a DROP TABLE: the session pins both.
    pg_setup(pg_url, "CREATE TABLE keep (id int)")
    write(migrations, {"V1__select.sql": sql})
    ex = executor(f"{pg_url}?{option}", migrations)
    plan = ex.plan(Operation("migrate", "database/orders", {}))
    assert plan.destructive is False
    ex.run_with_context(plan, AGENT)
    assert "keep" in tables(pg_url, "postgresql")


@pytest.mark.postgres
def test_a_migrations_own_setting_cannot_smuggle_a_second_statement(
    pg_url: str, migrations: Path
) -> None:
    # Its own SET (needs review, so a DBA approved it) changes how the server reads the
    # next statement's quotes; each statement is sent so the server takes exactly one.
    pg_setup(pg_url, "CREATE TABLE keep (id int)")
    sql = "SET standard_conforming_strings = off;\nSELECT '\\', '; DROP TABLE keep; --';\n"
    write(migrations, {"V1__smuggle.sql": sql})
    ex = executor(pg_url, migrations)
    plan = ex.plan(Operation("migrate", "database/orders", {}))
    outcome = ex.run_with_context(plan, AGENT)
    assert outcome.status == "failed"
    assert "keep" in tables(pg_url, "postgresql")


@pytest.mark.postgres
def test_a_failed_statement_does_not_hand_table_data_to_the_agent(
    pg_url: str, migrations: Path
) -> None:
    # A cast of a column is a plain SELECT to the classifier; PostgreSQL's message for
    # the failed cast quotes the value, which would reach the agent and the audit.
    pg_setup(
        pg_url,
        "CREATE TABLE users (password text)",
        "INSERT INTO users VALUES ('hunter2-row-value')",
    )
    write(migrations, {"V1__peek.sql": "SELECT string_agg(password, ',')::int FROM users;\n"})
    ex = executor(pg_url, migrations)
    plan = ex.plan(Operation("migrate", "database/orders", {}))
    assert plan.destructive is False
    outcome = ex.run_with_context(plan, AGENT)
    assert outcome.status == "failed" and "22P02" in outcome.summary
    assert "hunter2" not in repr(outcome) and "hunter2" not in str(history(pg_url))


@pytest.mark.postgres
def test_postgres_lock_timeout_bounds_waiting_for_a_table_lock(
    pg_url: str, migrations: Path
) -> None:
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE busy (id int)"))
    write(migrations, {"V1__alter.sql": "ALTER TABLE busy ADD COLUMN x int;"})
    ex = executor(pg_url, migrations, lock_timeout_seconds=0.3)
    try:
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE"))
            outcome = apply(ex)
            holder.rollback()
    finally:
        engine.dispose()
    assert outcome.status == "failed" and "55P03" in outcome.summary


def test_sqlite_statement_timeout_fails_the_migration(tmp_path: Path, migrations: Path) -> None:
    write(migrations, {"V1__slow.sql": SLOW["sqlite"]})
    ex = executor(f"sqlite:///{tmp_path / 'o.db'}", migrations, statement_timeout_seconds=0.3)
    started = time.monotonic()
    outcome = apply(ex)
    assert outcome.status == "failed" and "interrupted" in outcome.summary
    assert time.monotonic() - started < 8


@pytest.mark.postgres
def test_postgres_concurrently_runs_outside_a_transaction(pg_url: str, migrations: Path) -> None:
    write(
        migrations,
        {
            "V1__t.sql": "CREATE TABLE big (id int, customer int);",
            "V2__idx.sql": "CREATE INDEX CONCURRENTLY big_customer ON big (customer);",
        },
    )
    ex = executor(pg_url, migrations)
    plan = ex.plan(Operation("migrate", "database/orders", {}))
    assert plan.content["pending"][1]["transactional"] is False
    assert "outside a transaction" in plan.steps[1]
    assert ex.run_with_context(plan, AGENT).status == "succeeded"
    assert query(pg_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'big_customer'")
    assert [r["transactional"] for r in history(pg_url)] == [True, False]


# -- SIGKILL mid-migration and two concurrent runs -----------------------------------------


def _child(url: str, migrations: Path, agent: str, wait: float = 30.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), url, str(migrations), agent, str(wait)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_migration_leaves_database_and_history_consistent(
    url: str, dialect: str, migrations: Path
) -> None:
    write(migrations, {"V1__base.sql": "CREATE TABLE base (id int);"})
    ex = executor(url, migrations, lock_wait_seconds=0.5)
    assert apply(ex).status == "succeeded"
    write(
        migrations,
        {
            "V2__slow.sql": "CREATE TABLE partial (id int);\n"
            f"INSERT INTO partial VALUES (1);\n{SLOW[dialect]}"
        },
    )
    child = _child(url, migrations, "killed-agent")
    try:
        _wait_for(lambda: any(r["state"] == "running" for r in history(url)), 30, "the running row")
        time.sleep(0.5)  # into the slow statement
        assert child.poll() is None, child.communicate()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    # PostgreSQL notices the dead client within a second and rolls its transaction back.
    _wait_for(lambda: ex.status("orders").lock_holder is None, 15, "the lock to be released")
    status = ex.status("orders")
    assert status.state == "interrupted"
    row, label = status.unresolved[0]
    assert (row.name, row.state, label) == ("V2__slow.sql", "running", "interrupted")
    assert "killed-agent" in row.agent
    assert "partial" not in tables(url, dialect)  # none of its statements survived
    assert [(r["name"], r["state"]) for r in history(url)] == [
        ("V1__base.sql", "applied"),
        ("V2__slow.sql", "running"),
    ]
    with pytest.raises(MigrationError) as exc:  # never silently retried
        apply(ex)
    assert exc.value.code == "migration_needs_repair" and "interrupted" in exc.value.message
    assert repair(ex).status == "succeeded"
    assert ex.status("orders").state == "pending"
    assert history(url)[-1]["state"] == "repaired"


def test_two_concurrent_applies_never_apply_anything_twice(
    url: str, dialect: str, migrations: Path
) -> None:
    slow = (
        "SELECT pg_sleep(1);"
        if dialect == "postgresql"
        else SLOW["sqlite"].replace("3000000000", "3000000")
    )
    write(
        migrations,
        {
            "V1__log.sql": "CREATE TABLE applied_log (version int);",
            "V2__slow.sql": f"INSERT INTO applied_log VALUES (2);\n{slow}",
            "V3__more.sql": "INSERT INTO applied_log VALUES (3);",
        },
    )
    children = [_child(url, migrations, f"racer-{i}") for i in range(2)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    succeeded = [r for r in results if r["status"] == "succeeded"]
    others = [r for r in results if r["status"] != "succeeded"]
    assert len(succeeded) >= 1, results
    applied_by_someone = [r for r in succeeded if "applied V1__log.sql" in r["summary"]]
    assert len(applied_by_someone) == 1, results
    for other in others:
        assert other["code"] in ("migration_locked", "migration_plan_stale"), results
    for other in succeeded:
        if other is not applied_by_someone[0]:
            assert other["summary"] == "orders: nothing to apply", results
    assert sorted(query(url, "SELECT version FROM applied_log")) == [(2,), (3,)]
    rows = history(url)
    assert [(r["version"], r["state"]) for r in rows] == [
        (1, "applied"),
        (2, "applied"),
        (3, "applied"),
    ]
