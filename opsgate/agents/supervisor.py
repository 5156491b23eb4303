"""The supervisor: plans a task written as a sentence and hands it to its sub-agent.

Planning is a fixed table of sentence forms (deterministic, no model):

    Deploy <app>-v<version> to <env>          deploy-agent
    Rotate secret <env>/<path>                secret-manager (a fresh random value)
    Migrate database <db>                     database-agent
    Check health of <app> in <env>            monitoring-agent
    Show gate status                          monitoring-agent

`plan(text)` returns the steps the task will take before anything runs; `run(text)`
runs it. A sentence outside the table is `task_unknown`.

`Supervisor.in_process(gate, agents)` wires the four sub-agents to an in-process gate,
each with its own credential; `Supervisor(...)` takes sub-agents built on any
GatePort (a RemoteGate per agent, each holding only its own key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opsgate.agents.core import GateAgent, ProvingGate, StepLog, TaskResult
from opsgate.agents.workers import (
    DatabaseAgent,
    DeployAgent,
    DeployTask,
    MonitoringAgent,
    SecretManager,
)
from opsgate.errors import AgentError, OperationError, safe_text

if TYPE_CHECKING:
    from opsgate.gate import Gate
    from opsgate.identity.registry import Agent

#: The seed's sub-agents and the grants each asks its credential for.
SEED_SCOPES: dict[str, list[str]] = {
    "deploy-agent": ["deploy:staging", "deploy:production"],
    "secret-manager": ["read:secrets", "write:secrets"],
    "database-agent": ["migrate:database"],
    "monitoring-agent": ["read:monitoring"],
}
_N = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "deploy",
        re.compile(rf"deploy\s+(?P<app>{_N}?)-v(?P<version>{_N})\s+to\s+(?P<env>{_N})", re.I),
    ),
    ("rotate", re.compile(rf"rotate\s+secret\s+(?P<path>{_N}(?:/{_N})+)", re.I)),
    ("migrate", re.compile(rf"migrate\s+database\s+(?P<db>{_N})", re.I)),
    ("health", re.compile(rf"check\s+health\s+of\s+(?P<app>{_N})\s+in\s+(?P<env>{_N})", re.I)),
    ("gate", re.compile(r"show\s+(?:the\s+)?gate(?:'s)?\s+status", re.I)),
)


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """What a task is, who runs it, and the steps it will take."""

    text: str
    kind: str
    agent: str
    args: dict[str, str]
    steps: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.text,
            "kind": self.kind,
            "agent": self.agent,
            "args": self.args,
            "steps": list(self.steps),
        }


class Supervisor:
    """Holds the four sub-agents and runs tasks through them (one log for all)."""

    def __init__(
        self,
        *,
        deploy: DeployAgent,
        secrets: SecretManager,
        database: DatabaseAgent,
        monitoring: MonitoringAgent,
        log: StepLog | None = None,
    ) -> None:
        self.deploy = deploy
        self.secrets = secrets
        self.database = database
        self.monitoring = monitoring
        self.log = log or deploy.log
        for agent in self.agents.values():
            agent.log = self.log

    @property
    def agents(self) -> dict[str, GateAgent]:
        return {a.name: a for a in (self.deploy, self.secrets, self.database, self.monitoring)}

    @classmethod
    def in_process(
        cls,
        gate: Gate,
        agents: Mapping[str, Agent],
        *,
        ttl_minutes: float = 15,
        artifact_for: Callable[[str, str], str] | None = None,
        approval_timeout: float = 60.0,
        log: StepLog | None = None,
    ) -> Supervisor:
        """The seed's sub-agents (by name in `agents`) on `gate`, each with its own
        self-renewing credential for its own grants."""
        log = log or StepLog()
        missing = [n for n in SEED_SCOPES if n not in agents]
        if missing:
            raise AgentError(
                f"no agent named {', '.join(map(repr, missing))} to supervise",
                code="agent_not_found",
            )

        def wire(name: str) -> dict[str, Any]:
            agent = agents[name]
            handle = agent.credential(scope=SEED_SCOPES[name], ttl_minutes=ttl_minutes)
            # A gate that requires proofs gets one per request, signed with this agent's key.
            port: Any = ProvingGate(gate, handle) if gate.config.require_proof else gate
            return {
                "name": name,
                "gate": port,
                "credential": handle,
                "log": log,
                "approval_timeout": approval_timeout,
            }

        deploy_agent = agents["deploy-agent"]
        promotions = dict(gate.config.deploy.promotions)
        return cls(
            deploy=DeployAgent(
                **wire("deploy-agent"),
                artifact_for=artifact_for,
                promotions=promotions or None,
                trust=lambda: gate.trust_score(deploy_agent.did),
            ),
            secrets=SecretManager(**wire("secret-manager")),
            database=DatabaseAgent(**wire("database-agent")),
            monitoring=MonitoringAgent(**wire("monitoring-agent")),
            log=log,
        )

    # -- planning --------------------------------------------------------------------------

    def plan(self, text: str) -> TaskPlan:
        """The task's kind, agent and steps; `task_unknown` for any other sentence."""
        if not isinstance(text, str) or len(text) > 300:
            raise OperationError("a task is one sentence of text", code="task_unknown")
        sentence = " ".join(text.split()).rstrip(".")
        for kind, form in _FORMS:
            m = form.fullmatch(sentence)
            if m is None:
                continue
            args = {k: v for k, v in m.groupdict().items() if v is not None}
            return TaskPlan(
                sentence, kind, self._agent_for(kind).name, args, self._steps(kind, args)
            )
        raise OperationError(
            f"no plan for task {safe_text(sentence)!r}: say 'Deploy <app>-v<version> to <env>', "
            "'Rotate secret <env>/<path>', 'Migrate database <db>', "
            "'Check health of <app> in <env>' or 'Show gate status'",
            code="task_unknown",
        )

    def _agent_for(self, kind: str) -> GateAgent:
        return {
            "deploy": self.deploy,
            "rotate": self.secrets,
            "migrate": self.database,
            "health": self.monitoring,
            "gate": self.monitoring,
        }[kind]

    def _steps(self, kind: str, args: dict[str, str]) -> tuple[str, ...]:
        if kind == "deploy":
            route = self.deploy.route(args["env"].lower())
            out = ["credential"]
            for env in route:
                if env != route[-1]:
                    out.append(f"deploy to {env}")
                else:
                    out += [f"approval for {env} (if policy asks)", f"deploy to {env}"]
            return (*out, "health", "trust")
        return {
            "rotate": ("credential", "rotate (approval if policy asks)"),
            "migrate": (
                "credential",
                "plan (dry run)",
                "apply the safe migrations",
                "apply the destructive ones (approval if policy asks)",
            ),
            "health": ("health",),
            "gate": ("gate status",),
        }[kind]

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        text: str,
        *,
        artifact: str | None = None,
        on_waiting: Callable[[str], None] | None = None,
        wait: float | None = None,
    ) -> TaskResult:
        """Plan `text` and run it with its sub-agent; refusals and waits are results."""
        plan = self.plan(text)
        a = plan.args
        if plan.kind == "deploy":
            task = DeployTask(a["app"], a["version"], a["env"].lower(), artifact)
            return self.deploy.deploy(task, on_waiting=on_waiting, wait=wait)
        if plan.kind == "rotate":
            return self.secrets.rotate(a["path"], wait=wait)
        if plan.kind == "migrate":
            return self.database.migrate(a["db"], on_waiting=on_waiting, wait=wait)
        if plan.kind == "health":
            return self.monitoring.health(a["env"].lower(), a["app"])
        return self.monitoring.gate_status()


__all__ = ["SEED_SCOPES", "Supervisor", "TaskPlan"]
