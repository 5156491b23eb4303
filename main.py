"""The opsgate quick-start: a supervisor agent and its DevOps sub-agents, end to end.

    pip install -r requirements.txt && python main.py

Runs on a fresh temporary state directory (SQLite, no servers). Every step goes
through the same Gate the CLI, HTTP API and MCP server use.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import opsgate
import opsgate.audit.log

console = Console(highlight=False, emoji=False)


def section(title: str) -> None:
    console.rule(f"[bold]{title}")


def identity(gate: opsgate.Gate) -> dict[str, opsgate.Agent]:
    section("1. Identity: a supervisor and four narrowly delegated sub-agents")
    supervisor = gate.register_agent(
        "devops-supervisor",
        capabilities=[
            "deploy:staging",
            "deploy:production",
            "read:secrets",
            "write:secrets",
            "migrate:database",
            "read:monitoring",
        ],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    console.print(f"supervisor [bold]{supervisor.name}[/bold]")
    console.print(f"  did         {supervisor.did}")
    console.print(f"  trust score {supervisor.trust_score}")
    agents = {
        "deploy-agent": supervisor.delegate(
            name="deploy-agent", capabilities=["deploy:staging", "deploy:production"]
        ),
        "secret-manager": supervisor.delegate(
            name="secret-manager", capabilities=["read:secrets", "write:secrets"]
        ),
        "database-agent": supervisor.delegate(
            name="database-agent", capabilities=["migrate:database"]
        ),
        "monitoring-agent": supervisor.delegate(
            name="monitoring-agent", capabilities=["read:monitoring"]
        ),
    }
    table = Table("sub-agent", "did", "depth", "capabilities")
    for agent in agents.values():
        table.add_row(agent.name, agent.did[:32] + "...", str(agent.depth), ", ".join(agent.capabilities))
    console.print(table)
    agents["devops-supervisor"] = supervisor
    return agents


def credentials(gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> opsgate.Credential:
    section("2. A short-lived credential, verifiable by anyone with the JWKS")
    cred = gate.credential_manager.issue_credential(
        agent_id=agents["deploy-agent"].did, scope=["deploy:production"], ttl_minutes=15
    )
    ttl = int(cred.ttl_seconds // 60)
    console.print(f"issued {cred.jti} to deploy-agent, scope {cred.scope}, TTL {ttl} minutes")
    console.print(f"  expires {cred.expires_at.isoformat()}")
    claims = gate.credential_manager.verify(cred.token)
    console.print(f"  verified: sub={claims.sub[:24]}... bound to key {claims.jkt[:12]}...")
    for capability in ("deploy:production/app-web", "deploy:production-eu/app-web"):
        decision = gate.authorize(cred.token, capability)
        console.print(f"  authorize {capability:<32} -> [bold]{decision.effect}[/bold]")
    return cred


def escalation(gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    section("3. Escalation attempts are refused")
    attempts = [
        ("monitoring-agent delegates write:secrets",
         lambda: agents["monitoring-agent"].delegate(name="sneaky", capabilities=["write:secrets"])),
        ("deploy-agent asks for a credential with read:secrets",
         lambda: gate.credential_manager.issue_credential(
             agent_id=agents["deploy-agent"].did, scope=["read:secrets"])),
        ("supervisor delegates deploy:* (unrestricted)",
         lambda: agents["devops-supervisor"].delegate(name="wild", capabilities=["deploy:*"])),
        ("a 2-hour credential",
         lambda: gate.credential_manager.issue_credential(
             agent_id=agents["deploy-agent"].did, scope=["deploy:staging"], ttl_minutes=120)),
    ]
    for label, attempt in attempts:
        try:
            attempt()
        except opsgate.OpsgateError as exc:
            console.print(f"  refused  {label}: [red]{exc.code}[/red]")
        else:  # pragma: no cover - the demo fails loudly if the gate ever allows it
            console.print(f"  [bold red]ALLOWED[/bold red] {label}")
            raise SystemExit(1)


def audit(gate: opsgate.Gate, anchor: Path) -> bool:
    section("4. The audit log is hash-chained and signed")
    gate.audit.export_checkpoint(anchor)
    report = gate.audit.verify(opsgate.audit.log.load_anchor(anchor))
    status = "[green]OK[/green]" if report.ok else f"[red]{report.problem}[/red]"
    console.print(
        f"audit verify: {status} - {report.events} events, head seq {report.head_seq}, "
        f"anchored checkpoint at seq {report.head_seq}"
    )
    return report.ok


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="opsgate-demo-") as tmp:
        state_dir = Path(tmp) / "state"
        gate = opsgate.Gate.open(state_dir)
        console.print(f"opsgate state in {state_dir} (SQLite, WAL)")
        agents = identity(gate)
        credentials(gate, agents)
        escalation(gate, agents)
        ok = audit(gate, Path(tmp) / "audit-anchor.json")
        gate.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
