"""`opsgate deploy|rollback|migrate|secrets|status`: the DevOps work, done as an agent.

Each operation command opens the gate, issues the agent it acts as (`--as`, default
`cli.agent` in opsgate.yaml) a short-lived credential scoped to exactly that operation,
and runs it through `Gate.execute`, so policy, approval, audit and trust apply as they
do to any agent. Exit codes: 0 done, 1 refused or failed, 2 usage, 3 approval pending
(the approval id alone on stdout). `--wait` blocks until the approval is decided and
then runs the approved request; `--approval ID` runs one approved earlier.

A secret value is printed only by `secrets get --reveal`, and `secrets put` reads it
from stdin or a hidden prompt: a value on the command line would stay in the shell's
history and in the process list.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from opsgate.cli_common import (
    JsonOut,
    StateDir,
    app,
    console,
    format_time,
    handle_errors,
    new_table,
    one_of,
    open_gate,
    operator_actor,
    print_error,
    print_json,
)
from opsgate.errors import CredentialError, MigrationError, OpsgateError, safe_text, shown
from opsgate.secrets.executor import CHARSETS

#: Exit code of a command whose operation waits for a human approval.
EXIT_PENDING = 3

migrate_app = typer.Typer(
    help="Database migrations on configured targets, as an agent.", no_args_is_help=True
)
secrets_app = typer.Typer(help="Secrets through the gate, as an agent.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
app.add_typer(secrets_app, name="secrets")

AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        envvar="OPSGATE_AGENT",
        help="The agent to act as (default: cli.agent in opsgate.yaml).",
        show_default=False,
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait", help="If approval is needed, block until it is decided, then run."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.0,
        max=86_400.0,
        help="Seconds --wait blocks (default: cli.wait_timeout_seconds, 900).",
        show_default=False,
    ),
]
ApprovalOpt = Annotated[
    str | None,
    typer.Option("--approval", help="Run the request approved under this id.", show_default=False),
]
MessageOpt = Annotated[
    str | None, typer.Option(help="Why (shown with the deploy lock and in the history).")
]


def _usage(message: str) -> typer.Exit:
    print_error(f"error [usage]: {message}")
    return typer.Exit(2)


@dataclass
class _Act:
    """One agent, its credential for one operation, and the gate it is used with."""

    gate: Any
    agent: Any
    credential: Any
    scope: list[str]

    def renew(self) -> None:
        """A fresh credential after a wait (the first may have expired meanwhile)."""
        self.credential = _issue(self.gate, self.agent, self.scope)

    def call(self, op: Any, approval_id: str | None) -> Any:
        """`Gate.execute` with the agent's credential (and, where the gate requires
        one, a proof of possession signed with the agent's own key for this request)."""
        proof = None
        if self.gate.config.require_proof:
            from opsgate.credentials.proof import ProofRequest, make_proof

            key = self.gate.agents.private_key(self.agent.did)
            request = ProofRequest.execute(op, approval_id)
            proof = make_proof(key, self.credential.token, request, time.time())
        return self.gate.execute(self.credential.token, op, proof=proof, approval_id=approval_id)


def _actor(
    state_dir: str | None,
    as_: str | None,
    scope: list[str],
    json_out: bool = False,
    configured: str = "cli.agent",
) -> _Act:
    """The gate, the agent, and a credential of the agent's own for exactly `scope`.

    Issuing it is the operator's act (audited as `operator:<login>`): a scope beyond the
    agent's grants is refused and charges no agent. The operation itself is the agent's.
    A refusal here is printed as JSON under `--json`, as one from `Gate.execute` is.
    """
    try:
        if as_ is not None and not as_.strip():
            # An empty --as (an unset $AGENT in "--as $AGENT") is a mistake, never a
            # quiet fall-back to the configured default agent.
            raise _usage("--as names no agent (empty); name the agent to act as")
        gate = open_gate(state_dir)
        ref = as_ or gate.config.cli.agent
        if not ref:
            raise _usage(f"name the agent to act as: --as AGENT (or {configured} in opsgate.yaml)")
        agent = gate.agents.get(ref)
        try:
            credential = _issue(gate, agent, scope)
        except CredentialError as exc:
            if exc.code != "scope_not_covered":
                raise
            # The agent may be a default the reader never typed: name it.
            raise CredentialError(
                f"{exc.message}, acting as {shown(agent.name)} (choose another with --as)",
                code="scope_not_covered",
            ) from exc
        return _Act(gate, agent, credential, scope)
    except OpsgateError as exc:
        if json_out:
            print_json(
                {
                    "status": "refused",
                    "capability": safe_text(scope[0]),
                    "code": exc.code,
                    "message": exc.message,
                }
            )
        raise


