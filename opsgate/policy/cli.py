"""`opsgate policy validate | test | explain`: the policy author's tools.

Exit codes follow the CLI contract: 0 ok, 1 a refused or failed check (invalid
policies, a failing case), 2 usage (a missing path, a malformed option). Errors
are one line on stderr, never a traceback. `--json` gives machine output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opsgate.config import Limits
from opsgate.environments import Environments
from opsgate.errors import PolicyError, scrub
from opsgate.policy.engine import PolicySet
from opsgate.policy.loader import load_policies
from opsgate.policy.problems import Problem
from opsgate.policy.request import PolicyRequest, canonical_target
from opsgate.policy.testing import CasesReport, run_case_file

app = typer.Typer(
    name="policy",
    help="Validate, test and explain policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: PolicyError codes that mean "you called it wrong", not "the policy is wrong".
_USAGE_CODES = frozenset({"policy_not_found", "policy_request_invalid"})
_EFFECT_STYLE = {"allow": "green", "deny": "bold red", "require_approval": "yellow"}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _out() -> Console:
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal:
        console.width = 100_000  # piped: full rows, never fitted to 80 columns
    return console


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _fail(message: str, exit_code: int, code: str = "usage") -> typer.Exit:
    """One scrubbed line on stderr (`error [code]: message`, as every opsgate command),
    then exit: a usage error echoes what was typed, which may be a pasted token."""
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"error [{code}]: {' '.join(scrub(message, keep_hex=True).split())}", markup=False
    )
    return typer.Exit(exit_code)


def _exit_code(exc: PolicyError) -> int:
    return 2 if exc.code in _USAGE_CODES else 1


def _problems(exc: PolicyError) -> list[Problem]:
    found = exc.detail.get("problems")
    return list(found) if found else []


def _scrubbed(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem as JSON, its text scrubbed as the error's own message is."""
    return {k: scrub(v, long_words=False) if isinstance(v, str) else v for k, v in problem.items()}


def _report_policy_error(exc: PolicyError, as_json: bool) -> typer.Exit:
    problems = _problems(exc)
    code = _exit_code(exc)
    if as_json:
        _print_json(
            {
                "ok": False,
                "error": exc.to_dict(),
                "problems": [_scrubbed(p.to_dict()) for p in problems],
            }
        )
        return typer.Exit(code)
    if not problems:
        return _fail(exc.message, code, exc.code)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    for problem in problems:
        err.print(f"error [{problem.code}]: {scrub(str(problem), long_words=False)}", markup=False)
    err.print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", markup=False)
    return typer.Exit(code)


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or directories.")],
    as_json: JsonOpt = False,
) -> None:
    """Load policies and list every problem (file, policy, rule, column)."""
    try:
        policies = load_policies(paths, Limits())
    except PolicyError as exc:
        raise _report_policy_error(exc, as_json) from None
    summary = {
        "ok": True,
        "files": list(policies.sources),
        "policies": len(policies.policies),
        "rules": len(policies),
        "groups": len(policies.groups),
    }
    if as_json:
        _print_json(summary)
        return
    _out().print(
        f"[green]ok[/green]: {summary['policies']} policies, {summary['rules']} rules, "
        f"{summary['groups']} groups in {len(policies.sources)} file(s)"
    )


def _show_report(report: CasesReport) -> None:
    out = _out()
    table = Table(title=escape(report.source), title_justify="left")
    table.add_column("case")
    table.add_column("expected")
    table.add_column("got")
    table.add_column("result")
    for r in report.results:
        mark = "[green]pass[/green]" if r.passed else "[bold red]FAIL[/bold red]"
        table.add_row(escape(r.name), r.expected, r.got, mark)
    out.print(table)
    for r in report.failures:
        out.print(f"[bold red]FAIL[/bold red] {escape(r.name)}: {escape(r.problem)}")
        for reason in r.decision.reasons:
            out.print(f"    because {escape(reason)}")
        for error in r.decision.errors:
            out.print(f"    error {escape(error)}")


StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="OPSGATE_STATE_DIR",
        help="State directory whose opsgate.yaml declares the environments (and policies).",
    ),
]


def _environments(state_dir: Path | None) -> Environments:
    """The environments the gate of `state_dir` uses (built-in ones without a config)."""
    from opsgate.config import load_config, resolve_state_dir
    from opsgate.errors import ConfigError

    try:
        return Environments.from_config(load_config(resolve_state_dir(state_dir)))
    except ConfigError as exc:
        raise PolicyError(exc.message, code="policy_not_found") from exc


