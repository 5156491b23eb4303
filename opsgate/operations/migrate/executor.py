"""MigrationExecutor: `migrate:database/<db>` operations through the gate.

The resource names a configured target and nothing else: its URL, its migrations
directory and its limits all come from config, never from params. Params are
checked against a strict schema (`MigrateParams`). `plan()` reads only that
directory and the target's history (read-only) and returns a Plan whose content
carries every file's checksum, the chain, and the SQL of each pending statement
with its findings; `run()` executes exactly those statements.

Credentials for the target come from a `TargetCredentials` provider; the default
reads the configured URL. A provider that leases a short-lived database user (a
secrets backend) plugs in here and revokes the lease when the `with` block ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import make_url

from opsgate.config import Config, DatabaseTarget
from opsgate.errors import (
    ConfigError,
    MigrationError,
    OperationError,
    safe_text,
)
from opsgate.operations.base import Operation, Outcome, Plan, RunContext
from opsgate.operations.migrate import runner
from opsgate.operations.migrate.classify import Dialect
from opsgate.operations.migrate.files import load_directory
from opsgate.operations.migrate.planner import MigrationPlan, build_plan
from opsgate.store.migration_target import HistoryRow, MigrationTarget, TargetSettings

Purpose = Literal["read", "migrate"]


class MigrateParams(BaseModel):
    """The only params a migration takes. Unknown keys and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    mode: Literal["apply", "repair"] = "apply"
    #: Apply up to and including this version (default: every pending migration).
    target: int | None = Field(default=None, ge=1, le=999_999_999)
    #: Why a repair is safe (recorded in the history row it clears).
    reason: str | None = Field(default=None, min_length=1, max_length=200)


class TargetCredentials(Protocol):
    """Gives the connection URL for a target for the duration of a `with` block.

    `max_ttl` is how many seconds the credential that asked has left (None when no
    credential asked, e.g. a plan): nothing obtained for it may live longer.
    """

    def url(
        self,
        database: str,
        target: DatabaseTarget,
        *,
        purpose: Purpose,
        agent: str | None,
        max_ttl: float | None = None,
    ) -> AbstractContextManager[str]: ...


