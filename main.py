"""The opsgate quick-start: a supervisor agent and its DevOps sub-agents, end to end.

    pip install -r requirements.txt && python main.py [--clean]

Runs on a fresh temporary state directory (SQLite, no servers). Every step goes
through the same Gate the `opsgate` CLI uses, and the state is kept afterwards
(printed at the end) so the CLI can look at what happened; --clean removes it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import opsgate
import opsgate.audit.log
from opsgate.credentials.handle import CredentialHandle
from opsgate.operations.deploy import LocalDeployExecutor

POLICIES = Path(__file__).parent / "examples" / "policies.yaml"

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
        table.add_row(
            agent.name, agent.did[:32] + "...", str(agent.depth), ", ".join(agent.capabilities)
        )
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
    # The credential holds deploy:production only: staging is outside its scope.
    for capability in ("deploy:production/app-web", "deploy:staging/app-web"):
        decision = gate.authorize(cred.token, capability)
        why = "" if decision.effect != "deny" else f" ({decision.reasons[0]})"
        console.print(f"  authorize {capability:<32} -> [bold]{decision.effect}[/bold]{why}")
    console.print("  (an out-of-scope request is a policy violation: deploy-agent trust -75)")
    return cred


def escalation(gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    section("3. Escalation attempts are refused")
    attempts = [
        (
            "monitoring-agent delegates write:secrets",
            lambda: agents["monitoring-agent"].delegate(
                name="sneaky", capabilities=["write:secrets"]
            ),
        ),
        (
            "monitoring-agent asks for a credential with write:secrets",
            lambda: gate.credential_manager.issue_credential(
                agent_id=agents["monitoring-agent"].did, scope=["write:secrets"]
            ),
        ),
        (
            "supervisor delegates deploy:* (unrestricted)",
            lambda: agents["devops-supervisor"].delegate(name="wild", capabilities=["deploy:*"]),
        ),
        (
            "a 2-hour credential",
            lambda: gate.credential_manager.issue_credential(
                agent_id=agents["deploy-agent"].did, scope=["deploy:staging"], ttl_minutes=120
            ),
        ),
    ]
    for label, attempt in attempts:
        try:
            attempt()
        except opsgate.OpsgateError as exc:
            console.print(f"  refused  {label}: [red]{exc.code}[/red]")
        else:  # pragma: no cover - the demo fails loudly if the gate ever allows it
            console.print(f"  [bold red]ALLOWED[/bold red] {label}")
            raise SystemExit(1)


def policy(gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> CredentialHandle:
    section("4. Policy: production deploys need the SRE team, staging does not")
    handle = agents["deploy-agent"].credential(scope=["deploy:staging", "deploy:production"])
    for capability in ("deploy:staging/app-web", "deploy:production/app-web"):
        d = gate.authorize(handle.token, capability)
        who = f" from {', '.join(d.approvers)}" if d.approvers else ""
        console.print(f"  {capability:<28} -> [bold]{d.effect}[/bold]{who}")
        for reason in d.reasons:
            console.print(f"      because {reason}")
    return handle


def approvals(
    gate: opsgate.Gate,
    agents: dict[str, opsgate.Agent],
    handle: CredentialHandle,
    workdir: Path,
) -> None:
    section("5. Human approval, bound to the exact release")
    artifact = workdir / "artifacts" / "app-web-2.0.tar"
    artifact.write_bytes(b"app-web release 2.0\n")
    console.print(
        f"  the deploy executor is a local stand-in: a deploy copies the artifact (read only "
        f"from {workdir / 'artifacts'}) into "
        f"{workdir / 'deployments'}/<env>/<app>/releases/<version>/ (no servers)",
        markup=False,
    )
    john_token = gate.approvals.add_approver("john@company.com")
    sponsor_token = gate.approvals.add_approver("platform-team@company.com")
    console.print(
        "  approvers registered: john@company.com, platform-team@company.com (tokens hashed)"
    )
    deploy = opsgate.Operation(
        "deploy", "staging/app-web", {"version": "2.0", "artifact": str(artifact)}
    )
    before = agents["deploy-agent"].trust_score
    outcome = gate.execute(handle.token, deploy)
    console.print(f"  staging deploy: {outcome.status} - {outcome.summary}")
    prod = opsgate.Operation(
        "deploy", "production/app-web", {"version": "2.0", "artifact": str(artifact)}
    )
    pending = gate.execute(handle.token, prod)
    assert isinstance(pending, opsgate.PendingApproval)
    console.print(
        f"  production deploy -> approval {pending.approval_id} needed from "
        f"{', '.join(pending.approvers)} (plan digest {pending.digest[:16]}...)"
    )
    try:
        gate.approvals.approve(
            pending.approval_id, approver="platform-team@company.com", token=sponsor_token
        )
    except opsgate.ApprovalError as exc:
        console.print(
            f"  refused: the requester's sponsor approving its own request ([red]{exc.code}[/red])"
        )
    req = gate.approvals.approve(
        pending.approval_id, approver="john@company.com", token=john_token, comment="ship it"
    )
    console.print(f"  john@company.com approves with his approver token -> {req.status}")
    outcome = gate.resume(pending.approval_id, handle.token)
    console.print(f"  resumed: {outcome.status} - {outcome.summary}")
    try:
        gate.resume(pending.approval_id, handle.token)
    except opsgate.ApprovalError as exc:
        console.print(f"  a second run of the same approval is refused ([red]{exc.code}[/red])")
    after = agents["deploy-agent"].trust_score
    console.print(
        f"  deploy-agent trust {before} -> {after} after two successful deploys (+5 each)"
    )


def trust(gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    section("6. Trust moves with behaviour")
    table = Table("agent", "score", "effective", "last change")
    for name in ("devops-supervisor", "deploy-agent", "monitoring-agent"):
        a = agents[name]
        last = gate.trust.history(a.did)[-1]
        table.add_row(
            name,
            str(a.trust_score),
            str(a.effective_trust),
            f"{last.cause} {last.delta:+d}: {last.reason}",
        )
    console.print(table)
    limit = gate.config.trust.approval_below
    junior = agents["devops-supervisor"].delegate(
        name="junior-monitor", capabilities=["read:monitoring"], trust_score=750
    )
    cred = gate.credential_manager.issue_credential(junior.did, ["read:monitoring"])
    for capability in ("read:monitoring/staging", "read:monitoring/production"):
        d = gate.authorize(cred.token, capability)
        console.print(f"  junior-monitor (trust 750) {capability:<28} -> [bold]{d.effect}[/bold]")
    console.print(f"  below {limit}, production work needs approval even where policy allows it")


def audit(gate: opsgate.Gate, anchor: Path) -> bool:
    section("7. The audit log is hash-chained and signed")
    checkpoint = gate.audit.export_checkpoint(anchor)
    report = gate.audit.verify(opsgate.audit.log.load_anchor(anchor))
    status = "[green]OK[/green]" if report.ok else f"[red]{report.problem}[/red]"
    console.print(
        f"audit verify: {status} - {report.events} events, head seq {report.head_seq}, "
        f"anchored by a checkpoint signed at seq {checkpoint.seq} (kept outside the database)"
    )
    return report.ok


APPROVERS = ["sre-team@company.com"]


def keep_config(state_dir: Path) -> None:
    """Write the demo's settings into the state dir, so the CLI sees the same gate."""
    (state_dir / "opsgate.yaml").write_text(
        f"policies: {str(POLICIES.resolve())!r}\ntrust:\n  approvers: {APPROVERS}\n",
        encoding="utf-8",
    )


