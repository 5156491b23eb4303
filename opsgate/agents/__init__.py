"""The DevOps agent built on the gate: a supervisor and its four sub-agents.

Each sub-agent holds its own key and its own short-lived, self-renewing credential
and calls only the gate, through a `GatePort` that the in-process `opsgate.Gate`
and the remote `opsgate.client.RemoteGate` both satisfy. Tasks are planned into
steps and every step is reported as a structured `StepEvent`. Plain Python,
deterministic: no model decides anything here.

    team = Supervisor.in_process(gate, agents, artifact_for=...)
    result = team.run("Deploy app-v2.0 to production")
    for step in result.steps: print(step.step, step.status, step.message)
"""

from opsgate.agents.core import (
    GateAgent,
    GatePort,
    RenewingCredential,
    StepEvent,
    StepListener,
    StepLog,
    TaskResult,
)
from opsgate.agents.supervisor import SEED_SCOPES, Supervisor, TaskPlan
from opsgate.agents.workers import (
    DatabaseAgent,
    DeployAgent,
    DeployTask,
    MonitoringAgent,
    SecretManager,
)

__all__ = [
    "SEED_SCOPES",
    "DatabaseAgent",
    "DeployAgent",
    "DeployTask",
    "GateAgent",
    "GatePort",
    "MonitoringAgent",
    "RenewingCredential",
    "SecretManager",
    "StepEvent",
    "StepListener",
    "StepLog",
    "Supervisor",
    "TaskPlan",
    "TaskResult",
]
