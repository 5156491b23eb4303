"""The four sub-agents of the seed, each a `GateAgent` with its own narrow grants.

deploy-agent      deploy:staging, deploy:production   staging -> approval -> production
secret-manager    read:secrets, write:secrets         write and rotate; versions only
database-agent    migrate:database                    plan, apply the safe, wait on the rest
monitoring-agent  read:monitoring                     health, status, history, the gate

Every method is a task: a sequence of steps through the gate, reported as events,
ending in a `TaskResult` (never an exception for a refusal, a failure or a wait).
"""

from __future__ import annotations

import re
import secrets as random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opsgate import capabilities as caps
from opsgate.agents.core import GateAgent, StepRefused, TaskResult, _public
from opsgate.errors import OperationError, OpsgateError, safe_text
from opsgate.operations.base import Operation, Outcome
from opsgate.operations.monitor import monitor_operation
from opsgate.operations.monitor.executor import View
from opsgate.secrets.value import SecretValue

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise OperationError(
            f"{what} {safe_text(value)!r} is not a plain name", code="task_invalid"
        )
    return value


@dataclass(frozen=True, slots=True)
class DeployTask:
    """Deploy `app` at `version` to `env` (through the environments before it)."""

    app: str
    version: str
    env: str
    artifact: str | None = None

    def __post_init__(self) -> None:
        _name(self.app, "app")
        _name(self.version, "version")
        _name(self.env, "environment")

    @property
    def text(self) -> str:
        return f"Deploy {self.app}-v{self.version} to {self.env}"


