"""Migrations that lose existing rows by way of something the classifier once took for
new, through `Gate.execute` with the example policy on the real databases: a relation
renamed onto a new table's name with ALTER INDEX, a table renamed in another schema or
made TEMP, a foreign key from an existing table that cascades from a new one, a WHERE
that reads no column of the row, a schema renamed from under a new table, ADD COLUMN IF
NOT EXISTS, an existing table attached as a new one's partition, a Kelvin sign SQLite
does not fold, a virtual table's shadow names. Each now waits for the DBA group, nothing runs
meanwhile, and what it does once approved shows why it had to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

import opsgate
from opsgate.approvals import PendingApproval
from opsgate.operations.base import Operation
from opsgate.operations.migrate import MigrationExecutor

EXAMPLE_POLICY = Path(__file__).parent.parent.parent / "examples" / "policies.yaml"
BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
POSTGRES = [pytest.param("postgresql", marks=pytest.mark.postgres)]

CUSTOMERS = """
CREATE TABLE customers (id integer PRIMARY KEY, email text);
INSERT INTO customers VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, 'c@example.com');
"""


@dataclass
class Target:
    dialect: str
    url: str
    gate: opsgate.Gate
    token: str
    dba_token: str
    migrations: Path

    def execute(self) -> object:
        return self.gate.execute(self.token, Operation("migrate", "database/orders", {}))

    def customers(self) -> int | None:
        """Rows in the pre-existing table, None once it is gone."""
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                if self.dialect == "sqlite":
                    table = "main.customers"
                    exists = conn.execute(
                        text("SELECT 1 FROM main.sqlite_master WHERE name = 'customers'")
                    ).first()
                else:
                    table = "public.customers"
                    exists = conn.execute(text("SELECT to_regclass('public.customers')")).scalar()
                if not exists:
                    return None
                return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        finally:
            engine.dispose()

    def columns(self) -> set[str]:
        """The columns of the pre-existing table."""
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            return {str(c["name"]) for c in inspect(engine).get_columns("customers")}
        finally:
            engine.dispose()

    def tables(self) -> set[str]:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    def held_for_the_dba(self, sql: str, codes: set[str]) -> PendingApproval:
        """Apply the pre-existing table, then `sql`: it must wait for the DBA group."""
        (self.migrations / "V1__customers.sql").write_text(CUSTOMERS)
        outcome = self.execute()
        assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded", outcome
        (self.migrations / "V2__change.sql").write_text(sql)
        pending = self.execute()
        assert isinstance(pending, PendingApproval), pending
        assert pending.approvers == ("dana@company.com",)
        plan = pending.request.plan
        assert plan["destructive"] is True
        assert codes <= set(plan["content"]["findings"]), plan["content"]["findings"]
        assert self.customers() == 3  # nothing ran meanwhile
        return pending

    def approve(self, pending: PendingApproval) -> None:
        self.gate.approvals.approve(
            pending.approval_id, approver="dana@company.com", token=self.dba_token
        )
        outcome = self.gate.resume(pending.approval_id, self.token)
        assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded", outcome


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    dialect = str(request.param)
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'orders.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=EXAMPLE_POLICY,
        databases={"orders": {"url": url, "migrations": str(migrations)}},
    )
    gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
    supervisor = gate.register_agent(
        "devops-supervisor",
        capabilities=["migrate:database"],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    agent = supervisor.delegate(name="database-agent", capabilities=["migrate:database/orders"])
    token = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=["migrate:database/orders"], ttl_minutes=15
    ).token
    dba = gate.approvals.add_approver("dana@company.com")
    yield Target(dialect, url, gate, token, dba, migrations)
    gate.close()


@pytest.mark.parametrize("target", POSTGRES, indirect=True)
def test_alter_index_renaming_an_existing_table_onto_a_new_name_needs_the_dba(
    target: Target,
) -> None:
    pending = target.held_for_the_dba(
        "CREATE TABLE scratch (id int);\n"
        "ALTER INDEX scratch RENAME TO scratch_old;\n"
        "ALTER INDEX customers RENAME TO scratch;\n"
        "DROP TABLE scratch;\n",
        {"DS102"},
    )
    target.approve(pending)
    assert target.customers() is None  # ALTER INDEX did rename the table


@pytest.mark.parametrize("target", BOTH, indirect=True)
def test_a_new_table_renamed_in_another_schema_or_temp_does_not_cover_the_bare_name(
    target: Target,
) -> None:
    if target.dialect == "sqlite":
        sql = (
            "CREATE TEMP TABLE customers (id integer);\n"
            "ALTER TABLE temp.customers RENAME TO scratch_old;\n"
            "DROP TABLE customers;\n"
        )
    else:
        sql = (
            "CREATE SCHEMA staging_area;\n"
            "CREATE TABLE staging_area.tmp (id int);\n"
            "ALTER TABLE staging_area.tmp RENAME TO customers;\n"
            "DROP TABLE customers;\n"
        )
    pending = target.held_for_the_dba(sql, {"DS102"})
    target.approve(pending)
    assert target.customers() is None  # the bare name reached the pre-existing table


@pytest.mark.parametrize("target", BOTH, indirect=True)
def test_a_foreign_key_cascading_from_a_new_table_into_an_existing_one_needs_the_dba(
    target: Target,
) -> None:
    if target.dialect == "sqlite":
        sql = (
            "CREATE TABLE plans (id integer PRIMARY KEY);\n"
            "ALTER TABLE customers ADD COLUMN plan_id integer REFERENCES plans (id)"
            " ON DELETE CASCADE;\n"
            "DELETE FROM plans;\n"
        )
    else:
        sql = (
            "CREATE TABLE active_ids (id int PRIMARY KEY);\n"
            "INSERT INTO active_ids SELECT id FROM customers;\n"
            "ALTER TABLE customers ADD CONSTRAINT customers_active_fk FOREIGN KEY (id)\n"
            "    REFERENCES active_ids (id) ON DELETE CASCADE NOT VALID;\n"
            "DELETE FROM active_ids;\n"
        )
    pending = target.held_for_the_dba(sql, {"OG101"})
    if target.dialect == "postgresql":  # the runner leaves SQLite's foreign keys off
        target.approve(pending)
        assert target.customers() == 0  # the DELETE of the new table emptied it


@pytest.mark.parametrize("target", BOTH, indirect=True)
def test_a_where_that_reads_no_column_of_the_row_needs_the_dba(target: Target) -> None:
    if target.dialect == "sqlite":  # a double-quoted name that is no column is a string
        sql = 'DELETE FROM customers WHERE "nope" = "nope";\n'
    else:  # k is the USING subquery's column
        sql = "DELETE FROM customers USING (SELECT 1 AS k) s WHERE k = 1;\n"
    pending = target.held_for_the_dba(sql, {"OG101"})
    target.approve(pending)
    assert target.customers() == 0


@pytest.mark.parametrize("target", POSTGRES, indirect=True)
def test_a_renamed_user_schema_does_not_leave_the_bare_name_counting_as_new(
    target: Target,
) -> None:
    role = make_url(target.url).username or "postgres"
    pending = target.held_for_the_dba(
        "CREATE SCHEMA AUTHORIZATION CURRENT_USER;\n"  # the $user schema, first on the path
        "CREATE TABLE customers (id int);\n"
        f'ALTER SCHEMA "{role}" RENAME TO scratch;\n'
        "DROP TABLE customers;\n",
        {"DS102"},
    )
    target.approve(pending)
    assert target.customers() is None  # the bare name reached the pre-existing table


@pytest.mark.parametrize("target", POSTGRES, indirect=True)
def test_add_column_if_not_exists_does_not_make_an_existing_column_new(target: Target) -> None:
    pending = target.held_for_the_dba(
        "ALTER TABLE customers ADD COLUMN IF NOT EXISTS email text;\n"
        "ALTER TABLE customers DROP COLUMN email;\n",
        {"DS103"},
    )
    target.approve(pending)
    assert "email" not in target.columns()


@pytest.mark.parametrize("target", POSTGRES, indirect=True)
def test_an_attached_existing_partition_makes_the_new_parents_columns_existing(
    target: Target,
) -> None:
    pending = target.held_for_the_dba(
        "CREATE TABLE customers_all (id int, tmp text) PARTITION BY RANGE (id);\n"
        "ALTER TABLE customers_all RENAME COLUMN tmp TO email;\n"
        "ALTER TABLE customers_all ATTACH PARTITION customers\n"
        "    FOR VALUES FROM (MINVALUE) TO (MAXVALUE);\n"
        "ALTER TABLE customers_all DROP COLUMN email;\n",
        {"DS103"},
    )
    target.approve(pending)
    assert "email" not in target.columns()  # dropped from the existing partition too


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_a_kelvin_sign_is_not_a_k_to_sqlite(target: Target) -> None:
    pending = target.held_for_the_dba(
        "ALTER TABLE customers RENAME TO bookings;\n"
        'CREATE TABLE "boo\u212aings" (id integer);\n'
        "DROP TABLE bookings;\n",
        {"DS102"},
    )
    target.approve(pending)
    assert "bookings" not in target.tables()  # the existing one, not the Kelvin one
    assert "boo\u212aings" in target.tables()


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_a_virtual_tables_drop_reaches_an_existing_table_on_a_shadow_name(
    target: Target,
) -> None:
    pending = target.held_for_the_dba(
        "CREATE VIRTUAL TABLE search USING fts5(body);\n"
        "ALTER TABLE search_content RENAME TO search_content_old;\n"
        "ALTER TABLE customers RENAME TO search_content;\n"
        "DROP TABLE search;\n",
        {"OG202", "DS102"},
    )
    target.approve(pending)
    assert "search_content" not in target.tables()  # FTS5 dropped it by name
