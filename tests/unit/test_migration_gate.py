"""Migrations through the one path (`Gate.execute` / `resume`) with the example policy:
a safe migration is allowed and applied, a destructive one waits for the DBA group and
the approval is bound to the checksums, a failed one costs the agent trust, and the
target, its directory and its URL come from config only.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import audit_events, audit_types, database_text

import opsgate
from opsgate.approvals import PendingApproval
from opsgate.operations.base import Operation
from opsgate.operations.migrate import MigrationExecutor
from opsgate.store.migration_target import MigrationTarget, TargetSettings

EXAMPLE_POLICY = Path(__file__).parent.parent.parent / "examples" / "policies.yaml"
PASSWORD = "s3cret-pw-9f2c"


@dataclass
class MigrateWorld:
    gate: opsgate.Gate
    agent: opsgate.Agent
    token: str
    migrations: Path
    target_db: Path
    dba_token: str

    def execute(self, params: dict[str, object] | None = None, db: str = "orders") -> object:
        return self.gate.execute(self.token, Operation("migrate", f"database/{db}", params or {}))

    def write(self, name: str, sql: str) -> None:
        (self.migrations / name).write_text(sql)

    def tables(self) -> set[str]:
        if not self.target_db.exists():
            return set()
        with closing(sqlite3.connect(self.target_db)) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[MigrateWorld]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    target_db = tmp_path / "orders.db"
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=EXAMPLE_POLICY,
        databases={
            "orders": {"url": f"sqlite:///{target_db}", "migrations": str(migrations)},
            "billing": {
                "url": f"sqlite:///{tmp_path / 'billing.db'}",
                "migrations": str(migrations),
            },
        },
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
    yield MigrateWorld(gate, agent, token, migrations, target_db, dba)
    gate.close()


def test_a_safe_migration_is_allowed_and_applied(world: MigrateWorld) -> None:
    world.write("V1__init.sql", "CREATE TABLE orders (id integer PRIMARY KEY, total integer);")
    outcome = world.execute()
    assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded"
    assert "orders" in world.tables()
    attempt = audit_events(world.gate, "operation.attempt")[-1]
    assert attempt["capability"] == "migrate:database/orders"
    assert attempt["decision"] == "allow"


def test_a_destructive_migration_waits_for_the_dba_group_then_resume_applies_it(
    world: MigrateWorld,
) -> None:
    world.write("V1__init.sql", "CREATE TABLE legacy (id integer); CREATE TABLE keep (id int);")
    assert world.execute().status == "succeeded"  # type: ignore[attr-defined]
    world.write("V2__drop_legacy.sql", "DROP TABLE legacy;\nCREATE INDEX keep_id ON keep (id);")
    pending = world.execute()
    assert isinstance(pending, PendingApproval)
    assert pending.approvers == ("dana@company.com",)
    assert "legacy" in world.tables()  # nothing ran meanwhile
    # What the approver approves: the SQL, the destructive statement marked, the checksums.
    plan = pending.request.plan
    migration = plan["content"]["pending"][0]
    assert migration["name"] == "V2__drop_legacy.sql" and migration["checksum"].startswith(
        "sha256:"
    )
    first, second = migration["statements"]
    assert first["sql"] == "DROP TABLE legacy;" and first["destructive"] is True
    assert [f["code"] for f in first["findings"]] == ["DS102"]
    assert second["destructive"] is False
    assert plan["content"]["findings"] == ["DS102"]
    assert any("!! [DS102] DROP TABLE legacy;" in step for step in plan["steps"])
    world.gate.approvals.approve(
        pending.approval_id, approver="dana@company.com", token=world.dba_token
    )
    outcome = world.gate.resume(pending.approval_id, world.token)
    assert isinstance(outcome, opsgate.Outcome) and outcome.status == "succeeded", outcome
    assert "legacy" not in world.tables()


def test_the_summary_counts_only_the_destructive_migrations(world: MigrateWorld) -> None:
    world.write("V1__init.sql", "CREATE TABLE legacy (id integer);")
    world.write("V2__drop.sql", "DROP TABLE legacy;")
    world.write("V3__more.sql", "CREATE TABLE keep (id integer);")
    pending = world.execute()
    assert isinstance(pending, PendingApproval)
    summary = pending.request.plan["summary"]
    assert "apply 3 migration(s) (1 destructive), V0 -> V3" in summary, summary


def test_a_file_edited_after_approval_is_a_digest_mismatch(world: MigrateWorld) -> None:
    world.write("V1__drop.sql", "DROP TABLE IF EXISTS legacy;")
    pending = world.execute()
    assert isinstance(pending, PendingApproval)
    world.gate.approvals.approve(
        pending.approval_id, approver="dana@company.com", token=world.dba_token
    )
    world.write("V1__drop.sql", "DROP TABLE IF EXISTS legacy; DROP TABLE IF EXISTS customers;")
    with pytest.raises(opsgate.ApprovalError) as exc:
        world.gate.resume(pending.approval_id, world.token)
    assert exc.value.code == "digest_mismatch"
    assert "operation.attempt" not in audit_types(world.gate)


def test_a_failed_migration_is_recorded_and_costs_trust(world: MigrateWorld) -> None:
    world.write("V1__bad.sql", "CREATE TABLE t (id int);\nINSERT INTO missing VALUES (1);")
    before = world.agent.trust_score
    outcome = world.execute()
    assert isinstance(outcome, opsgate.Outcome)
    assert outcome.status == "failed" and outcome.failure_kind == "migration"
    assert "V1__bad.sql" in outcome.summary and "statement 2" in outcome.summary
    assert world.agent.trust_score == before - 40
    assert "t" not in world.tables()  # its own transaction rolled back
    # Never silently retried: the next apply refuses until a repair.
    with pytest.raises(opsgate.OperationError) as exc:
        world.execute()
    assert exc.value.code == "migration_needs_repair"


def test_repair_goes_through_the_gate_needs_the_dba_and_is_audited(world: MigrateWorld) -> None:
    world.write("V1__bad.sql", "INSERT INTO missing VALUES (1);")
    assert world.execute().status == "failed"  # type: ignore[attr-defined]
    pending = world.execute({"mode": "repair", "reason": "table created by hand"})
    assert isinstance(pending, PendingApproval)  # clearing a failure is a human's call
    world.gate.approvals.approve(
        pending.approval_id, approver="dana@company.com", token=world.dba_token
    )
    outcome = world.gate.resume(pending.approval_id, world.token)
    assert outcome.status == "succeeded"  # type: ignore[union-attr]
    outcomes = audit_events(world.gate, "operation.outcome")
    assert "cleared 1 failed" in outcomes[-1]["summary"]
    executor = MigrationExecutor(world.gate.config, state_dir=world.gate.state_dir)
    status = executor.status("orders")
    assert status.unresolved == () and status.pending == ("V1__bad.sql",)


def test_params_are_typed_and_a_path_cannot_be_smuggled_in(world: MigrateWorld) -> None:
    world.write("V1__init.sql", "CREATE TABLE t (id int);")
    for params in (
        {"migrations": "/etc"},
        {"target": "1"},
        {"target": True},
        {"target": 0},
        {"mode": "drop"},
        {"url": "sqlite:////tmp/x.db"},
    ):
        with pytest.raises(opsgate.OperationError) as exc:
            world.execute(params)
        assert exc.value.code == "params_invalid", params
    assert "t" not in world.tables()


def test_an_agent_with_orders_cannot_touch_billing_or_an_unconfigured_database(
    world: MigrateWorld,
) -> None:
    world.write("V1__init.sql", "CREATE TABLE t (id int);")
    with pytest.raises(opsgate.OperationError) as exc:
        world.execute(db="billing")
    assert exc.value.code == "operation_denied"
    assert exc.value.detail["decision"].violation == "out_of_scope"
    with pytest.raises(opsgate.OpsgateError) as exc:
        world.gate.execute(world.token, Operation("migrate", "database/orders/../billing", {}))
    assert exc.value.code == "capability_malformed"
    # Covered by the scope, but not a target: the executor takes exactly database/<name>.
    with pytest.raises(opsgate.OperationError) as exc:
        world.gate.execute(world.token, Operation("migrate", "database/orders/billing", {}))
    assert exc.value.code == "operation_invalid"
    with pytest.raises(opsgate.OperationError) as exc:
        world.execute(db="nowhere")
    assert exc.value.code in ("database_unknown", "operation_denied")
    assert not (world.target_db.parent / "billing.db").exists()


def test_the_database_url_never_appears_in_plans_audit_errors_or_reprs(tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "V1__x.sql").write_text("CREATE TABLE t (id int);")
    url = f"postgresql://migrator:{PASSWORD}@127.0.0.1:1/orders"  # nothing listens on port 1
    gate = opsgate.Gate.open(
        tmp_path / "state", databases={"orders": {"url": url, "migrations": str(migrations)}}
    )
    try:
        executor = MigrationExecutor(gate.config, state_dir=gate.state_dir)
        gate.register_executor("migrate", executor)
        sup = gate.register_agent(
            "sup", capabilities=["migrate:database"], sponsor="p@company.com", trust_score=920
        )
        token = gate.credential_manager.issue_credential(
            agent_id=sup.did, scope=["migrate:database/orders"], ttl_minutes=15
        ).token
        with pytest.raises(opsgate.OpsgateError) as exc:
            gate.execute(token, Operation("migrate", "database/orders", {}))
        assert exc.value.code == "database_unavailable"
        seen = [str(exc.value), repr(exc.value), repr(gate.config), repr(executor)]
        seen.append(str(gate.config.model_dump()))
        seen.append(database_text(gate))
        for text in seen:
            assert PASSWORD not in text
    finally:
        gate.close()


def test_the_gates_own_database_cannot_be_a_target(tmp_path: Path) -> None:
    state = tmp_path / "state"
    own = {"self": {"url": f"sqlite:///{state / 'opsgate.db'}", "migrations": str(tmp_path)}}
    # Gate.open registers the executor of the configured targets: it refuses to open.
    with pytest.raises(opsgate.ConfigError) as exc:
        opsgate.Gate.open(state, databases=own)
    assert exc.value.code == "database_target_invalid"
    gate = opsgate.Gate.open(state)
    try:
        config = gate.config.model_validate({**gate.config.model_dump(), "databases": own})
        with pytest.raises(opsgate.ConfigError) as exc:
            MigrationExecutor(config, state_dir=gate.state_dir)
        assert exc.value.code == "database_target_invalid"
    finally:
        gate.close()


def test_attach_is_refused_at_run_time_even_when_approved(world: MigrateWorld) -> None:
    """The classifier refuses ATTACH; if it ever missed one, the connection still would."""
    settings = TargetSettings()
    with MigrationTarget.connect(
        f"sqlite:///{world.target_db}", label="orders", settings=settings
    ) as target:
        for sql in (
            f"ATTACH DATABASE '{world.gate.state_dir / 'opsgate.db'}' AS gate",
            f"VACUUM INTO '{world.target_db.parent / 'copy.db'}'",
        ):
            with pytest.raises(Exception, match=r"not authorized|authorization denied"):
                target._statement(sql)
    assert not (world.target_db.parent / "copy.db").exists()


FINDINGS_POLICY = """
policies:
  - name: no-schema-drops
    rules:
      - condition: "action == 'migrate' and 'DS102' in findings"
        action: deny
  - name: review-deletes
    rules:
      - condition: "action == 'migrate' and 'OG108' in findings"
        action: require_approval
        approvers: ["dba-team@company.com"]
