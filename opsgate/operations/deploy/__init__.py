"""Deployments through the gate: `deploy:<env>/<app>` and `rollback:<env>/<app>`.

executor   DeployExecutor (local and command backends), RollbackExecutor, LocalDeployExecutor
local      the release tree: releases/<version>/, `current`, atomic switch, removal
command    command templates, placeholder values, the child's environment, SecretSource
child      running a child process: no shell, timeout, scrubbed output tail
health     the health gate: HTTP or command probes, thresholds, deadline
progress   progress events for a CLI (RichProgress)
"""

from opsgate.operations.deploy.command import SecretSource, StoreSecrets
from opsgate.operations.deploy.executor import (
    DeployExecutor,
    DeployParams,
    DeployStatus,
    LocalDeployExecutor,
    RollbackExecutor,
    RollbackParams,
)
from opsgate.operations.deploy.health import HealthReport
from opsgate.operations.deploy.progress import DeployProgress, ProgressHook, RichProgress

__all__ = [
    "DeployExecutor",
    "DeployParams",
    "DeployProgress",
    "DeployStatus",
    "HealthReport",
    "LocalDeployExecutor",
    "ProgressHook",
    "RichProgress",
    "RollbackExecutor",
    "RollbackParams",
    "SecretSource",
    "StoreSecrets",
]
