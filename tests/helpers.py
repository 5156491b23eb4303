"""Shared test executors and small helpers for the approval, trust and execute tests.

`RecordingExecutor` is a real executor (plan pure, run records what it ran), so a
test can assert that a refused operation never reached `run()`. `World` opens a
gate with a policy file and the usual cast: a supervisor, a deploy agent delegated
from it, a credential for the deploy agent and registered approvers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

import opsgate
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan
from opsgate.store import schema

DATA = Path(__file__).parent / "data"
APPROVAL_POLICIES = DATA / "approvals"

SUPERVISOR_SPONSOR = "platform-lead@company.com"
AGENT_SPONSOR = "app-owner@company.com"
DEPLOY_SCOPE = ["deploy:staging", "deploy:production"]
RELEASE = {"version": "2.4.1", "artifact_digest": "sha256:" + "ab" * 32}


def policy(name: str) -> Path:
    """A policy file from tests/data/approvals."""
    path = APPROVAL_POLICIES / name
    assert path.exists(), path
    return path


def deploy(resource: str = "production/app-web", **params: Any) -> Operation:
    """A deploy operation of RELEASE (overridable per test)."""
    return Operation("deploy", resource, {**RELEASE, **params})


class ReleaseParams(OperationParams):
    """The params RecordingExecutor accepts (strict: `replicas="3"` is refused)."""

    version: str
    artifact_digest: str
    replicas: int | None = None
    drop_tables: bool = False
    noise: str | None = None  # free text an agent may vary at will (a deploy note)


class RecordingExecutor:
    """Executor for action `deploy`: a pure plan, and a run() that records each plan it ran.

    The environment is the first resource segment (none for a namespace such as
    `database/...`); the plan content is the version
    and artifact digest from the params. `fail_kind` makes run() report a failed
    operation of that kind ("deployment" feeds the trust engine); `raises` makes it
    raise; `returns` makes it return that value as is.
    """

    def __init__(
        self,
        *,
        fail_kind: str | None = None,
        raises: BaseException | None = None,
        returns: Any = None,
    ) -> None:
        self.fail_kind = fail_kind
        self.raises = raises
        self.returns = returns
        self.runs: list[Plan] = []
        self.plans: list[Operation] = []  # every operation plan() was asked for
        self._lock = threading.Lock()

    params_model = ReleaseParams

    def plan(self, operation: Operation) -> Plan:
        with self._lock:
            self.plans.append(operation)
        first = operation.resource.split("/")[0]
        # Like the real executors: a namespace (database/orders) names no environment.
        environment = None if first in ("secrets", "database", "monitoring") else first
        version = operation.params.get("version")
        digest = operation.params.get("artifact_digest")
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=environment,
            summary=f"deploy {operation.resource} {version}",
            steps=(f"unpack {digest}", "switch current", "health check"),
            content={"version": version, "artifact_digest": digest},
        )

    def run(self, plan: Plan) -> Outcome:
        with self._lock:
            self.runs.append(plan)
        if self.raises is not None:
            raise self.raises
        if self.returns is not None:
            return self.returns  # type: ignore[no-any-return]
        if self.fail_kind is not None:
            return Outcome("failed", f"{plan.summary} failed", failure_kind=self.fail_kind)
        return Outcome("succeeded", plan.summary)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.runs)


@dataclass
class World:
    """A gate with policies, an executor, a supervisor, its deploy agent and approvers."""

    gate: opsgate.Gate
    executor: RecordingExecutor
    supervisor: opsgate.Agent
    agent: opsgate.Agent
    credential_: opsgate.Credential
    approver_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.credential_.token

    def approve(self, approval_id: str, who: str, **kw: Any) -> Any:
        return self.gate.approvals.approve(
            approval_id, approver=who, token=self.approver_tokens[who], **kw
        )

    def deny(self, approval_id: str, who: str, **kw: Any) -> Any:
        return self.gate.approvals.deny(
            approval_id, approver=who, token=self.approver_tokens[who], **kw
        )

    def credential(
        self,
        agent: opsgate.Agent | None = None,
        scope: list[str] | None = None,
        now: float | None = None,
    ) -> str:
        agent = agent or self.agent
        return self.gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=scope or DEPLOY_SCOPE, ttl_minutes=15, now=now
        ).token

    def status(self, approval_id: str) -> str:
        return self.gate.approvals.get(approval_id).status


def open_world(
    state_dir: Path,
    policies: str | Path | None = "policies.yaml",
    *,
    approvers: tuple[str, ...] = ("john@company.com", "jane@company.com"),
    supervisor_trust: int = 920,
    agent_sponsor: str | None = AGENT_SPONSOR,
    executor: RecordingExecutor | None = None,
    **config: Any,
) -> World:
    """Open a gate on `state_dir` with a policy file from tests/data/approvals."""
    path = policy(policies) if isinstance(policies, str) else policies
    gate = opsgate.Gate.open(state_dir, policies=path, **config)
    executor = executor or RecordingExecutor()
    gate.register_executor("deploy", executor)
    supervisor = gate.register_agent(
        "devops-supervisor",
        capabilities=DEPLOY_SCOPE,
        sponsor=SUPERVISOR_SPONSOR,
        trust_score=supervisor_trust,
    )
    agent = supervisor.delegate(
        name="deploy-agent", capabilities=DEPLOY_SCOPE, sponsor=agent_sponsor
    )
    credential = gate.credential_manager.issue_credential(
        agent_id=agent.did, scope=DEPLOY_SCOPE, ttl_minutes=15
    )
    world = World(gate, executor, supervisor, agent, credential)
    for email in approvers:
        world.approver_tokens[email] = gate.approvals.add_approver(email)
    return world


def audit_types(gate: opsgate.Gate, limit: int = 10_000) -> list[str]:
    return [r.type for r in gate.audit.tail(limit)]


def audit_events(gate: opsgate.Gate, event_type: str) -> list[dict[str, Any]]:
    return [r.event for r in gate.audit.tail(10_000, event_type=event_type)]


def database_text(gate: opsgate.Gate) -> str:
    """Every value of every row of every table of the state database, as one string."""
    parts: list[str] = []
    with gate.store.read() as conn:
        for table in schema.metadata.sorted_tables:
            for row in conn.execute(select(table)).all():
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


def stored_trust(gate: opsgate.Gate, did: str) -> int:
    """The trust_score column itself, bypassing every cache."""
    with gate.store.read() as conn:
        return int(
            conn.execute(
                select(schema.agents.c.trust_score).where(schema.agents.c.did == did)
            ).scalar_one()
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stall:
    """Pause one thread right after it runs a matching SQL statement, once.

    Forces the interleaving a race needs (a reader that acts on what it read after
    another transaction committed) instead of hoping the scheduler produces it.
    Hooks the gate's own engines through SQLAlchemy events; nothing is replaced.
    """

    def __init__(
        self, gate: opsgate.Gate, fragment: str, thread_name: str, seconds: float = 0.5
    ) -> None:
        self.gate = gate
        self.fragment = fragment
        self.thread_name = thread_name
        self.seconds = seconds
        self.stalled = threading.Event()
        self._done = False
        self._engines = {id(e): e for e in (gate.store._write_engine, gate.store._read_engine)}

    def _hook(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            not self._done
            and threading.current_thread().name == self.thread_name
            and self.fragment in statement
        ):
            self._done = True
            self.stalled.set()
            time.sleep(self.seconds)

    def __enter__(self) -> Stall:
        for engine in self._engines.values():
            event.listen(engine, "after_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        for engine in self._engines.values():
            event.remove(engine, "after_cursor_execute", self._hook)


def run_in_thread(name: str, fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Start `fn` in a thread called `name`; the list receives its result or exception."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=target, name=name)
    t.start()
    return t, out


@contextmanager
def failing_audit_writes(audit: Any, count: int = 1) -> Iterator[None]:
    """The next `count` audit writes fail as lost storage would: a group-commit batch
    raises OSError before its transaction (every caller refused, nothing written), an
    append inside a caller's transaction raises AuditError. Patches this one log's
    writer for the block; production code has no hook for it."""
    left = [count]
    writer = audit._writer
    real_try, real_append_in = writer._try, audit.append_in

    def take() -> bool:
        if left[0] > 0:
            left[0] -= 1
            return True
        return False

    def failing_try(*args: Any, **kwargs: Any) -> Any:
        if take():
            raise OSError("simulated audit storage failure")
        return real_try(*args, **kwargs)

    def failing_append_in(*args: Any, **kwargs: Any) -> Any:
        if take():
            raise opsgate.AuditError("audit write failed: OSError", code="audit_write_failed")
        return real_append_in(*args, **kwargs)

    writer._try, audit.append_in = failing_try, failing_append_in
    try:
        yield
        assert left[0] == 0, "the block did not write to the audit log"
    finally:
        del writer._try, audit.append_in  # the class's methods again


def sync_level(store: Any, cur: Any, writer: Any) -> str:
    """The disk-sync level a transaction on this raw cursor of `writer` (a
    DedicatedWriter) commits with: SQLite's synchronous (off/normal/full/extra; "normal,
    log synced" when the writer syncs the write-ahead log after the commit),
    PostgreSQL's synchronous_commit."""
    if store.is_sqlite:
        cur.execute("PRAGMA synchronous")
        level = {0: "off", 1: "normal", 2: "full", 3: "extra"}[int(cur.fetchone()[0])]
        return "normal, log synced" if level == "normal" and writer.syncs_log else level
    cur.execute("SHOW synchronous_commit")
    return str(cur.fetchone()[0])


def durable_level(store: Any) -> str:
    """What `sync_level` says of a durable commit on this store (SQLite in WAL mode)."""
    return "normal, log synced" if store.is_sqlite else "on"