groups:
  dba-team@company.com: [dana@company.com]
"""


def test_policy_sees_the_findings_of_the_plan(world: MigrateWorld, tmp_path: Path) -> None:
    path = tmp_path / "findings.yaml"
    path.write_text(FINDINGS_POLICY)
    world.gate.load_policies(path)
    world.write("V1__init.sql", "CREATE TABLE orders (id int);")
    assert world.execute().status == "succeeded"  # type: ignore[attr-defined]
    # Not destructive (the condition reads the row), but a policy can still ask for review.
    world.write("V2__prune.sql", "DELETE FROM orders WHERE id < 10;")
    pending = world.execute()
    assert isinstance(pending, PendingApproval)
    assert pending.request.plan["destructive"] is False
    assert pending.request.plan["content"]["findings"] == ["OG108"]
    (world.migrations / "V2__prune.sql").unlink()
    assert "orders" in world.tables()
    world.write("V2__drop.sql", "DROP TABLE orders;")
    with pytest.raises(opsgate.OperationError) as exc:
        world.execute()
    assert exc.value.code == "operation_denied"
    assert any(m.policy == "no-schema-drops" for m in exc.value.detail["decision"].matched)


def test_findings_must_be_a_list_of_codes() -> None:
    from opsgate.errors import PolicyError
    from opsgate.policy import PolicyRequest

    assert PolicyRequest("migrate", "database/x", findings=["DS102"]).findings == ("DS102",)
    for bad in ("DS102", [1], None):
        with pytest.raises(PolicyError):
            PolicyRequest("migrate", "database/x", findings=bad)  # type: ignore[arg-type]


def test_authorize_decides_a_migration_in_the_environment_its_target_is_in(
    tmp_path: Path,
) -> None:
    """`migrate:database/orders` names no environment: the target's comes from config.
    `authorize` (the decision API) decided it as environment-less, so a low-trust agent
    was told 'allow' for a production migration that `execute` holds for approval."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "V1__init.sql").write_text("CREATE TABLE t (id int);")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "policies:\n  - name: prod-migrations\n    rules:\n"
        "      - condition: \"action == 'migrate' and environment == 'production'\"\n"
        "        action: require_approval\n        approvers: [dana@company.com]\n"
    )
    databases = {
        name: {
            "url": f"sqlite:///{tmp_path / name}.db",
            "migrations": str(migrations),
            "environment": env,
        }
        for name, env in (("orders", "production"), ("scratch", "staging"), ("test", "production"))
    }
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=policy,
        databases=databases,
        trust={"approvers": ["dana@company.com"]},
    )
    try:
        agent = gate.register_agent(
            "db-agent", ["migrate:database"], sponsor="lead@company.com", trust_score=700
        )
        scope = ["migrate:database"]
        token = gate.credential_manager.issue_credential(agent.did, scope).token
        dry = gate.execute(token, Operation("migrate", "database/orders", {}, dry_run=True))
        assert dry.detail["decision"]["effect"] == "require_approval"
        decision = gate.authorize(token, "migrate:database/orders")
        assert decision.effect == "require_approval"
        assert {m.policy for m in decision.matched} == {"prod-migrations", "trust-threshold"}
        assert gate.authorize(token, "migrate:database/scratch").effect == "allow"
        # A database no target names is refused as execute refuses it, never judged.
        with pytest.raises(opsgate.OpsgateError) as exc:
            gate.authorize(token, "migrate:database/nowhere")
        assert exc.value.code == "database_unknown"
        # A target whose name spells another environment is refused by both, never
        # judged in the environment its name spells.
        with pytest.raises(opsgate.OperationError) as exc:
            gate.execute(token, Operation("migrate", "database/test", {}, dry_run=True))
        assert exc.value.code == "plan_failed"
        with pytest.raises(opsgate.OperationError) as exc:
            gate.authorize(token, "migrate:database/test")
        assert exc.value.code == "plan_failed"
    finally:
        gate.close()


