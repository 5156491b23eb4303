"""Waiting for a lock another run holds is not the agent's fault: a migration refused
with `migration_locked` (or a plan made stale by another run under the lock) is
audited as a refused outcome, raised, and costs no trust. (A held deploy lock is
tested the same way in test_deploy.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import audit_events

import opsgate
from opsgate.errors import MigrationContended, MigrationError, RunRefused
from opsgate.operations.base import Operation
from opsgate.operations.migrate import MigrationExecutor, runner
from opsgate.operations.migrate.files import CHAIN_START
from opsgate.store.migration_target import MigrationTarget, TargetSettings


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[opsgate.Gate, opsgate.Agent, str, Path]]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "V1__init.sql").write_text("CREATE TABLE orders (id integer);")
    target_db = tmp_path / "orders.db"
    gate = opsgate.Gate.open(
        tmp_path / "state",
        databases={
            "orders": {
                "url": f"sqlite:///{target_db}",
                "migrations": str(migrations),
                "lock_wait_seconds": 0.3,
            }
        },
    )
    gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
    agent = gate.register_agent(
        "db-agent", ["migrate:database/orders"], sponsor="ops@company.com", trust_score=900
    )
    token = gate.credential_manager.issue_credential(agent.did, ["migrate:database/orders"]).token
    yield gate, agent, token, target_db
    gate.close()


def test_a_held_migration_lock_is_refused_audited_and_charges_nothing(
    world: tuple[opsgate.Gate, opsgate.Agent, str, Path],
) -> None:
    gate, agent, token, target_db = world
    other = MigrationTarget.connect(
        f"sqlite:///{target_db}",
        label="orders",
        settings=TargetSettings(application_name="opsgate-migrate other-agent"),
    )
    before = agent.trust_score
    try:
        assert other.try_lock("other-agent", time.time())
        with pytest.raises(MigrationError) as info:
            gate.execute(token, Operation("migrate", "database/orders", {}))
        assert info.value.code == "migration_locked"
        assert isinstance(info.value, RunRefused)
        assert agent.trust_score == before
        outcome = audit_events(gate, "operation.outcome")[-1]
        assert outcome["outcome"] == "refused" and outcome["code"] == "migration_locked"
        assert outcome.get("trust") is None
        assert audit_events(gate, "trust.changed") == []
    finally:
        other.unlock()
        other.close()
    # The lock free again, the same agent's migration runs and earns its credit.
    done = gate.execute(token, Operation("migrate", "database/orders", {}))
    assert isinstance(done, opsgate.Outcome) and done.status == "succeeded"


def test_a_plan_made_stale_by_another_run_is_contention_not_a_failure() -> None:
    with pytest.raises(MigrationContended) as info:
        runner._check_unchanged("orders", (), head=3, head_chain=CHAIN_START)
    assert info.value.code == "migration_plan_stale"
    assert isinstance(info.value, RunRefused) and isinstance(info.value, MigrationError)
    locked = runner.locked_error("orders", "someone", 1.0)
    assert isinstance(locked, RunRefused) and locked.code == "migration_locked"
