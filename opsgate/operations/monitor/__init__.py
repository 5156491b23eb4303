"""Monitoring through the gate: `read:monitoring/<env>/<app>` and `read:monitoring/gate`.

executor   MonitorExecutor (health, deploy status and history, the gate's status)
"""

from opsgate.operations.monitor.executor import (
    GATE_TARGET,
    NAMESPACE,
    MonitorExecutor,
    MonitorParams,
    gate_status,
    monitor_operation,
    open_leases,
)

__all__ = [
    "GATE_TARGET",
    "NAMESPACE",
    "MonitorExecutor",
    "MonitorParams",
    "gate_status",
    "monitor_operation",
    "open_leases",
]