def _own_database_world(tmp_path: Path, state_url: str | None, target_url: str) -> opsgate.Gate:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "V1__raise.sql").write_text(
        "UPDATE agents SET trust_score = 1000 WHERE name = 'database-agent';\n"
    )
    options: dict[str, object] = {
        "databases": {"orders": {"url": target_url, "migrations": str(migrations)}}
    }
    if state_url is not None:
        options["database_url"] = state_url
    return opsgate.Gate.open(tmp_path / "state", policies=EXAMPLE_POLICY, **options)


def _refused_as_own_database(gate: opsgate.Gate) -> None:
    agent = gate.register_agent(
        "database-agent", ["migrate:database/orders"], "dba@company.com", trust_score=920
    )
    token = gate.credential_manager.issue_credential(agent.did, ["migrate:database/orders"]).token
    for dry_run in (True, False):
        with pytest.raises(opsgate.OpsgateError) as exc:
            gate.execute(token, Operation("migrate", "database/orders", {}, dry_run=dry_run))
        assert exc.value.code == "database_target_invalid"
    assert gate.trust_score(agent.did) <= 920  # nothing ran: no trust of its own making


def _ipv6_loopback(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("::1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("alias", ["localhost", "::1"])
def test_the_gates_own_postgres_database_under_another_name_is_refused(
    tmp_path: Path, pg_url: str, alias: str
) -> None:
    """The URL's text differs (a host alias, the IPv6 loopback), the database is the
    same: the target is checked on the database itself."""
    from sqlalchemy.engine import make_url

    state = make_url(pg_url)
    if alias == "::1" and not _ipv6_loopback(state.port or 5432):
        alias = "localhost"  # the server listens on IPv4 only here
    target = state.set(drivername="postgresql", host=alias)
    target_url = target.render_as_string(hide_password=False)
    assert make_url(target_url).host != state.host
    gate = _own_database_world(tmp_path, pg_url, target_url)
    try:
        _refused_as_own_database(gate)
    finally:
        gate.close()


def test_the_gates_own_sqlite_file_through_a_hard_link_is_refused(tmp_path: Path) -> None:
    """A second name for the gate's database file, outside its state dir."""
    gate = opsgate.Gate.open(tmp_path / "state")
    own = gate.state_dir / "opsgate.db"
    gate.close()
    link = tmp_path / "orders.db"
    link.hardlink_to(own)
    gate = _own_database_world(tmp_path, None, f"sqlite:///{link}")
    try:
        _refused_as_own_database(gate)
    finally:
        gate.close()


def test_a_migration_file_hard_linked_to_a_gate_key_is_never_read(world: MigrateWorld) -> None:
    """A second name for a file the gate can read (an agent's private key) put in the
    migrations directory: refused before its text reaches a plan or an approval."""
    key = next((world.gate.state_dir / "agent-keys").glob("*.pem"))
    os.link(key, world.migrations / "V1__keys.sql")
    for dry_run in (True, False):
        with pytest.raises(opsgate.OpsgateError) as exc:
            world.gate.execute(
                world.token, Operation("migrate", "database/orders", {}, dry_run=dry_run)
            )
        assert exc.value.code == "migration_invalid"
        assert "hard link" in exc.value.message
    private = key.read_bytes()
    assert private.split(b"\n")[1] not in database_text(world.gate).encode()
    assert world.gate.approvals.list(status="pending") == []


def test_a_migration_editing_the_gates_history_waits_for_review_and_cannot_mark_itself(
    world: MigrateWorld,
) -> None:
    """DML on the gate's bookkeeping (its history, its lock row) is never routine: it
    waits for the DBA group; and a run whose own history row the migration changed
    fails whole (rolled back, recorded failed) instead of claiming it applied."""
    world.write("V1__init.sql", "CREATE TABLE t (id integer);")
    assert world.execute().status == "succeeded"  # type: ignore[attr-defined]
    world.write("V2__cleanup.sql", "DELETE FROM opsgate_schema_history WHERE version >= 2;")
    pending = world.execute()
    assert isinstance(pending, PendingApproval)
    statement = pending.request.plan["content"]["pending"][0]["statements"][0]
    assert "OG202" in [f["code"] for f in statement["findings"]]
    world.gate.approvals.approve(
        pending.approval_id, approver="dana@company.com", token=world.dba_token
    )
    outcome = world.gate.resume(pending.approval_id, world.token)
    assert isinstance(outcome, opsgate.Outcome) and outcome.status == "failed", outcome
    executor = MigrationExecutor(world.gate.config, state_dir=world.gate.state_dir)
    status = executor.status("orders")
    assert [(row.name, state) for row, state in status.unresolved] == [
        ("V2__cleanup.sql", "failed")
    ]
    assert status.pending == ("V2__cleanup.sql",)


def test_a_relative_sqlite_target_in_the_config_file_is_the_state_dirs_not_the_cwds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:///orders.db` in opsgate.yaml names one file whatever directory the
    command runs from (like every relative path there): the same gate never migrates
    another database from another directory."""
    state = tmp_path / "state"
    opsgate.Gate.init(state).close()
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "V1__init.sql").write_text("CREATE TABLE t (id integer);")
    (state / "opsgate.yaml").write_text(
        "databases:\n"
        "  orders:\n"
        "    url: sqlite:///../orders.db\n"
        "    migrations: ../migrations\n"
        "    environment: staging\n"
    )
    seen = []
    for cwd in (tmp_path, tmp_path / "elsewhere"):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        with opsgate.Gate.open(state) as gate:
            url = gate.config.databases["orders"].url.get_secret_value()
            seen.append(url)
            agent = gate.register_agent(
                f"db-{len(seen)}", ["migrate:database/orders"], "dba@company.com", trust_score=900
            )
            token = gate.credential_manager.issue_credential(
                agent.did, ["migrate:database/orders"]
            ).token
            outcome = gate.execute(token, Operation("migrate", "database/orders", {}))
            assert isinstance(outcome, opsgate.Outcome)
    assert seen[0] == seen[1] == f"sqlite:///{(tmp_path / 'orders.db').resolve()}"
    assert (tmp_path / "orders.db").exists()
    assert not (tmp_path / "elsewhere" / "orders.db").exists()
