"""The monitoring executor: `read:monitoring/<env>/<app>` and `read:monitoring/gate`.

Read-only by construction: every view reads what the gate and the deploy executor
already record (or runs the app's configured health probe, which the operator
wrote, never the agent) and returns it to the caller. Nothing here writes a
release, a secret or a row of the deploy tables; a monitoring agent holds only
`read:monitoring`, so any other operation it asks for is out of its scope and
refused (and charged) by the gate before an executor sees it.

    monitoring/<env>/<app>  view=status   what is live, the deploy lock, the last run
                            view=history  the app's deploys and rollbacks, newest first
                            view=health   the app's configured health gate, run now
    monitoring/gate         view=status   agents and trust, pending approvals, the audit
                                          head, open database leases, deploy locks
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, Field

from opsgate.config import DEPLOY_NAME
from opsgate.errors import OperationError, RunRefused, safe_text
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan

if TYPE_CHECKING:
    from opsgate.approvals.service import ApprovalService
    from opsgate.audit.log import AuditLog
    from opsgate.identity.registry import AgentRegistry
    from opsgate.operations.base import Executor
    from opsgate.operations.deploy.executor import DeployExecutor

NAMESPACE = "monitoring"
#: The resource (after `monitoring/`) of the gate's own status.
GATE_TARGET = "gate"
View = Literal["status", "history", "health"]
#: At most this many rows of each list in the gate's status (the counts are exact).
STATUS_ROWS = 200
#: Health views the gate runs at once (one per app at most): each holds a worker of
#: the gate's for up to the app's health deadline, so more are refused, not queued.
HEALTH_VIEWS_AT_ONCE = 4
#: How many recent lease events the open-lease view reads.
LEASE_WINDOW = 1000


class GateView(Protocol):
    """What the gate's status reads (a Gate is one)."""

    @property
    def gate_id(self) -> str: ...

    @property
    def agents(self) -> AgentRegistry: ...

    @property
    def approvals(self) -> ApprovalService: ...

    @property
    def audit(self) -> AuditLog: ...

    def registered_executor(self, action: str, namespace: str | None = None) -> Executor | None: ...

    def policy_status(self) -> dict[str, Any]: ...


class MonitorParams(OperationParams):
    """`view` picks what to read; `limit` bounds a history."""

    view: View = "status"
    limit: int = Field(default=20, ge=1, le=1000)


def monitor_operation(target: str, view: View = "status", **params: Any) -> Operation:
    """The operation that reads `view` of `target` (`<env>/<app>` or `gate`)."""
    return Operation("read", f"{NAMESPACE}/{target}", {"view": view, **params})


