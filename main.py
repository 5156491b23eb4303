"""The opsgate quick-start: a supervisor agent and its DevOps sub-agents, end to end.

    pip install -r requirements.txt && python main.py [--json] [--state-dir DIR] [--clean]

Runs on a fresh temporary state directory (SQLite, no servers, offline). Every step
goes through the same Gate the `opsgate` CLI uses: the sub-agents of `opsgate.agents`
write and rotate a secret, migrate a database, deploy a release step by step with a
human approval, watch its health, and are refused what they may not do. The state is
kept afterwards (printed at the end) so the CLI can look at what happened; --clean
removes it. --json prints the same story as one JSON document of structured events.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import opsgate
import opsgate.audit.log
from opsgate.agents import StepEvent, StepLog, Supervisor
from opsgate.credentials.handle import CredentialHandle
from opsgate.operations.migrate import MigrationExecutor
from opsgate.secrets.value import SecretValue

POLICIES = Path(__file__).parent / "examples" / "policies.yaml"
APPROVERS = ["sre-team@company.com"]
# The health probe the operator configured for `app`: the release it checks must say ok.
HEALTH_PROBE = (
    "import os, pathlib, sys; "
    "status = pathlib.Path(os.environ['OPSGATE_RELEASE_DIR'], 'status'); "
    "sys.exit(status.read_text().strip() != 'ok')"
)

console = Console(highlight=False, emoji=False)


class Story:
    """What the demo says: printed as it happens, or kept as structured events (--json)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.events: list[dict[str, Any]] = []
        self.section_title = ""

    def _keep(self, kind: str, **fields: Any) -> None:
        self.events.append({"section": self.section_title, "kind": kind, **fields})

    def section(self, title: str) -> None:
        self.section_title = title
        self._keep("section", text=title)
        if not self.as_json:
            console.rule(f"[bold]{title}")

    def say(self, text: str, *, markup: bool = True, **data: Any) -> None:
        plain = Text.from_markup(text, emoji=False).plain if markup else text
        self._keep("line", text=plain, **({"data": data} if data else {}))
        if not self.as_json:
            console.print(text, markup=markup, soft_wrap=True)  # whole lines, never cut

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        self._keep("table", columns=columns, rows=rows)
        if not self.as_json:
            table = Table(*columns)
            for row in rows:
                table.add_row(*row)
            console.print(table)

    def step(self, event: StepEvent) -> None:
        """An agent's step, as it happens."""
        self._keep("step", **event.to_dict())
        if self.as_json:
            return
        colour = {
            "refused": "red",
            "failed": "red",
            "denied": "red",
            "timeout": "yellow",
            "waiting": "yellow",
            "requested": "yellow",
        }.get(event.status, "green")
        mark = "x" if colour == "red" else ("…" if colour == "yellow" else "✓")
        console.print(
            f"  [{colour}]{mark}[/{colour}] [dim]{event.agent}[/dim] {event.step}: ",
            Text(event.message),
            sep="",
            soft_wrap=True,
        )


def identity(story: Story, gate: opsgate.Gate) -> dict[str, opsgate.Agent]:
    story.section("1. Identity: a supervisor and four narrowly delegated sub-agents")
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
    story.say(f"supervisor [bold]{supervisor.name}[/bold]")
    story.say(f"  did         {supervisor.did}", did=supervisor.did)
    story.say(f"  trust score {supervisor.trust_score}")
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
    story.table(
        ["sub-agent", "did", "depth", "capabilities"],
        [
            [a.name, a.did[:32] + "...", str(a.depth), ", ".join(a.capabilities)]
            for a in agents.values()
        ],
    )
    agents["devops-supervisor"] = supervisor
    return agents