class DeployAgent(GateAgent):
    """Deploys releases: each environment the gate promotes from first, then the target.

    `artifact_for(app, version)` names the artifact of a release (a path under the
    gate's artifact roots) when a task gives none; `promotions` is the gate's
    `deploy.promotions` (production takes only what staging ran); `trust` reads the
    agent's own score where the port can (in process), for the trust step.
    """

    def __init__(
        self,
        *args: Any,
        artifact_for: Callable[[str, str], str] | None = None,
        promotions: dict[str, str] | None = None,
        trust: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.artifact_for = artifact_for
        self.promotions = {"production": "staging"} if promotions is None else dict(promotions)
        self.trust = trust

    def route(self, env: str) -> list[str]:
        """The environments a deploy to `env` passes through, in order."""
        path = [env]
        while path[0] in self.promotions and len(path) < 8:
            before = self.promotions[path[0]]
            if before in path:
                break
            path.insert(0, before)
        return path

    def deploy(
        self,
        task: DeployTask,
        *,
        on_waiting: Callable[[str], None] | None = None,
        wait: float | None = None,
    ) -> TaskResult:
        """credential -> each environment on the way (approval where policy asks) ->
        health -> trust."""
        text = task.text
        start = len(self.log.events)
        before = self._trust()
        self.credential_step(text)
        artifact = task.artifact
        if artifact is None and self.artifact_for is not None:
            artifact = self.artifact_for(task.app, task.version)
        params: dict[str, Any] = {"version": task.version}
        if artifact is not None:
            params["artifact"] = artifact
        outcome: Outcome | None = None
        try:
            for env in self.route(task.env):
                op = Operation("deploy", f"{env}/{task.app}", dict(params))
                outcome = self.run_operation(
                    text, env, op, on_waiting=on_waiting, wait=wait, fail_ok=True
                )
                if outcome.status == "failed":
                    self._health_step(text, outcome)
                    self._trust_step(text, before)
                    return self._result(text, "failed", start, result=_public(outcome.detail))
        except StepRefused as stop:
            self._trust_step(text, before)
            return self._result(text, stop.status, start, approval_id=stop.approval_id)
        assert outcome is not None
        self._health_step(text, outcome)
        self._trust_step(text, before)
        return self._result(text, "succeeded", start, result=_public(outcome.detail))

    def _health_step(self, task: str, outcome: Outcome) -> None:
        health = outcome.detail.get("health") if isinstance(outcome.detail, dict) else None
        if not isinstance(health, dict):
            self.step(task, "health", "skipped", "no health report in the outcome")
            return
        status = health.get("status")
        if outcome.status == "failed":
            previous = outcome.detail.get("previous")
            what = f"rolled back to {previous}" if previous else "nothing was live before"
            self.step(
                task,
                "health",
                "failed",
                f"health check {status}: {what}",
                health=health,
                restored=outcome.detail.get("restored"),
            )
            return
        message = (
            "deployment successful, health checked"
            if status == "passed"
            else f"deployment successful, health {status}"
        )
        self.step(task, "health", "done", message, health=health)

    def _trust(self) -> int | None:
        if self.trust is None:
            return None
        try:
            return int(self.trust())
        except Exception:  # noqa: BLE001 - the trust step reports, it never fails a task
            return None

    def _trust_step(self, task: str, before: int | None) -> None:
        after = self._trust()
        if before is None or after is None:
            self.step(task, "trust", "done", "trust recorded by the gate")
            return
        self.step(
            task,
            "trust",
            "done",
            f"trust score updated: {before} \u2192 {after}",
            before=before,
            after=after,
        )


class SecretManager(GateAgent):
    """Writes and rotates secrets; reports paths and versions, never a value.

    A rotation is the gate's `rotate` (the gate draws the value; the agent never
    sees it) when the agent's credential holds `rotate:secrets`; the seed's
    secret-manager holds only `read:secrets` and `write:secrets`, so it rotates by
    writing a fresh value it draws from the OS's CSPRNG (`secrets.token_urlsafe`)
    as the next version, and forgets it.
    """

    def _rotation(self, resource: str, length: int) -> Operation:
        scope = getattr(self.credential, "scope", None) or ()
        wanted = caps.parse_request(f"rotate:{resource}")
        try:
            grants = caps.parse_all(scope, grant=True)
        except OpsgateError:
            grants = ()
        if caps.covered_by_any(grants, wanted):
            return Operation("rotate", resource, {"length": length})
        fresh = SecretValue(random.token_urlsafe(length)[:length])
        return Operation("write", resource, secret=fresh)

    def rotate_password(
        self,
        path: str,
        initial: SecretValue,
        *,
        length: int = 32,
        on_waiting: Callable[[str], None] | None = None,
        wait: float | None = None,
    ) -> TaskResult:
        """credential -> write `initial` -> rotate to a fresh random value."""
        resource = path if path.startswith("secrets/") else f"secrets/{path}"
        text = f"Write and rotate the password at {resource}"
        start = len(self.log.events)
        self.credential_step(text)
        try:
            wrote = self.run_operation(
                text,
                "write",
                Operation("write", resource, secret=initial),
                on_waiting=on_waiting,
                wait=wait,
            )
            rotated = self.run_operation(
                text,
                "rotate",
                self._rotation(resource, length),
                on_waiting=on_waiting,
                wait=wait,
            )
        except StepRefused as stop:
            return self._result(text, stop.status, start, approval_id=stop.approval_id)
        return self._result(
            text,
            "succeeded",
            start,
            result={
                "path": rotated.detail.get("path"),
                "written_version": wrote.detail.get("version"),
                "version": rotated.detail.get("version"),
            },
        )

    def rotate(self, path: str, *, length: int = 32, wait: float | None = None) -> TaskResult:
        """credential -> rotate to a fresh random value (a new version)."""
        resource = path if path.startswith("secrets/") else f"secrets/{path}"
        text = f"Rotate secret {resource}"
        start = len(self.log.events)
        self.credential_step(text)
        try:
            rotated = self.run_operation(
                text, "rotate", self._rotation(resource, length), wait=wait
            )
        except StepRefused as stop:
            return self._result(text, stop.status, start, approval_id=stop.approval_id)
        return self._result(
            text,
            "succeeded",
            start,
            result={"path": rotated.detail.get("path"), "version": rotated.detail.get("version")},
        )


class DatabaseAgent(GateAgent):
    """Plans a migration set, applies what is safe, and leaves the destructive rest to
    the approvers policy names (waiting for them up to its timeout)."""

    def migrate(
        self,
        database: str,
        *,
        on_waiting: Callable[[str], None] | None = None,
        wait: float | None = None,
    ) -> TaskResult:
        _name(database, "database")
        resource = f"database/{database}"
        text = f"Migrate database {database}"
        start = len(self.log.events)
        self.credential_step(text)
        try:
            preview = self.run_operation(
                text, "plan", Operation("migrate", resource, dry_run=True), wait=wait
            )
            pending = _pending(preview)
            for m in pending:
                codes = ", ".join(m["findings"]) or "no findings"
                kind = "DESTRUCTIVE" if m["destructive"] else "safe"
                self.step(
                    text, "plan", "done", f"V{m['version']} {m['name']}: {kind} ({codes})", **m
                )
            if not pending:
                return self._result(text, "succeeded", start, result={"applied": []})
            safe: list[int] = []
            for m in pending:
                if m["destructive"]:
                    break
                safe.append(m["version"])
            applied: list[Any] = []
            if safe:
                done = self.run_operation(
                    text,
                    "apply-safe",
                    Operation("migrate", resource, {"target": safe[-1]}),
                    wait=wait,
                )
                applied.extend(done.detail.get("applied") or [])
            if len(safe) < len(pending):
                done = self.run_operation(
                    text,
                    "apply-destructive",
                    Operation("migrate", resource),
                    on_waiting=on_waiting,
                    wait=wait,
                )
                applied.extend(done.detail.get("applied") or [])
        except StepRefused as stop:
            return self._result(text, stop.status, start, approval_id=stop.approval_id)
        return self._result(text, "succeeded", start, result={"applied": applied})


def _pending(preview: Outcome) -> list[dict[str, Any]]:
    """Each pending migration of a dry run's plan: version, name, destructive, findings."""
    plan = preview.detail.get("plan") or {}
    content = plan.get("content") or {}
    out = []
    for p in content.get("pending") or ():
        codes = sorted(
            {
                f["code"]
                for st in p.get("statements") or ()
                for f in st.get("findings") or ()
                if isinstance(f, dict) and isinstance(f.get("code"), str)
            }
        )
        out.append(
            {
                "version": p["version"],
                "name": p["name"],
                "destructive": bool(p.get("destructive")),
                "findings": codes,
            }
        )
    return out


class MonitoringAgent(GateAgent):
    """Reads health, deploy status and history, and the gate's status; nothing else."""

    def read(self, target: str, view: View = "status", **params: Any) -> TaskResult:
        text = f"Check {view} of {target}" if target != "gate" else "Show the gate's status"
        start = len(self.log.events)
        try:
            outcome = self.run_operation(
                text,
                view,
                monitor_operation(target, view, **params),
                wait=0.0,
            )
        except StepRefused as stop:
            return self._result(text, stop.status, start, approval_id=stop.approval_id)
        return self._result(text, "succeeded", start, result=_public(outcome.detail))

    def health(self, env: str, app: str) -> TaskResult:
        return self.read(f"{_name(env, 'environment')}/{_name(app, 'app')}", "health")

    def status(self, env: str, app: str) -> TaskResult:
        return self.read(f"{_name(env, 'environment')}/{_name(app, 'app')}", "status")

    def history(self, env: str, app: str, limit: int = 20) -> TaskResult:
        return self.read(f"{_name(env, 'environment')}/{_name(app, 'app')}", "history", limit=limit)

    def gate_status(self) -> TaskResult:
        return self.read("gate")


__all__ = [
    "DatabaseAgent",
    "DeployAgent",
    "DeployTask",
    "MonitoringAgent",
    "SecretManager",
]