class MonitorExecutor:
    """Plans and runs `read:monitoring/...`; the gate registers one for itself.

    `deployer` returns the gate's deploy executor when one is registered (the app
    views read its records and health checks); `gate` answers the gate's own status.
    """

    params_model: ClassVar[type[BaseModel]] = MonitorParams

    def __init__(
        self,
        gate: GateView,
        deployer: Callable[[], DeployExecutor | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gate = gate
        self._deployer = deployer
        self._clock = clock
        self._checking: set[tuple[str, str]] = set()  # (env, app) of health views running
        self._checking_lock = threading.Lock()

    def __repr__(self) -> str:
        return "MonitorExecutor()"

    # -- plan ----------------------------------------------------------------------------

    def _target(self, resource: str) -> tuple[str, str] | None:
        """(env, app) for an app's views; None for the gate's own status."""
        parts = resource.split("/")
        if parts[0] != NAMESPACE:
            raise OperationError(
                f"monitoring resource must start with {NAMESPACE!r}, got {safe_text(resource)!r}",
                code="operation_invalid",
            )
        rest = parts[1:]
        if rest == [GATE_TARGET]:
            return None
        if len(rest) != 2 or not all(DEPLOY_NAME.match(p) for p in rest):
            raise OperationError(
                f"monitoring resource must be '{NAMESPACE}/<env>/<app>' or "
                f"'{NAMESPACE}/{GATE_TARGET}', got {safe_text(resource)!r}",
                code="operation_invalid",
            )
        return rest[0], rest[1]

    def _deploy(self) -> DeployExecutor:
        deployer = self._deployer()
        if deployer is None:
            raise OperationError(
                "no deploy executor is registered: there is no app to monitor",
                code="monitoring_unavailable",
            )
        return deployer

    def plan(self, operation: Operation) -> Plan:
        params = MonitorParams.model_validate(operation.params)
        target = self._target(operation.resource)
        if target is None:
            if params.view != "status":
                raise OperationError(
                    f"the gate has only a status view, not {params.view!r}",
                    code="params_invalid",
                )
            summary = "read the gate's status"
            return Plan(
                operation=operation,
                capability=operation.capability,
                summary=summary,
                steps=(summary,),
                content={"view": "gate"},
                reads_only=True,
            )
        env, app = target
        deployer = self._deploy()
        deployer.backend(env)  # an environment without a deploy backend is an error now
        if params.view == "health":
            check = deployer.health_check(env, app)
            from opsgate.operations.deploy.health import describe

            what = "no health check configured" if check is None else describe(check)
            steps: tuple[str, ...] = (what,)
        elif params.view == "history":
            steps = (f"read the last {params.limit} deploys of {app} in {env}",)
        else:
            steps = (f"read the deploy status of {app} in {env}",)
        return Plan(
            operation=operation,
            capability=operation.capability,
            # The environment the app lives in: the gate refuses one that is not
            # declared, so an unknown name is never read as unprotected.
            environment=env,
            summary=f"{params.view} of {app} in {env}",
            steps=steps,
            content={"view": params.view, "env": env, "app": app, "limit": params.limit},
            reads_only=True,
        )

    # -- run -----------------------------------------------------------------------------

    @contextmanager
    def _health_slot(self, env: str, app: str) -> Iterator[None]:
        """Hold one of the gate's few health-view slots for (env, app), or refuse at
        once: one run per app, `HEALTH_VIEWS_AT_ONCE` in all."""
        key = (env, app)
        with self._checking_lock:
            if key in self._checking:
                why = f"a health check of {app} in {env} is already running"
            elif len(self._checking) >= HEALTH_VIEWS_AT_ONCE:
                why = f"{HEALTH_VIEWS_AT_ONCE} health checks are already running"
            else:
                why = None
                self._checking.add(key)
        if why is not None:
            raise RunRefused(f"{why}; try again when it has ended", code="monitoring_busy")
        try:
            yield
        finally:
            with self._checking_lock:
                self._checking.discard(key)

    def run(self, plan: Plan) -> Outcome:
        content = plan.content
        if content["view"] == "gate":
            status = gate_status(self._gate, self._clock())
            summary = (
                f"gate: {len(status['agents'])} agents, "
                f"{status['approvals']['pending_count']} pending approvals, "
                f"audit head {status['audit']['head_seq']}"
            )
            return Outcome("succeeded", summary, status, audit_fields={"view": "gate"})
        env, app, view = content["env"], content["app"], content["view"]
        deployer = self._deploy()
        if view == "health":
            with self._health_slot(env, app):
                current = deployer.status(env, app).current
                report = deployer.check_health(env, app)
            detail = {"env": env, "app": app, "current": current, "health": report.to_dict()}
            # A failing app is what monitoring reports, not a failed read: the read succeeded.
            return Outcome(
                "succeeded",
                f"{app} in {env}: health {report.status} ({report.detail})",
                detail,
                audit_fields={"view": view, "health": report.status, "current": current},
            )
        if view == "history":
            records = deployer.history(env, app, content["limit"])
            return Outcome(
                "succeeded",
                f"{app} in {env}: {len(records)} deployments",
                {"env": env, "app": app, "history": [r.to_dict() for r in records]},
                audit_fields={"view": view, "rows": len(records)},
            )
        found = deployer.status(env, app, now=self._clock())
        live = found.current or "nothing"
        return Outcome(
            "succeeded",
            f"{app} in {env}: {live} live" + (", locked" if found.lock is not None else ""),
            found.to_dict(),
            audit_fields={"view": view, "current": found.current},
        )


def gate_status(gate: GateView, now: float) -> dict[str, Any]:
    """The gate's own status: what a monitoring agent (and `opsgate status`) shows."""
    agents = gate.agents.list()
    pending = gate.approvals.list(status="pending", now=now)
    head_seq, head_hash = gate.audit.head()
    deployer = registered_deployer(gate)
    locks = [] if deployer is None else deployer.locks()
    leases = open_leases(gate, now)
    return {
        "gate": gate.gate_id,
        "at": now,
        "agents": [
            {
                "name": a.name,
                "did": a.did,
                "depth": a.depth,
                "status": a.status,
                "trust_score": a.trust_score,
                "effective_trust": a.effective_trust,
            }
            for a in agents[:STATUS_ROWS]
        ],
        "agent_count": len(agents),
        "approvals": {
            "pending_count": len(pending),
            "pending": [
                {
                    "id": r.id,
                    "capability": r.capability,
                    "requester": r.requester_name,
                    "approvers": list(r.approvers),
                    "min_approvals": r.min_approvals,
                    "expires_at": r.expires_at,
                }
                for r in pending[:STATUS_ROWS]
            ],
        },
        "audit": {"head_seq": head_seq, "head_hash": head_hash},
        "policy": gate.policy_status(),
        "leases": leases[:STATUS_ROWS],
        "lease_count": len(leases),
        "locks": [lock.to_dict(now) for lock in locks[:STATUS_ROWS]],
        "lock_count": len(locks),
    }


def registered_deployer(gate: GateView) -> DeployExecutor | None:
    from opsgate.operations.deploy.executor import DeployExecutor

    found = gate.registered_executor("deploy")
    return found if isinstance(found, DeployExecutor) else None


def open_leases(gate: GateView, now: float) -> list[dict[str, Any]]:
    """Database leases the gate issued that are neither revoked nor past their TTL,
    from the audit's recent lease events (a lease is never stored anywhere else)."""
    issued = gate.audit.tail(LEASE_WINDOW, event_type="secrets.lease_issued")
    closed = {
        r.event.get("lease_id")
        for kind in ("secrets.lease_revoked",)
        for r in gate.audit.tail(LEASE_WINDOW, event_type=kind)
    }
    out = []
    for record in issued:
        e = record.event
        ttl = e.get("ttl")
        if e.get("lease_id") in closed or not isinstance(ttl, (int, float)):
            continue
        if record.at + ttl <= now:
            continue
        out.append(
            {
                "lease_id": e.get("lease_id"),
                "database": e.get("database"),
                "username": e.get("username"),
                "agent": e.get("agent"),
                "issued_at": record.at,
                "expires_at": record.at + ttl,
            }
        )
    return out


__all__ = [
    "GATE_TARGET",
    "HEALTH_VIEWS_AT_ONCE",
    "NAMESPACE",
    "MonitorExecutor",
    "MonitorParams",
    "gate_status",
    "monitor_operation",
    "open_leases",
    "registered_deployer",
]