def credentials(story: Story, gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    story.section("2. A short-lived credential, verifiable by anyone with the JWKS")
    cred = gate.credential_manager.issue_credential(
        agent_id=agents["deploy-agent"].did, scope=["deploy:production"], ttl_minutes=15
    )
    ttl = int(cred.ttl_seconds // 60)
    story.say(f"issued {cred.jti} to deploy-agent, scope {cred.scope}, TTL {ttl} minutes")
    story.say(f"  expires {cred.expires_at.isoformat()}")
    claims = gate.credential_manager.verify(cred.token)
    story.say(f"  verified: sub={claims.sub[:24]}... bound to key {claims.jkt[:12]}...")
    # The credential holds deploy:production only: staging is outside its scope.
    for capability in ("deploy:production/app-web", "deploy:staging/app-web"):
        decision = gate.authorize(cred.token, capability)
        why = "" if decision.effect != "deny" else f" ({decision.reasons[0]})"
        story.say(f"  authorize {capability:<32} -> [bold]{decision.effect}[/bold]{why}")
    story.say("  (an out-of-scope request is a policy violation: deploy-agent trust -75)")


def escalation(story: Story, gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    story.section("3. Escalation attempts are refused")
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
            story.say(f"  refused  {label}: [red]{exc.code}[/red]", code=exc.code)
        else:  # pragma: no cover - the demo fails loudly if the gate ever allows it
            story.say(f"  [bold red]ALLOWED[/bold red] {label}")
            raise SystemExit(1)


def policy(story: Story, gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> CredentialHandle:
    story.section("4. Policy: production deploys need the SRE team, staging does not")
    handle = agents["deploy-agent"].credential(scope=["deploy:staging", "deploy:production"])
    for capability in ("deploy:staging/app-web", "deploy:production/app-web"):
        d = gate.authorize(handle.token, capability)
        who = f" from {', '.join(d.approvers)}" if d.approvers else ""
        story.say(f"  {capability:<28} -> [bold]{d.effect}[/bold]{who}", effect=d.effect)
        for reason in d.reasons:
            story.say(f"      because {reason}")
    return handle


def approvals(
    story: Story,
    gate: opsgate.Gate,
    agents: dict[str, opsgate.Agent],
    handle: CredentialHandle,
    workdir: Path,
    tokens: dict[str, str],
) -> None:
    story.section("5. Human approval, bound to the exact release")
    artifact = workdir / "artifacts" / "app-web-2.0.tar"
    artifact.write_bytes(b"app-web release 2.0\n")
    story.say(
        f"  the deploy executor is a local stand-in: a deploy copies the artifact (read only "
        f"from {workdir / 'artifacts'}) into "
        f"{workdir / 'deployments'}/<env>/<app>/releases/<version>/ (no servers)",
        markup=False,
    )
    story.say(
        "  approvers registered: john@company.com, dana@company.com, platform-team@company.com "
        "(tokens hashed)"
    )
    deploy = opsgate.Operation(
        "deploy", "staging/app-web", {"version": "2.0", "artifact": str(artifact)}
    )
    before = agents["deploy-agent"].trust_score
    outcome = gate.execute(handle.token, deploy)
    story.say(f"  staging deploy: {outcome.status} - {outcome.summary}")
    prod = opsgate.Operation(
        "deploy", "production/app-web", {"version": "2.0", "artifact": str(artifact)}
    )
    pending = gate.execute(handle.token, prod)
    assert isinstance(pending, opsgate.PendingApproval)
    story.say(
        f"  production deploy -> approval {pending.approval_id} needed from "
        f"{', '.join(pending.approvers)} (plan digest {pending.digest[:16]}...)"
    )
    try:
        gate.approvals.approve(
            pending.approval_id,
            approver="platform-team@company.com",
            token=tokens["platform-team@company.com"],
        )
    except opsgate.ApprovalError as exc:
        story.say(
            f"  refused: the requester's sponsor approving its own request ([red]{exc.code}[/red])"
        )
    req = gate.approvals.approve(
        pending.approval_id,
        approver="john@company.com",
        token=tokens["john@company.com"],
        comment="ship it",
    )
    story.say(f"  john@company.com approves with his approver token -> {req.status}")
    outcome = gate.resume(pending.approval_id, handle.token)
    story.say(f"  resumed: {outcome.status} - {outcome.summary}")
    try:
        gate.resume(pending.approval_id, handle.token)
    except opsgate.ApprovalError as exc:
        story.say(f"  a second run of the same approval is refused ([red]{exc.code}[/red])")
    after = agents["deploy-agent"].trust_score
    story.say(f"  deploy-agent trust {before} -> {after} after two successful deploys (+5 each)")


def secrets(story: Story, team: Supervisor) -> None:
    story.section("6. Secrets: the secret-manager writes and rotates the database password")
    story.say(
        "  embedded backend: AES-256-GCM, key in the state dir; a value is never printed, "
        "logged or audited"
    )
    # The first value comes from the operator's side; the rotation draws a fresh one.
    result = team.secrets.rotate_password(
        "staging/app/database-password", SecretValue("initial-" + "x" * 24)
    )
    r = result.result
    story.say(
        f"  {r.get('path')}: written as version {r.get('written_version')}, "
        f"rotated to version {r.get('version')} (value not shown)",
        **r,
    )


def migrations(story: Story, team: Supervisor) -> None:
    story.section("7. Migrations: the safe one runs, the destructive one waits for the DBAs")
    result = team.database.migrate("orders", wait=0.2)
    story.say(
        f"  task {result.status}: V1 applied; V2 waits for dba-team@company.com "
        f"(approval {result.approval_id})",
        status=result.status,
        approval_id=result.approval_id,
    )


def deployment_task(
    story: Story, gate: opsgate.Gate, team: Supervisor, tokens: dict[str, str]
) -> None:
    task = "Deploy app-v2.0 to production"
    story.section(f"8. Deployment Task: {task}")
    story.say(f"  plan: {' -> '.join(team.plan(task).steps)}")

    def john_approves(approval_id: str) -> None:
        # The demo's stand-in for a human: john's own approver token, the real approval API.
        gate.approvals.approve(
            approval_id, approver="john@company.com", token=tokens["john@company.com"]
        )
        story.say(
            "  (john@company.com approves: the demo's stand-in approver, acting through the "
            "approval API with his own approver token)"
        )

    result = team.run(task, on_waiting=john_approves, wait=10)
    story.say(f"  task {result.status}", status=result.status)


def monitoring(story: Story, team: Supervisor, artifact: Path) -> None:
    story.section("9. Monitoring: the monitoring-agent reads, and can do nothing else")
    health = team.run("Check health of app in staging")
    h = health.result.get("health", {})
    story.say(
        f"  app in staging: {health.result.get('current')} live, health {h.get('status')}",
        health=h.get("status"),
    )
    story.say(
        f"  (after its escalation attempts in section 3 the monitoring-agent's trust is "
        f"{team_trust(team)}: below 800, reading production would need an SRE's approval)"
    )
    team.run("Show gate status")
    op = opsgate.Operation(
        "deploy", "production/app", {"version": "6.6", "artifact": str(artifact)}
    )
    refused = team.monitoring.attempt("monitoring-agent tries to deploy", "deploy", op)
    story.say(f"  monitoring-agent tries to deploy -> {refused.status} (trust -75)")


def team_trust(team: Supervisor) -> int | str:
    gate = team.monitoring.gate
    if isinstance(gate, opsgate.Gate):
        return gate.trust_score(gate.agents.resolve("monitoring-agent"))
    return "lower"


def rollback(story: Story, team: Supervisor) -> None:
    story.section("10. A failed health check rolls the release back")
    result = team.run("Deploy app-v2.1 to staging")
    story.say(f"  task {result.status}: staging still runs the release that was live before")


def trust(story: Story, gate: opsgate.Gate, agents: dict[str, opsgate.Agent]) -> None:
    story.section("11. Trust moves with behaviour")
    rows = []
    for name in ("devops-supervisor", "deploy-agent", "secret-manager", "monitoring-agent"):
        a = agents[name]
        last = gate.trust.history(a.did)[-1]
        rows.append(
            [
                name,
                str(a.trust_score),
                str(a.effective_trust),
                f"{last.cause} {last.delta:+d}: {last.reason}",
            ]
        )
    story.table(["agent", "score", "effective", "last change"], rows)
    limit = gate.config.trust.approval_below
    junior = agents["devops-supervisor"].delegate(
        name="junior-monitor", capabilities=["read:monitoring"], trust_score=750
    )
    cred = gate.credential_manager.issue_credential(junior.did, ["read:monitoring"])
    for capability in ("read:monitoring/staging", "read:monitoring/production"):
        d = gate.authorize(cred.token, capability)
        story.say(f"  junior-monitor (trust 750) {capability:<28} -> [bold]{d.effect}[/bold]")
    story.say(f"  below {limit}, production work needs approval even where policy allows it")


def audit(story: Story, gate: opsgate.Gate, anchor: Path) -> bool:
    story.section("12. The audit log is hash-chained and signed")
    checkpoint = gate.audit.export_checkpoint(anchor)
    report = gate.audit.verify(opsgate.audit.log.load_anchor(anchor))
    status = "[green]OK[/green]" if report.ok else f"[red]{report.problem}[/red]"
    story.say(
        f"audit verify: {status} ({report.events} events), head seq {report.head_seq}, "
        f"anchored by a checkpoint signed at seq {checkpoint.seq} (kept outside the database)",
        ok=report.ok,
        events=report.events,
    )
    return report.ok


def write_world(workdir: Path, state_dir: Path) -> None:
    """The demo's files: artifacts, migrations, and the gate's config (so the CLI sees the
    same gate): policies, approvers, the local deploy root with its health probe, the
    migration target."""
    artifacts = workdir / "artifacts"
    artifacts.mkdir()
    for version, status in (("2.0", "ok"), ("2.1", "broken")):
        release = artifacts / f"app-{version}"
        release.mkdir()
        (release / "app.py").write_text(f"VERSION = {version!r}\n")
        (release / "status").write_text(f"{status}\n")
    migrations_dir = workdir / "migrations" / "orders"
    migrations_dir.mkdir(parents=True)
    (migrations_dir / "V1__create_orders.sql").write_text(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
        "total_cents INTEGER NOT NULL);\nCREATE TABLE legacy_orders (id INTEGER PRIMARY KEY);\n"
    )
    (migrations_dir / "V2__drop_legacy_orders.sql").write_text("DROP TABLE legacy_orders;\n")
    probe = {
        "command": [sys.executable, "-c", HEALTH_PROBE],
        "interval_seconds": 0.05,
        "timeout_seconds": 5,
        "failure_threshold": 1,
        "deadline_seconds": 10,
    }
    config = {
        "policies": str(POLICIES.resolve()),
        "trust": {"approvers": APPROVERS},
        "deploy": {
            "root": str(workdir / "deployments"),
            "artifact_roots": [str(artifacts)],
            "apps": {"app": {"health": {"staging": probe, "production": probe}}},
        },
        "databases": {
            "orders": {
                "url": f"sqlite:///{workdir / 'orders.db'}",
                "migrations": str(migrations_dir),
            }
        },
    }
    state_dir.mkdir(parents=True, mode=0o700)
    (state_dir / "opsgate.yaml").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def look_around(workdir: Path, state_dir: Path) -> None:
    """Where the demo left its state, and how to inspect it."""
    console.rule("[bold]Look around")
    # With --state-dir the gate is beside the demo's directory, not in it.
    where = workdir if state_dir.is_relative_to(workdir) else f"{state_dir} and {workdir}"
    lines = [
        f"everything is kept in {where} (python main.py --clean removes it at exit):",
        f"  {state_dir}  the gate: SQLite database, keys, opsgate.yaml",
        f"  {workdir / 'deployments'}  what the local deploy wrote",
        f"  {workdir / 'audit-anchor.json'}  the signed checkpoint",
        "inspect it with the opsgate command (pip install -e . first):",
        *(f"  {command}" for command in inspect_commands(workdir, state_dir)),
    ]
    for line in lines:  # whole lines: paths and commands are copied from here
        console.print(line, markup=False, soft_wrap=True)


def inspect_commands(workdir: Path, state_dir: Path) -> list[str]:
    return [
        f"export OPSGATE_STATE_DIR={state_dir}",
        "opsgate agents list",
        "opsgate trust history deploy-agent",
        "opsgate approvals list",
        "opsgate audit tail -n 20",
        f"opsgate audit verify --anchor {workdir / 'audit-anchor.json'}",
    ]


def run(story: Story, workdir: Path, state_dir: Path) -> bool:
    write_world(workdir, state_dir)
    gate = opsgate.Gate.open(state_dir)  # its opsgate.yaml: policies, deploy, databases
    try:
        gate.register_executor("migrate", MigrationExecutor(gate.config, state_dir=gate.state_dir))
        if not story.as_json:
            console.print(
                f"opsgate state in {state_dir} (SQLite, WAL), policies from {POLICIES.name}",
                markup=False,
                soft_wrap=True,
            )
        agents = identity(story, gate)
        credentials(story, gate, agents)
        escalation(story, gate, agents)
        handle = policy(story, gate, agents)
        tokens = {
            who: gate.approvals.add_approver(who)
            for who in ("john@company.com", "dana@company.com", "platform-team@company.com")
        }
        approvals(story, gate, agents, handle, workdir, tokens)
        team = Supervisor.in_process(
            gate,
            agents,
            artifact_for=lambda app, version: str(workdir / "artifacts" / f"{app}-{version}"),
            approval_timeout=10,
            log=StepLog([story.step]),
        )
        secrets(story, team)
        migrations(story, team)
        deployment_task(story, gate, team, tokens)
        monitoring(story, team, workdir / "artifacts" / "app-2.0")
        rollback(story, team)
        trust(story, gate, agents)
        return audit(story, gate, workdir / "audit-anchor.json")
    finally:
        gate.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The opsgate quick-start demo.")
    parser.add_argument(
        "--clean", action="store_true", help="remove the demo's state directory at exit"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the story as one JSON document of events"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the gate's state directory (new or empty); the demo's other files go beside it",
    )
    args = parser.parse_args(argv)
    if args.state_dir is not None:
        state_dir = args.state_dir.expanduser().resolve()
        workdir = state_dir.parent / f"{state_dir.name}-demo"
        # Both must be new or empty: the demo writes into them, and --clean removes them.
        for path, what in ((state_dir, "--state-dir"), (workdir, "its demo dir")):
            if path.exists() and not path.is_dir():
                print(f"main.py: {what} {path} is not a directory", file=sys.stderr)
                return 2
            if path.exists() and any(path.iterdir()):
                print(f"main.py: {what} {path} is not empty", file=sys.stderr)
                return 2
        if state_dir.exists():
            state_dir.rmdir()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="opsgate-demo-"))
        state_dir = workdir / "state"
    story = Story(args.json)
    try:
        ok = run(story, workdir, state_dir)
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": ok,
                        "state_dir": None if args.clean else str(state_dir),
                        "events": story.events,
                    },
                    indent=1,
                )
            )
        elif not args.clean:
            look_around(workdir, state_dir)
    finally:
        if args.clean:
            shutil.rmtree(workdir, ignore_errors=True)
            if args.state_dir is not None:
                shutil.rmtree(state_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