def _issue(gate: Any, agent: Any, scope: list[str]) -> Any:
    return gate.credential_manager.issue_credential(
        agent.did,
        scope=scope,
        ttl_minutes=gate.config.cli.credential_ttl_minutes,
        requested_by=operator_actor(),
    )


def _pending_data(act: _Act, pending: Any, capability: str) -> dict[str, Any]:
    return {
        "status": "pending",
        "approval_id": pending.approval_id,
        "capability": capability,
        "agent": act.agent.name,
        "approvers": list(pending.approvers),
        "min_approvals": pending.min_approvals,
        "expires_at": pending.expires_at.isoformat(),
        "reasons": list(pending.reasons),
    }


def _pending_exit(act: _Act, pending: Any, capability: str, json_out: bool, note: str) -> None:
    data = _pending_data(act, pending, capability)
    if json_out:
        print_json(data)
    else:
        typer.echo(pending.approval_id)  # alone on stdout, so it can be captured
        print_error(
            f"approval pending{note}: {capability} as {act.agent.name} needs "
            f"{pending.min_approvals} of {', '.join(pending.approvers)} (expires "
            f"{data['expires_at']}); run it after approval with --approval "
            f"{pending.approval_id}, or --wait"
        )
    raise typer.Exit(EXIT_PENDING)


def _first_call(act: _Act, op: Any, approval: str | None) -> Any:
    """The first execute; `--approval` of a request nobody decided yet is pending (exit 3,
    or `--wait` for it), not a failure."""
    from opsgate.approvals import PendingApproval

    try:
        return act.call(op, approval)
    except OpsgateError as exc:
        if approval is None or exc.code != "approval_pending":
            raise
        return PendingApproval(approval, act.gate.approvals.get(approval))


def _failure_code(outcome: Any) -> str:
    code = outcome.detail.get("code") if isinstance(outcome.detail, dict) else None
    if isinstance(code, str) and code:
        return safe_text(code)
    return f"{outcome.failure_kind or 'operation'}_failed"


def _perform(
    act: _Act,
    op: Any,
    *,
    approval: str | None,
    wait: bool,
    timeout: float | None,
    json_out: bool,
) -> Any:
    """Execute `op`; pending -> exit 3 (or wait and run the approved request);
    refused -> exit 1 with its code; returns the Outcome of a run that did not fail
    (a failed one is exit 1 with its summary)."""
    from opsgate.approvals import PendingApproval

    if timeout is not None and not wait:
        raise _usage("--timeout is how long --wait blocks: give --wait too; nothing was done")
    try:
        result = _first_call(act, op, approval)
        if isinstance(result, PendingApproval):
            if not wait:
                _pending_exit(act, result, op.capability, json_out, "")
            limit = act.gate.config.cli.wait_timeout_seconds if timeout is None else timeout
            print_error(
                f"waiting up to {limit:g} s for approval {result.approval_id} (Ctrl-C stops "
                "waiting; the request stays pending)"
            )
            try:
                decided = act.gate.approvals.wait(result.approval_id, timeout=limit)
            except KeyboardInterrupt:
                # Stopped by the operator: the request is still there, and its id is what
                # they need to run it later (exit 3, as when nobody decided in time).
                _pending_exit(act, result, op.capability, json_out, " (stopped waiting)")
            if decided.status == "pending":
                _pending_exit(act, result, op.capability, json_out, f" after {limit:g} s")
            # The gate judges the decision: approved runs, anything else is its refusal.
            act.renew()
            result = act.call(op, result.approval_id)
            if isinstance(result, PendingApproval):
                _pending_exit(act, result, op.capability, json_out, "")
    except OpsgateError as exc:
        if json_out:
            print_json(
                {
                    "status": "refused",
                    "capability": safe_text(op.capability),
                    "code": exc.code,
                    "message": exc.message,
                }
            )
        raise
    if result.status == "failed":
        code = _failure_code(result)
        if json_out:
            print_json(
                {
                    "status": "failed",
                    "capability": op.capability,
                    "agent": act.agent.name,
                    "code": code,
                    "summary": result.summary,
                    "audit_seq": result.audit_seq,
                    "detail": _plain(result.detail),
                }
            )
        print_error(f"error [{code}]: {result.summary}")
        raise typer.Exit(1)
    return result


