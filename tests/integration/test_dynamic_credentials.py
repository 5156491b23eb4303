"""Dynamic database credentials from OpenBao's database secrets engine, on real
PostgreSQL: a migration run gets its own user with an explicit TTL no longer than the
asking credential has left (never Vault's 32-day default), the lease id (never the
password) is audited, and the user is gone when the run ends — after a success and
after a failing migration alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import orjson
import psycopg
import pytest
from secret_helpers import vault_root
from sqlalchemy import select
from sqlalchemy.engine import make_url

import opsgate
from opsgate import ConfigError, Operation, Outcome
from opsgate.config import DatabaseTarget
from opsgate.operations.migrate import MigrationExecutor
from opsgate.secrets.dynamic import VaultDatabaseCredentials, database_credentials
from opsgate.store import schema

pytestmark = pytest.mark.postgres


@dataclass
class Recording:
    """Wraps the real provider; keeps each URL it handed out and, while the user is
    live, what PostgreSQL says about it (its VALID UNTIL, as seconds from now)."""

    inner: Any
    urls: list[str] = field(default_factory=list)
    valid_for: list[float] = field(default_factory=list)

    @contextmanager
    def url(self, database: str, target: DatabaseTarget, **kw: Any) -> Iterator[str]:
        with self.inner.url(database, target, **kw) as url:
            self.urls.append(url)
            with psycopg.connect(_dsn(url)) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM rolvaliduntil - now()) FROM pg_roles "
                    "WHERE rolname = current_user"
                ).fetchone()
            assert row is not None and row[0] is not None
            self.valid_for.append(float(row[0]))
            yield url


def _dsn(url: str) -> str:
    u = make_url(url)
    return (
        f"host={u.host} port={u.port} dbname={u.database} user={u.username} "
        f"password={u.password} connect_timeout=5"
    )


def _admin(pg_url: str) -> str:
    return make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _drop_owner(w: DbWorld) -> None:
    with psycopg.connect(_admin(w.pg), autocommit=True) as c:
        c.execute(f'DROP OWNED BY "{w.owner}"')
        c.execute(f'DROP ROLE "{w.owner}"')


def _can_log_in(url: str) -> bool:
    try:
        with psycopg.connect(_dsn(url)) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@dataclass
class DbWorld:
    gate: opsgate.Gate
    root: hvac.Client
    recording: Recording
    migrations: Path
    token: str
    agent: opsgate.Agent
    pg: str
    owner: str

    def migrate(self, token: str | None = None) -> Outcome:
        result = self.gate.execute(token or self.token, Operation("migrate", "database/orders"))
        assert isinstance(result, Outcome)
        return result

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.gate.store.read() as conn:
            rows = conn.execute(
                select(schema.audit_events.c.body).where(schema.audit_events.c.type == kind)
            ).all()
        return [orjson.loads(r[0]) for r in rows]

    def audit_text(self) -> str:
        with self.gate.store.read() as conn:
            return "\n".join(r[0] for r in conn.execute(select(schema.audit_events.c.body)))


def _world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vault: tuple[str, str],
    pg_url: str,
    lease_ttl: int = 3600,
) -> tuple[DbWorld, str]:
    root = vault_root(vault)
    mount = f"db-{uuid.uuid4().hex[:8]}"
    root.sys.enable_secrets_engine("database", path=mount)
    pg = make_url(pg_url)
    # The usual shape: a NOLOGIN role owns the schema's objects; each leased user is a
    # member while it lives, and what it created is handed to the owner when revoked.
    owner = f"orders_owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin(pg_url), autocommit=True) as c:
        c.execute(f'CREATE ROLE "{owner}" NOLOGIN')
        c.execute(f'GRANT ALL ON SCHEMA public TO "{owner}"')
    root.write(
        f"{mount}/config/orders",
        plugin_name="postgresql-database-plugin",
        connection_url=f"postgresql://postgres@127.0.0.1:{pg.port}/{pg.database}?sslmode=disable",
        allowed_roles="migrator",
        verify_connection=True,
    )
    root.write(
        f"{mount}/roles/migrator",
        db_name="orders",
        creation_statements=[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            "VALID UNTIL '{{expiration}}';",
            f'GRANT "{owner}" TO "{{{{name}}}}";',
        ],
        revocation_statements=[
            f'REASSIGN OWNED BY "{{{{name}}}}" TO "{owner}";',
            'DROP OWNED BY "{{name}}";',
            'DROP ROLE IF EXISTS "{{name}}";',
        ],
    )  # no default_ttl: the engine's default lease (32 days) unless the gate says otherwise
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    env = f"OPSGATE_T_DB_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, vault[1])
    gate = opsgate.Gate.open(
        tmp_path / "state",
        databases={
            "orders": {
                # No user, no password: they come from the lease.
                "url": f"postgresql+psycopg://127.0.0.1:{pg.port}/{pg.database}",
                "migrations": str(migrations),
                "vault_role": "migrator",
                "lease_ttl_seconds": lease_ttl,
            }
        },
        secrets={
            "vault": {"address": vault[0], "database_mount": mount, "auth": {"token_env": env}}
        },
    )
    recording = Recording(database_credentials(gate))
    gate.register_executor(
        "migrate",
        MigrationExecutor(gate.config, state_dir=gate.state_dir, credentials=recording),
    )
    agent = gate.register_agent(
        "database-agent",
        capabilities=["migrate:database/orders"],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    token = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=["migrate:database/orders"], ttl_minutes=15
    ).token
    return DbWorld(gate, root, recording, migrations, token, agent, pg_url, owner), mount


@pytest.fixture
def db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vault: tuple[str, str], pg_url: str
) -> Iterator[DbWorld]:
    w, mount = _world(tmp_path, monkeypatch, vault, pg_url)
    yield w
    w.gate.close()
    w.root.sys.disable_secrets_engine(mount)
    _drop_owner(w)


def test_a_run_gets_its_own_short_lived_user_and_it_is_gone_afterwards(db: DbWorld) -> None:
    (db.migrations / "V1__orders.sql").write_text("CREATE TABLE orders (id int PRIMARY KEY);")
    outcome = db.migrate()
    assert outcome.status == "succeeded", outcome.summary
    # The plan read the history with a user of its own, the run applied with another.
    assert len(db.recording.urls) == 2
    assert len({make_url(u).username for u in db.recording.urls}) == 2
    issued = db.events("secrets.lease_issued")
    revoked = db.events("secrets.lease_revoked")
    assert [e["purpose"] for e in issued] == ["read", "migrate"]
    assert {e["lease_id"] for e in revoked} == {e["lease_id"] for e in issued}
    run = issued[-1]
    # Explicit: no longer than the 15-minute credential had left, nowhere near 32 days.
    assert 800 <= run["ttl"] <= 900
    assert run["username"] == make_url(db.recording.urls[-1]).username
    assert 790 <= db.recording.valid_for[-1] <= 905  # PostgreSQL's own VALID UNTIL
    assert issued[0]["ttl"] == 3600  # the plan's read: the configured TTL (no credential)
    for url in db.recording.urls:
        assert not _can_log_in(url)  # revoked, not merely expiring
        assert make_url(url).password not in db.audit_text()
    with pytest.raises(hvac.exceptions.InvalidRequest):  # Vault forgot the lease
        db.root.sys.read_lease(run["lease_id"])
    with psycopg.connect(_admin(db.pg)) as c:
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone()
    assert owner == (db.owner,)  # the revocation handed its objects over


def test_a_failing_migration_revokes_its_user_too(db: DbWorld) -> None:
    (db.migrations / "V1__ok.sql").write_text("CREATE TABLE a (id int);")
    assert db.migrate().status == "succeeded"
    (db.migrations / "V2__broken.sql").write_text("CREATE TABLE b (id int REFERENCES nowhere(id));")
    failed = db.migrate()
    assert failed.status == "failed"
    assert "V2__broken" in failed.summary
    issued = db.events("secrets.lease_issued")
    revoked = db.events("secrets.lease_revoked")
    assert len(issued) == 4 and {e["lease_id"] for e in revoked} == {e["lease_id"] for e in issued}
    for url in db.recording.urls:
        assert not _can_log_in(url)


def test_the_lease_is_cut_to_the_configured_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vault: tuple[str, str], pg_url: str
) -> None:
    w, mount = _world(tmp_path, monkeypatch, vault, pg_url, lease_ttl=60)
    try:
        (w.migrations / "V1__t.sql").write_text("CREATE TABLE t (id int);")
        assert w.migrate().status == "succeeded"
        assert [e["ttl"] for e in w.events("secrets.lease_issued")] == [60, 60]
        assert all(50 <= v <= 65 for v in w.recording.valid_for)
    finally:
        w.gate.close()
        w.root.sys.disable_secrets_engine(mount)
        _drop_owner(w)


def test_a_credential_about_to_expire_gets_no_user(db: DbWorld) -> None:
    (db.migrations / "V1__t.sql").write_text("CREATE TABLE t (id int);")
    almost = db.gate.credential_manager.issue_credential(
        agent_id=db.agent.did,
        scope=["migrate:database/orders"],
        ttl_minutes=1,
        now=time.time() - 55,
    ).token
    outcome = db.migrate(almost)
    assert outcome.status == "failed"
    assert outcome.detail.get("code") == "lease_ttl_too_short"
    assert [e["purpose"] for e in db.events("secrets.lease_issued")] == ["read"]
    with psycopg.connect(_admin(db.pg)) as c:  # nothing was applied
        assert c.execute("SELECT to_regclass('public.t')").fetchone() == (None,)


def test_a_vault_role_without_a_provider_is_refused(tmp_path: Path, vault: tuple[str, str]) -> None:
    gate = opsgate.Gate.open(
        tmp_path / "state",
        databases={
            "orders": {
                "url": "postgresql+psycopg://127.0.0.1:5432/orders",
                "migrations": str(tmp_path),
                "vault_role": "migrator",
            }
        },
        secrets={"vault": {"address": vault[0]}},
    )
    try:
        with pytest.raises(ConfigError) as err:
            MigrationExecutor(gate.config, state_dir=gate.state_dir)
        assert err.value.code == "database_credentials_missing"
    finally:
        gate.close()
    with pytest.raises(ConfigError):  # and a vault_role needs a vault at all
        opsgate.Gate.open(
            tmp_path / "s2",
            databases={"o": {"url": "postgresql://h/o", "migrations": "m", "vault_role": "r"}},
        )


def test_the_ttl_is_never_longer_than_the_credential(tmp_path: Path) -> None:
    target = DatabaseTarget.model_validate(
        {"url": "postgresql://h/o", "migrations": "m", "vault_role": "r", "lease_ttl_seconds": 900}
    )
    creds = VaultDatabaseCredentials.__new__(VaultDatabaseCredentials)
    assert creds.lease_ttl(target, None) == 900
    assert creds.lease_ttl(target, 300.9) == 300
    assert creds.lease_ttl(target, 5000) == 900
    for short in (9.99, 0, -5):
        with pytest.raises(opsgate.SecretError) as err:
            creds.lease_ttl(target, short)
        assert err.value.code == "lease_ttl_too_short"