@app.command("test")
def test_cases(
    cases: Annotated[list[Path], typer.Argument(help="Decision-table (cases) YAML files.")],
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run decision tables; exit 1 naming every case whose decision differs."""
    reports: list[CasesReport] = []
    try:
        environments = _environments(state_dir)
        for path in cases:
            reports.append(run_case_file(path, environments=environments))
    except PolicyError as exc:
        raise _report_policy_error(exc, as_json) from None
    ok = all(r.passed for r in reports)
    total = sum(len(r.results) for r in reports)
    failed = sum(len(r.failures) for r in reports)
    if as_json:
        _print_json(
            {"ok": ok, "total": total, "failed": failed, "files": [r.to_dict() for r in reports]}
        )
    else:
        for report in reports:
            _show_report(report)
        style = "green" if ok else "bold red"
        _out().print(f"[{style}]{total - failed} passed, {failed} failed[/{style}]")
    if not ok:
        raise typer.Exit(1)


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _fail(f"--param expects key=value, got {item!r}", 2)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@app.command()
def explain(
    action: Annotated[str, typer.Option(help="Operation action, e.g. deploy.")],
    resource: Annotated[str, typer.Option(help="Resource, e.g. production/app-web.")],
    policies_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--policies",
            help="Policy file or directory (default: `policies` in the state dir's opsgate.yaml).",
        ),
    ] = None,
    state_dir: StateDirOpt = None,
    environment: Annotated[
        str | None,
        typer.Option(
            help="Target environment (default: read from the resource, as the gate does)."
        ),
    ] = None,
    destructive: Annotated[
        bool, typer.Option("--destructive", help="The operation is destructive.")
    ] = False,
    agent_name: Annotated[str, typer.Option("--agent-name")] = "",
    agent_did: Annotated[str, typer.Option("--agent-did")] = "",
    sponsor: Annotated[str, typer.Option("--sponsor")] = "",
    trust_score: Annotated[int, typer.Option("--trust-score", help="Agent trust, 0-1000.")] = 0,
    depth: Annotated[int, typer.Option("--depth", help="Delegation depth.")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="key=value (value parsed as JSON when it can be)."),
    ] = None,
    hour: Annotated[int | None, typer.Option(help="Hour 0-23 (default: now, UTC).")] = None,
    weekday: Annotated[int | None, typer.Option(help="0=Monday..6 (default: now, UTC).")] = None,
    minute: Annotated[int | None, typer.Option(help="Minute 0-59 (default: now, UTC).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide one request and show which rules matched and why."""
    now = datetime.now(UTC)
    params = _parse_params(param or [])
    _check_capability(action, resource, as_json)
    try:
        sources: Any = policies_path or _configured_policies(state_dir)
        environments = _environments(state_dir)
        policies = load_policies(
            sources, Limits(), aliases=environments.aliases, environments=environments
        )
        # As the gate sees it: one case, aliases resolved, the environment derived.
        canonical, derived, undeclared = canonical_target(action, resource, environments)
        if environment is None:
            environment = derived
        else:
            environment = environments.canonical_name(environment) or environment
        request = PolicyRequest(
            action=action,
            resource=canonical,
            environment=environment,
            destructive=destructive,
            agent_name=agent_name,
            agent_did=agent_did,
            agent_sponsor=sponsor,
            agent_trust_score=trust_score,
            agent_depth=depth,
            params=params,
            hour=now.hour if hour is None else hour,
            weekday=now.weekday() if weekday is None else weekday,
            minute=now.minute if minute is None else minute,
        )
    except PolicyError as exc:
        raise _report_policy_error(exc, as_json) from None
    decision = policies.decide(request)
    note = (
        None
        if undeclared is None
        else f"the gate refuses this request before policy: environment {undeclared!r} "
        "is not declared (environment_undeclared)"
    )
    if as_json:
        _print_json({"request": request.to_dict(), "decision": decision.to_dict(), "note": note})
        return
    _show_decision(policies, request, decision)
    if note is not None:
        _out().print(f"[yellow]note[/yellow]: {escape(note)}")


def _check_capability(action: str, resource: str, as_json: bool) -> None:
    """A request the gate would refuse as malformed before any policy runs is not
    explained as if policy decided it: usage error (exit 2) with the gate's code."""
    from opsgate import capabilities as caps
    from opsgate.errors import CapabilityError

    try:
        caps.parse_request(f"{action}:{resource}")
    except CapabilityError as exc:
        if as_json:
            _print_json({"ok": False, "error": exc.to_dict()})
            raise typer.Exit(2) from None
        raise _fail(exc.message, 2, exc.code) from None


def _configured_policies(state_dir: Path | None) -> str:
    """The policy path from the state dir's opsgate.yaml, as Gate.open would use it."""
    from opsgate.config import load_config, resolve_state_dir
    from opsgate.errors import ConfigError

    try:
        configured = load_config(resolve_state_dir(state_dir)).policies
    except ConfigError as exc:
        raise PolicyError(exc.message, code="policy_not_found") from exc
    if not configured:
        raise PolicyError(
            "no policies: pass --policies or set 'policies' in the state dir's opsgate.yaml",
            code="policy_not_found",
        )
    return configured


def _show_decision(policies: PolicySet, request: PolicyRequest, decision: Any) -> None:
    out = _out()
    style = _EFFECT_STYLE.get(decision.effect, "bold")
    out.print(f"decision: [{style}]{decision.effect}[/{style}]")
    out.print(
        f"request: {escape(request.capability)} env={escape(str(request.environment))} "
        f"destructive={request.destructive} trust={request.agent_trust_score} "
        f"depth={request.agent_depth} "
        f"time={request.weekday}/{request.hour:02d}:{request.minute:02d}"
    )
    evaluated = len(policies.rules_for(request.action))
    out.print(f"rules evaluated for {escape(repr(request.action))}: {evaluated} of {len(policies)}")
    for reason in decision.reasons:
        out.print(f"  because {escape(reason)}")
    for error in decision.errors:
        out.print(f"  [red]error[/red] {escape(error)}")
    for req in decision.requirements:
        line = (
            f"  approval: {req.min_approvals} of [{', '.join(req.approvers)}] "
            f"within {req.expires_in_seconds}s ({req.policy} rule {req.rule})"
        )
        out.print(line, markup=False)


__all__ = ["app"]
