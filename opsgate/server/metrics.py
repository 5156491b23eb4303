"""Prometheus metrics of one app, in a registry of its own (never the global one),
so several apps (tests, replicas in one process) never share or clash."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opsgate.decision import EFFECTS

if TYPE_CHECKING:
    from opsgate.gate import Gate


class _GateState(Collector):
    """Read at scrape time from the gate: pending approvals, audit head, trust."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        pending = GaugeMetricFamily(
            "opsgate_pending_approvals", "Approval requests waiting for a decision."
        )
        pending.add_metric([], len(gate.approvals.list(status="pending")))
        yield pending
        head = GaugeMetricFamily("opsgate_audit_head_seq", "Sequence number of the audit head.")
        head.add_metric([], gate.audit.head()[0])
        yield head
        trust = GaugeMetricFamily(
            "opsgate_trust_score", "Effective trust score per agent.", labels=["agent"]
        )
        for agent in gate.agents.list():
            trust.add_metric([agent.name], agent.effective_trust)
        yield trust


class ServerMetrics:
    def __init__(self, gate: Gate) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "opsgate_decisions",
            "Decisions by effect (allow, deny, require_approval).",
            ["effect"],
            registry=self.registry,
        )
        # The counter of each effect, looked up once (`labels` hashes and locks).
        self.decided: dict[str, Counter] = {e: self.decisions.labels(e) for e in EFFECTS}
        self.refusals = Counter(
            "opsgate_refusals", "Refused requests by error code.", ["code"], registry=self.registry
        )
        self.operation_seconds = Histogram(
            "opsgate_operation_seconds",
            "Latency of operations (execute and resume) through the gate.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_GateState(gate))

    def decision(self, effect: str) -> None:
        """Count one decision of `effect`."""
        counter = self.decided.get(effect)
        (counter if counter is not None else self.decisions.labels(effect)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