def _plain(detail: Any) -> Any:
    """Detail as JSON values; a SecretValue would show only its mask, but none is shown."""
    return json.loads(json.dumps(detail, default=str))


def _done(act: _Act, op: Any, outcome: Any, json_out: bool, extra: dict[str, Any]) -> None:
    if json_out:
        print_json(
            {
                "status": outcome.status,
                "capability": op.capability,
                "agent": act.agent.name,
                "summary": outcome.summary,
                "audit_seq": outcome.audit_seq,
                **extra,
            }
        )
    else:
        console().print(outcome.summary, markup=False)


# -- deploy and rollback ---------------------------------------------------------------------


@contextlib.contextmanager
def _progress(act: _Act, json_out: bool) -> Iterator[None]:
    """A Rich display of the deploy's copy and health checks, on a terminal only."""
    console = Console(stderr=True, highlight=False, emoji=False)
    if json_out or not console.is_terminal:
        yield
        return
    from opsgate.operations.deploy import RichProgress

    deployer = act.gate.registered_executor("deploy")
    if deployer is None or not hasattr(deployer, "progress"):  # execute says what is wrong
        yield
        return
    with RichProgress(console) as show:
        deployer.progress = show
        try:
            yield
        finally:
            deployer.progress = None


def _deploy_detail(outcome: Any) -> dict[str, Any]:
    return {"detail": _plain(outcome.detail)}


@app.command("deploy")
@handle_errors
def deploy(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app to deploy.")],
    version: Annotated[str, typer.Argument(help="The release's version (a plain name).")],
    env: Annotated[str, typer.Option("--env", help="The environment (staging, production...).")],
    artifact: Annotated[
        str | None,
        typer.Option(help="The artifact (a file or directory under an artifact root)."),
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            help="A secret path handed to a command backend's child; repeat for each.",
        ),
    ] = None,
    message: MessageOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Deploy VERSION of APP to --env as an agent (health-checked; rolled back on failure)."""
    from opsgate.operations.base import Operation

    resource = f"{env}/{app_name}"
    params: dict[str, Any] = {"version": version}
    if artifact is not None:
        # Absolute, not resolved: a link stays a link, for the executor to refuse.
        params["artifact"] = os.path.abspath(artifact)
    secrets = list(secret or [])
    if secrets:
        params["secrets"] = secrets
    if message is not None:
        params["message"] = message
    op = Operation("deploy", resource, params, dry_run=dry_run)
    act = _actor(state_dir, as_, [op.capability, *(f"read:secrets/{s}" for s in secrets)], json_out)
    with _progress(act, json_out or dry_run):
        outcome = _perform(
            act, op, approval=approval, wait=wait, timeout=timeout, json_out=json_out
        )
    _show_run(act, op, outcome, json_out)


def _show_run(act: _Act, op: Any, outcome: Any, json_out: bool) -> None:
    if outcome.status == "dry_run":
        _show_plan(act, op, outcome, json_out)
        return
    _done(act, op, outcome, json_out, _deploy_detail(outcome))


@app.command("rollback")
@handle_errors
def rollback(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app to roll back.")],
    env: Annotated[str, typer.Option("--env", help="The environment.")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="A kept release (default: the one live before the current)."),
    ] = None,
    message: MessageOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Roll APP in --env back to the previous (or --to) release, as an agent."""
    from opsgate.operations.base import Operation

    resource = f"{env}/{app_name}"
    params: dict[str, Any] = {}
    if to is not None:
        params["to"] = to
    if message is not None:
        params["message"] = message
    op = Operation("rollback", resource, params, dry_run=dry_run)
    act = _actor(state_dir, as_, [op.capability], json_out)
    with _progress(act, json_out or dry_run):
        outcome = _perform(
            act, op, approval=approval, wait=wait, timeout=timeout, json_out=json_out
        )
    _show_run(act, op, outcome, json_out)


# -- migrations -------------------------------------------------------------------------------