class ConfigCredentials:
    """The default provider: the URL written in config."""

    @contextmanager
    def url(
        self,
        database: str,
        target: DatabaseTarget,
        *,
        purpose: Purpose,
        agent: str | None,
        max_ttl: float | None = None,
    ) -> Iterator[str]:
        yield target.url.get_secret_value()


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What `status` shows: where the target is, what is pending, what blocks it."""

    database: str
    dialect: Dialect
    head: int
    pending: tuple[str, ...]
    unresolved: tuple[tuple[HistoryRow, str], ...]  # (row, failed | interrupted | running)
    lock_holder: str | None
    drift: str | None = None  # the code and message of a drift error

    @property
    def state(self) -> str:
        if self.drift:
            return "drift"
        if self.unresolved:
            return self.unresolved[0][1]
        return "pending" if self.pending else "up_to_date"

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "dialect": self.dialect,
            "state": self.state,
            "head": self.head,
            "pending": list(self.pending),
            "unresolved": [{**row.to_dict(), "status": label} for row, label in self.unresolved],
            "lock_holder": self.lock_holder,
            "drift": self.drift,
        }


def _dialect(name: str, target: DatabaseTarget) -> Dialect:
    try:
        backend = make_url(target.url.get_secret_value()).get_backend_name()
    except Exception as exc:  # the URL itself is never shown
        raise ConfigError(f"database {name!r} has an invalid url", code="database_url") from exc
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"database {name!r}: only sqlite and postgresql targets are supported",
            code="database_url",
        )
    return "sqlite" if backend == "sqlite" else "postgresql"


def _same_database(a: str, b: str) -> bool:
    try:
        x, y = make_url(a), make_url(b)
    except Exception:  # noqa: BLE001 - unparseable: cannot be the same
        return False
    if x.get_backend_name() != y.get_backend_name():
        return False
    if x.get_backend_name() == "sqlite":
        return (
            bool(x.database)
            and Path(x.database or "").resolve() == Path(y.database or "").resolve()
        )
    return (x.host or "", x.port or 5432, x.database) == (y.host or "", y.port or 5432, y.database)


def _app_name(agent: str) -> str:
    text = "".join(c if c.isascii() and c.isprintable() else "?" for c in agent)
    return f"opsgate-migrate {text}"[:63]


class MigrationExecutor:
    """Plans and applies `migrate:database/<db>` operations on configured targets."""

    params_model: ClassVar[type[BaseModel]] = MigrateParams

    def __init__(
        self,
        config: Config,
        *,
        state_dir: Path | None = None,
        credentials: TargetCredentials | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        gate_id: str | None = None,
    ) -> None:
        # The gate whose own database no target may be, however its URL is spelled:
        # checked on the database itself each time a target is opened.
        self._gate_id = gate_id
        self._targets: Mapping[str, DatabaseTarget] = dict(config.databases)
        self._dialects = {name: _dialect(name, t) for name, t in self._targets.items()}
        for name, target in self._targets.items():
            url = target.url.get_secret_value()
            # The gate's own database holds its audit log and keys' records: a migration
            # there could rewrite history. Refused whatever the config says.
            if config.database_url and _same_database(url, config.database_url):
                raise ConfigError(
                    f"database {name!r} is the gate's own database", code="database_target_invalid"
                )
            if state_dir is not None and self._dialects[name] == "sqlite":
                path = Path(make_url(url).database or "").resolve()
                if path.is_relative_to(Path(state_dir).resolve()):
                    raise ConfigError(
                        f"database {name!r} lies inside the gate's state directory",
                        code="database_target_invalid",
                    )
        leased = [n for n, t in self._targets.items() if t.vault_role is not None]
        if leased and credentials is None:
            # Without a provider that leases users, the URL (no password) would be tried.
            raise ConfigError(
                f"database {leased[0]!r} names a vault_role: pass credentials="
                "opsgate.secrets.dynamic.database_credentials(gate)",
                code="database_credentials_missing",
            )
        self._credentials: TargetCredentials = credentials or ConfigCredentials()
        self._clock = clock
        self._sleep = sleep

    # -- targets and reading ---------------------------------------------------------------

    def target(self, resource: str) -> tuple[str, DatabaseTarget]:
        """`database/<name>` -> the configured target; nothing else is a target."""
        parts = resource.split("/")
        if len(parts) != 2 or parts[0] != "database":
            raise OperationError(
                f"migrate resource must be 'database/<name>', got {safe_text(resource)!r}",
                code="operation_invalid",
            )
        name = parts[1]
        target = self._targets.get(name)
        if target is None:
            raise MigrationError(
                f"database {safe_text(name)!r} is not configured", code="database_unknown"
            )
        return name, target

    def _settings(self, target: DatabaseTarget, agent: str) -> TargetSettings:
        return TargetSettings(
            lock_timeout_ms=int(target.lock_timeout_seconds * 1000),
            statement_timeout_ms=int(target.statement_timeout_seconds * 1000),
            application_name=_app_name(agent),
        )

    @contextmanager
    def _open(
        self,
        name: str,
        target: DatabaseTarget,
        *,
        purpose: Purpose,
        agent: str,
        max_ttl: float | None = None,
    ) -> Iterator[MigrationTarget]:
        with self._credentials.url(
            name, target, purpose=purpose, agent=agent, max_ttl=max_ttl
        ) as url:
            conn = MigrationTarget.connect(
                url,
                label=name,
                settings=self._settings(target, agent),
                read_only=purpose == "read",
            )
            try:
                if self._gate_id is not None and conn.holds_gate(self._gate_id):
                    raise ConfigError(
                        f"database {name!r} is the gate's own database",
                        code="database_target_invalid",
                    )
                yield conn
            finally:
                conn.close()

    def _read(self, name: str, target: DatabaseTarget) -> tuple[tuple[HistoryRow, ...], str | None]:
        with self._open(name, target, purpose="read", agent="plan") as conn:
            return conn.read_history(), conn.lock_holder()

    def preview(
        self,
        database: str,
        *,
        mode: Literal["apply", "repair"] = "apply",
        target: int | None = None,
    ) -> MigrationPlan:
        """The plan for `database` (what `opsgate migrate plan` shows): reads only."""
        return self._preview(database, mode=mode, target=target)[0]

    def _preview(
        self, database: str, *, mode: Literal["apply", "repair"], target: int | None
    ) -> tuple[MigrationPlan, str | None]:
        name, config = self.target(f"database/{database}")
        files = load_directory(Path(config.migrations))
        history, holder = self._read(name, config)
        plan = build_plan(name, self._dialects[name], files, history, mode=mode, target=target)
        return plan, holder

    def status(self, database: str) -> MigrationStatus:
        """Head, pending files, failed/interrupted rows and the lock holder: reads only."""
        name, config = self.target(f"database/{database}")
        files = load_directory(Path(config.migrations))
        history, holder = self._read(name, config)
        drift = None
        try:
            plan = build_plan(name, self._dialects[name], files, history)
            head, pending = plan.head, tuple(p.file.name for p in plan.pending)
        except MigrationError as exc:
            drift = f"{exc.code}: {exc.message}"
            applied = [r.version for r in history if r.state == "applied"]
            head, pending = max(applied, default=0), ()
        unresolved = tuple(
            (r, "failed" if r.state == "failed" else ("running" if holder else "interrupted"))
            for r in history
            if r.state in ("failed", "running")
        )
        return MigrationStatus(name, self._dialects[name], head, pending, unresolved, holder, drift)

    # -- the Executor protocol -------------------------------------------------------------

    def _params(self, params: Mapping[str, Any]) -> MigrateParams:
        try:
            return MigrateParams.model_validate(dict(params))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise OperationError(
                f"migrate param {safe_text(where)!r}: {first['msg'].lower()}",
                code="params_invalid",
            ) from None

    def environment_of(self, resource: str) -> str:
        """The configured environment of the target `resource` names (config only, no
        I/O): what `authorize` decides with, as the plan carries it for `execute`."""
        return self.target(resource)[1].environment

    def plan(self, operation: Operation) -> Plan:
        name, config = self.target(operation.resource)
        params = self._params(operation.params)
        plan, holder = self._preview(name, mode=params.mode, target=params.target)
        running = [r for r in plan.unresolved if r.state == "running"]
        if holder is not None and running:
            # A live run is applying it: in progress, not interrupted.
            raise runner.locked_error(name, holder, 0.0)
        if params.mode == "apply":
            if plan.unresolved:
                raise runner.needs_repair(name, plan.unresolved)
            if plan.errors:
                raise MigrationError(
                    f"migration refused: {plan.errors[0]}", code="migration_refused"
                )
        elif not plan.unresolved:
            raise MigrationError(
                f"database {name!r} has no failed or interrupted migration to repair",
                code="nothing_to_repair",
            )
        content = plan.content()
        if params.mode == "repair":
            content["reason"] = safe_text(params.reason) if params.reason else None
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=config.environment,
            destructive=plan.destructive,
            summary=plan.summary(),
            steps=plan.steps(),
            content=content,
            attributes={"findings": list(plan.codes)},
        )

    def run(self, plan: Plan) -> Outcome:
        return self.run_with_context(plan, RunContext("", "unknown agent"))

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        name, config = self.target(plan.operation.resource)
        content = plan.content
        agent = (
            f"{context.agent_name} ({context.agent_did})"
            if context.agent_did
            else (context.agent_name)
        )
        # Connection or bookkeeping trouble on the target is a TargetDatabaseError (a
        # MigrationError): a failed migration, with its code.
        with self._open(
            name,
            config,
            purpose="migrate",
            agent=context.agent_name,
            max_ttl=context.credential_ttl,
        ) as conn:
            if content["mode"] == "repair":
                return self._repair(name, config, conn, content, agent)
            return self._apply(name, config, conn, content, agent)

    def _apply(
        self,
        name: str,
        config: DatabaseTarget,
        conn: MigrationTarget,
        content: Mapping[str, Any],
        agent: str,
    ) -> Outcome:
        steps = tuple(runner.Step.from_content(p) for p in content["pending"])
        if not steps:
            return Outcome("succeeded", f"{name}: nothing to apply", {"applied": []})
        result = runner.apply(
            conn,
            name,
            steps,
            head=int(content["head"]["version"]),
            head_chain=str(content["head"]["chain"]),
            agent=agent,
            wait_seconds=config.lock_wait_seconds,
            clock=self._clock,
            sleep=self._sleep,
        )
        detail = {"database": name, "applied": list(result.applied)}
        if result.failed is not None:
            return Outcome(
                "failed",
                f"{name}: {result.failed} failed and was rolled back: {result.error}",
                {**detail, "failed": result.failed, **result.detail},
                failure_kind="migration",
            )
        return Outcome("succeeded", f"{name}: applied {', '.join(result.applied)}", detail)

    def _repair(
        self,
        name: str,
        config: DatabaseTarget,
        conn: MigrationTarget,
        content: Mapping[str, Any],
        agent: str,
    ) -> Outcome:
        rows = tuple(int(r["id"]) for r in content["repair"])
        reason = content.get("reason") or "repaired through the gate"
        count = runner.repair(
            conn,
            name,
            rows,
            agent=agent,
            reason=f"repair by {agent}: {reason}",
            wait_seconds=config.lock_wait_seconds,
            clock=self._clock,
            sleep=self._sleep,
        )
        names = [str(r["name"]) for r in content["repair"]]
        return Outcome(
            "succeeded",
            f"{name}: cleared {count} failed or interrupted migration(s): {', '.join(names)}",
            {"database": name, "repaired": names},
        )


__all__ = [
    "ConfigCredentials",
    "MigrateParams",
    "MigrationExecutor",
    "MigrationStatus",
    "TargetCredentials",
]