def look_around(workdir: Path) -> None:
    """Where the demo left its state, and how to inspect it."""
    section("Look around")
    lines = [
        f"everything is kept in {workdir} (python main.py --clean removes it at exit):",
        f"  {workdir / 'state'}  the gate: SQLite database, keys, opsgate.yaml",
        f"  {workdir / 'deployments'}  what the local deploy wrote",
        f"  {workdir / 'audit-anchor.json'}  the signed checkpoint",
        "inspect it with the opsgate command (pip install -e . first):",
        *(f"  {command}" for command in inspect_commands(workdir)),
    ]
    for line in lines:  # whole lines: paths and commands are copied from here
        console.print(line, markup=False, soft_wrap=True)


def inspect_commands(workdir: Path) -> list[str]:
    return [
        f"export OPSGATE_STATE_DIR={workdir / 'state'}",
        "opsgate agents list",
        "opsgate trust history deploy-agent",
        "opsgate approvals list",
        "opsgate audit tail -n 20",
        f"opsgate audit verify --anchor {workdir / 'audit-anchor.json'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The opsgate quick-start demo.")
    parser.add_argument(
        "--clean", action="store_true", help="remove the demo's state directory at exit"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="opsgate-demo-"))
    try:
        state_dir = workdir / "state"
        gate = opsgate.Gate.open(state_dir, policies=POLICIES, trust={"approvers": APPROVERS})
        keep_config(state_dir)
        # The deploy executor reads artifacts only from the roots it is given.
        (workdir / "artifacts").mkdir()
        gate.register_executor(
            "deploy",
            LocalDeployExecutor(workdir / "deployments", artifact_roots=[workdir / "artifacts"]),
        )
        console.print(f"opsgate state in {state_dir} (SQLite, WAL), policies from {POLICIES.name}")
        agents = identity(gate)
        credentials(gate, agents)
        escalation(gate, agents)
        handle = policy(gate, agents)
        approvals(gate, agents, handle, workdir)
        trust(gate, agents)
        ok = audit(gate, workdir / "audit-anchor.json")
        gate.close()
        if not args.clean:
            look_around(workdir)
    finally:
        if args.clean:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