def _show_plan(act: _Act, op: Any, outcome: Any, json_out: bool) -> None:
    plan, decision = outcome.detail["plan"], outcome.detail["decision"]
    if json_out:
        print_json(
            {
                "status": "dry_run",
                "capability": op.capability,
                "agent": act.agent.name,
                "plan": _plain(plan),
                "decision": _plain(decision),
            }
        )
        return
    out = console()
    out.print(plan["summary"], markup=False)
    for step in plan["steps"]:
        out.print(f"  {step}", markup=False)
    findings = plan.get("content", {}).get("findings") or []
    out.print(
        f"destructive: {'yes' if plan['destructive'] else 'no'}"
        + (f"; findings: {', '.join(findings)}" if findings else ""),
        markup=False,
    )
    effect = decision["effect"]
    if effect == "require_approval":
        who = f"{decision['min_approvals']} of {', '.join(decision['approvers'])}"
        out.print(f"decision: needs approval by {who}", markup=False)
    else:
        out.print(f"decision: {effect}", markup=False)
    out.print(f"digest: {plan['digest']}", markup=False)


def _migrate(
    database: str,
    params: dict[str, Any],
    *,
    dry_run: bool,
    as_: str | None,
    wait: bool,
    timeout: float | None,
    approval: str | None,
    state_dir: str | None,
    json_out: bool,
) -> None:
    from opsgate.operations.base import Operation

    op = Operation("migrate", f"database/{database}", params, dry_run=dry_run)
    act = _actor(state_dir, as_, [op.capability], json_out)
    outcome = _perform(act, op, approval=approval, wait=wait, timeout=timeout, json_out=json_out)
    if outcome.status == "dry_run":
        _show_plan(act, op, outcome, json_out)
        return
    _done(act, op, outcome, json_out, {"detail": _plain(outcome.detail)})


DatabaseArg = Annotated[str, typer.Argument(metavar="DB", help="A target named in opsgate.yaml.")]
TargetOpt = Annotated[
    int | None,
    typer.Option("--target", min=1, help="Up to and including this version (default: all)."),
]


@migrate_app.command("plan")
@handle_errors
def migrate_plan(
    database: DatabaseArg,
    target: TargetOpt = None,
    as_: AsOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """What `apply` would run: files, statements with findings, and the gate's decision."""
    params = {} if target is None else {"target": target}
    _migrate(
        database,
        params,
        dry_run=True,
        as_=as_,
        wait=False,
        timeout=None,
        approval=None,
        state_dir=state_dir,
        json_out=json_out,
    )


@migrate_app.command("apply")
@handle_errors
def migrate_apply(
    database: DatabaseArg,
    target: TargetOpt = None,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Apply the pending migrations of DB, as an agent (one transaction each)."""
    params = {} if target is None else {"target": target}
    _migrate(
        database,
        params,
        dry_run=False,
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )


@migrate_app.command("repair")
@handle_errors
def migrate_repair(
    database: DatabaseArg,
    reason: Annotated[str, typer.Option(help="Why clearing it is safe (recorded).")],
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Clear DB's failed or interrupted migrations (after checking the database), as an agent."""
    _migrate(
        database,
        {"mode": "repair", "reason": reason},
        dry_run=False,
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )


@migrate_app.command("status")
@handle_errors
def migrate_status(
    database: DatabaseArg, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Head, pending files, failed or interrupted runs and the lock holder (reads only)."""
    from opsgate.operations.migrate import MigrationExecutor

    gate = open_gate(state_dir)
    executor = gate.registered_executor("migrate", "database")
    if not isinstance(executor, MigrationExecutor):  # the gate registers one per configuration
        raise MigrationError(
            f"database {safe_text(database)!r} is not configured", code="database_unknown"
        )
    status = executor.status(database)
    data = status.to_dict()
    if json_out:
        print_json(data)
        return
    out = console()
    out.print(
        f"{data['database']} ({data['dialect']}): {data['state']}, at V{data['head']}",
        markup=False,
    )
    for name in data["pending"]:
        out.print(f"  pending      {name}", markup=False)
    for row in data["unresolved"]:
        out.print(f"  {row['status']:<12} {row['name']}", markup=False)
    if data["lock_holder"]:
        out.print(f"  locked by    {data['lock_holder']}", markup=False)
    if data["drift"]:
        out.print(f"  drift        {data['drift']}", markup=False)
    if data["unresolved"]:
        out.print(
            f"  check the database, then: opsgate migrate repair {database} --reason TEXT",
            markup=False,
        )


# -- secrets -----------------------------------------------------------------------------------


PathArg = Annotated[str, typer.Argument(metavar="PATH", help="<env>/<name>, below secrets/.")]


def _secret_op(
    action: str,
    path: str,
    params: dict[str, Any],
    *,
    as_: str | None,
    wait: bool,
    timeout: float | None,
    approval: str | None,
    state_dir: str | None,
    json_out: bool,
    value: Callable[[Any], Any] | None = None,
) -> tuple[_Act, Any, Any]:
    from opsgate.operations.base import Operation
    from opsgate.secrets.base import NAMESPACE

    resource = f"{NAMESPACE}/{path}"
    act = _actor(state_dir, as_, [f"{action}:{resource}"], json_out)
    secret = None if value is None else value(act.gate)
    op = Operation(action, resource, params, secret=secret)
    outcome = _perform(act, op, approval=approval, wait=wait, timeout=timeout, json_out=json_out)
    return act, op, outcome


@secrets_app.command("get")
@handle_errors
def secrets_get(
    path: PathArg,
    version: Annotated[int | None, typer.Option(min=1, help="A version (default: the latest).")] = (
        None
    ),
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Print the value (alone on stdout).")
    ] = False,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Read a secret as an agent; its value is printed only with --reveal."""
    params = {} if version is None else {"version": version}
    act, op, outcome = _secret_op(
        "read",
        path,
        params,
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )
    d = outcome.detail
    data: dict[str, Any] = {"path": d["path"], "version": d["version"]}
    if reveal:
        if json_out:
            _done(act, op, outcome, True, {**data, "value": d["value"].reveal()})
        else:
            typer.echo(d["value"].reveal())
        return
    if json_out:
        _done(act, op, outcome, True, data)
    else:
        console().print(
            f"{d['path']} version {d['version']} (the value is not shown: --reveal prints it)",
            markup=False,
        )


def _read_value(gate: Any) -> Any:
    """The value to store: stdin when it is not a terminal, else a hidden prompt (twice)."""
    from opsgate.secrets.value import SecretValue

    if sys.stdin is None:
        raise _usage("no secret value: pipe it on stdin")
    if sys.stdin.isatty():
        text = typer.prompt("secret value", hide_input=True, confirmation_prompt=True)
    else:
        # Bounded: a value larger than the backend takes is refused by the executor.
        text = sys.stdin.read(gate.config.secrets.max_value_bytes + 2)
        if text.endswith("\n"):  # what `echo` and a here-string add
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise _usage("no secret value given: pipe it on stdin (never on the command line)")
    return SecretValue(text)


# Extra words are caught here, not by the parser: its error would echo them, and a
# word after PATH is most likely the value itself.
@secrets_app.command(
    "put", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@handle_errors
def secrets_put(
    ctx: typer.Context,
    path: PathArg,
    expected_version: Annotated[
        int | None,
        typer.Option(min=0, help="Write only if this is the current version (0: a new secret)."),
    ] = None,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Store a new version of a secret, as an agent; the value comes from stdin or a prompt."""
    if ctx.args:
        raise _usage(
            f"secrets put takes PATH only, not {len(ctx.args)} more word(s) (not shown): the "
            "value is read from stdin or a hidden prompt, never from the command line, "
            "where the shell history and the process list keep it; nothing was stored"
        )
    params = {} if expected_version is None else {"expected_version": expected_version}
    act, op, outcome = _secret_op(
        "write",
        path,
        params,
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
        value=_read_value,
    )
    d = outcome.detail
    _done(act, op, outcome, json_out, {"path": d["path"], "version": d["version"]})


@secrets_app.command("list")
@handle_errors
def secrets_list(
    prefix: Annotated[str, typer.Argument(metavar="PATH", help="<env> or <env>/<folder>.")],
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """The names directly below PATH (folders end with '/'), as an agent; never values."""
    act, op, outcome = _secret_op(
        "list",
        prefix,
        {},
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )
    d = outcome.detail
    if json_out:
        _done(act, op, outcome, True, {"prefix": d["prefix"], "names": list(d["names"])})
        return
    for name in d["names"]:
        typer.echo(name)


@secrets_app.command("delete")
@handle_errors
def secrets_delete(
    path: PathArg,
    destroy: Annotated[
        bool, typer.Option("--destroy", help="Remove every version for good.")
    ] = False,
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Soft-delete the latest version (or --destroy all of them), as an agent."""
    act, op, outcome = _secret_op(
        "delete",
        path,
        {"destroy": True} if destroy else {},
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )
    d = outcome.detail
    extra = {"path": d["path"], "version": d.get("version"), "destroyed": d.get("destroyed", 0)}
    _done(act, op, outcome, json_out, extra)


@secrets_app.command("rotate")
@handle_errors
def secrets_rotate(
    path: PathArg,
    length: Annotated[int, typer.Option(help="Characters in the new value (16-4096).")] = 32,
    charset: Annotated[
        str,
        typer.Option(help="alphanumeric, hex, base64url or printable.", callback=one_of(*CHARSETS)),
    ] = "alphanumeric",
    as_: AsOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = None,
    approval: ApprovalOpt = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Store a new random value as a new version, as an agent (the value is not shown)."""
    act, op, outcome = _secret_op(
        "rotate",
        path,
        {"length": length, "charset": charset},
        as_=as_,
        wait=wait,
        timeout=timeout,
        approval=approval,
        state_dir=state_dir,
        json_out=json_out,
    )
    d = outcome.detail
    _done(act, op, outcome, json_out, {"path": d["path"], "version": d["version"]})


# -- status --------------------------------------------------------------------------------------


def _show_status(data: dict[str, Any]) -> None:
    out = console()
    audit = data["audit"]
    out.print(
        f"gate {data['gate']}: {data['agent_count']} agent(s), "
        f"{data['approvals']['pending_count']} pending approval(s), "
        f"audit head seq {audit['head_seq']} {audit['head_hash']}",
        markup=False,
    )
    table = new_table("agent", "status", "trust", "effective")
    for a in data["agents"]:
        table.add_row(
            escape(a["name"]), a["status"], str(a["trust_score"]), str(a["effective_trust"])
        )
    out.print(table)
    if data["approvals"]["pending"]:
        table = new_table("approval", "capability", "requester", "expires")
        table.columns[0].min_width = 28  # copied into `approvals approve`: one line
        for r in data["approvals"]["pending"]:
            table.add_row(
                r["id"],
                escape(r["capability"]),
                escape(r["requester"]),
                format_time(r["expires_at"]),
            )
        out.print(table)
    # Served only by a gate whose policies are those in force (else: policy_mismatch).
    policy = data.get("policy") or {}
    out.print(f"policies in force: digest {policy.get('published_digest')}", markup=False)
    out.print(f"open database leases: {data['lease_count']}")
    for lease in data["leases"]:
        out.print(
            f"  {lease['database']}: {lease['username']} until {format_time(lease['expires_at'])}",
            markup=False,
        )
    out.print(f"deploy locks: {data['lock_count']}")
    for lock in data["locks"]:
        stale = " (stale)" if lock.get("stale") else ""
        out.print(
            f"  {lock['env']}/{lock['app']}: {lock['holder_name']} for {lock['capability']}, "
            f"pid {lock['pid']} on {lock['host']} since {format_time(lock['started_at'])}{stale}",
            markup=False,
        )


@app.command("status")
@handle_errors
def status(
    as_: Annotated[
        str | None,
        typer.Option(
            "--as",
            envvar="OPSGATE_AGENT",
            help="The agent to read it as; it needs read:monitoring/gate (default: "
            "cli.monitor_agent, else cli.agent).",
            show_default=False,
        ),
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """The gate's own status, read through the gate as a monitoring agent: agents and
    trust, pending approvals, the audit head, open database leases, deploy locks."""
    from opsgate.operations.monitor import GATE_TARGET, monitor_operation

    op = monitor_operation(GATE_TARGET)
    gate = open_gate(state_dir)
    act = _actor(
        state_dir,
        gate.config.cli.monitor_agent if as_ is None else as_,
        [op.capability],
        json_out,
        configured="cli.monitor_agent or cli.agent",
    )
    outcome = _perform(act, op, approval=None, wait=False, timeout=None, json_out=json_out)
    data = _plain(outcome.detail)
    if json_out:
        _done(act, op, outcome, True, {"gate_status": data})
        return
    _show_status(data)
