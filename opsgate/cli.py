"""`opsgate` command line: the same Gate as the SDK, one command per operator action.

Exit codes: 0 ok, 1 refused or failed check, 2 usage, 3 approval pending (the
commands that act as an agent, opsgate.cli_ops). Errors are one line on stderr
(`error [code]: message`), never a traceback. `--json` on listings.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opsgate.errors import ConfigError, OpsgateError, scrub

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="opsgate",
    help="The gate every privileged operation of an AI agent passes through.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
agents_app = typer.Typer(help="Register, delegate and manage agents.", no_args_is_help=True)
creds_app = typer.Typer(help="Issue, verify and revoke credentials.", no_args_is_help=True)
keys_app = typer.Typer(help="The gate's signing keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(creds_app, name="creds")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
approvers_app = typer.Typer(help="People who may approve operations.", no_args_is_help=True)
approvals_app = typer.Typer(help="Pending and decided approval requests.", no_args_is_help=True)
trust_app = typer.Typer(help="Behavioural trust scores.", no_args_is_help=True)
operators_app = typer.Typer(
    help="Operators of the HTTP API (tokens stored hashed).", no_args_is_help=True
)
app.add_typer(operators_app, name="operators")
app.add_typer(approvers_app, name="approvers")
app.add_typer(approvals_app, name="approvals")
app.add_typer(trust_app, name="trust")


def _one_of(*choices: str) -> Callable[[str | None], str | None]:
    """A filter value outside its choices is a usage error (exit 2), not an empty list."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}")
        return value

    return check


def _non_empty(value: str | None) -> str | None:
    """An empty --state-dir (an unset shell variable) must not mean "here"."""
    if value is not None and not value.strip():
        raise typer.BadParameter("the state dir must not be empty")
    return value


StateDir = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        envvar="OPSGATE_STATE_DIR",
        help="State directory (default .opsgate).",
        show_default=False,
        callback=_non_empty,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

_ctx_state_dir: dict[str, str | None] = {"value": None}


#: Width of output that is not a terminal (a pipe, a file): wide enough that a row is one line.
PIPED_WIDTH = 100_000


def _out() -> Console:
    # emoji=False: rich would render the ":key:" inside every did:key as an emoji.
    console = Console(soft_wrap=True, highlight=False, emoji=False)
    if not console.is_terminal:
        # Piped or captured: full rows, never fitted to 80 columns (and cut).
        console.width = PIPED_WIDTH
    return console


def _table(*headers: str, **options: Any) -> Table:
    """A table whose cells fold onto more lines in a narrow terminal, never cut with an
    ellipsis: dids, jtis, approval ids and hashes are copied out of these listings."""
    table = Table(**options)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _err(message: str) -> None:
    Console(stderr=True, soft_wrap=True, highlight=False, emoji=False).print(
        " ".join(scrub(message).split()), markup=False
    )


_opened: list[Any] = []  # gates opened by the running command, closed when it ends


def handle_errors(fn: F) -> F:
    """Turn opsgate's typed errors into one line on stderr and exit code 1; close the
    gate the command opened (which signs the events it left unsigned)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OpsgateError as exc:
            _err(f"error [{exc.code}]: {exc.message}")
            raise typer.Exit(1) from None
        finally:
            while _opened:
                _opened.pop().close()

    return wrapper  # type: ignore[return-value]


def _gate(state_dir: str | None, *, create: bool = False) -> Any:
    """Open the gate; only `init` may create one, so a mistyped --state-dir is an
    error rather than a fresh, empty gate that verifies as intact, and a state dir
    opens only on the database bound to it."""
    from opsgate.gate import Gate, resolve_state_dir

    path = resolve_state_dir(state_dir if state_dir is not None else _ctx_state_dir["value"])
    gate = Gate.open(path, create=create)
    _opened.append(gate)
    return gate


def _writable(path: Path) -> Any:
    """Open an output file up front, so nothing is done when it cannot be written."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write '{path}': {exc.strerror or 'not a file'}", code="output_unwritable"
        ) from exc


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.callback()
def _root(state_dir: StateDir = None) -> None:
    _ctx_state_dir["value"] = state_dir
    if state_dir is not None:  # sub-apps (policy) read it from the environment
        os.environ["OPSGATE_STATE_DIR"] = str(state_dir)


@app.command()
@handle_errors
def init(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Create the state directory, database and gate signing key (and pin it)."""
    gate = _gate(state_dir, create=True)
    info = {
        "state_dir": str(gate.state_dir),
        "gate_id": gate.gate_id,
        "issuer": gate.gate_id,
        "audience": gate.config.audience,
        "database": gate.store.dialect,
        "pinned_kid": gate.pin.root_kid,
        "kid": gate.keyring.signer()[0],
    }
    if json_out:
        _print_json(info)
    else:
        _out().print(f"opsgate ready in {info['state_dir']} ({info['database']})")
        _out().print(f"gate id {info['gate_id']} (the issuer of its credentials)")
        _out().print(f"signing key {info['kid']}")
        _out().print(
            f"pinned key {info['pinned_kid']}: keep this line somewhere else; every gate "
            "key must chain back to it"
        )


# -- agents ---------------------------------------------------------------------------

CapOpt = Annotated[
    list[str],
    typer.Option(
        "--capability",
        "-c",
        help="A capability ACTION:RESOURCE; repeat -c for each (-c deploy:staging -c read:logs).",
    ),
]


def _show_agent(agent: Any, json_out: bool) -> None:
    data = agent.to_dict()
    if json_out:
        _print_json(data)
        return
    table = _table("field", "value", show_header=False, box=None)
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        table.add_row(f"[bold]{key}[/bold]", escape(str(shown)))
    _out().print(table)


@agents_app.command("register")
@handle_errors
def agents_register(
    name: str,
    capability: CapOpt,
    sponsor: Annotated[str, typer.Option(help="Email of the accountable human.")],
    trust_score: Annotated[int | None, typer.Option(help="Initial trust score 0-1000.")] = None,
    ttl: Annotated[float | None, typer.Option(help="Lifetime in seconds (default: none).")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Register a root agent (depth 0) with its grants."""
    agent = _gate(state_dir).register_agent(
        name, capabilities=capability, sponsor=sponsor, trust_score=trust_score, ttl=ttl
    )
    _show_agent(agent, json_out)


@agents_app.command("delegate")
@handle_errors
def agents_delegate(
    parent: str,
    name: str,
    capability: CapOpt,
    trust_score: Annotated[int | None, typer.Option(help="At most the parent's trust.")] = None,
    ttl: Annotated[float | None, typer.Option(help="Lifetime in seconds.")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Create a sub-agent of PARENT holding a subset of its grants."""
    gate = _gate(state_dir)
    child = gate.agents.get(parent).delegate(
        name=name, capabilities=capability, ttl=ttl, trust_score=trust_score
    )
    _show_agent(child, json_out)


@agents_app.command("list")
@handle_errors
def agents_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="active, suspended or revoked",
            callback=_one_of("active", "suspended", "revoked"),
        ),
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """List agents."""
    agents = _gate(state_dir).agents.list(status=status)
    if json_out:
        _print_json([a.to_dict() for a in agents])
        return
    table = _table("name", "did", "depth", "status", "trust", "capabilities")
    for a in agents:
        d = a.to_dict()
        table.add_row(
            escape(d["name"]),
            d["did"],
            str(d["depth"]),
            d["effective_status"],
            str(d["effective_trust"]),
            escape(", ".join(d["capabilities"])),
        )
    _out().print(table)


@agents_app.command("show")
@handle_errors
def agents_show(agent: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Show one agent (by name or did)."""
    _show_agent(_gate(state_dir).agents.get(agent), json_out)


ReasonOpt = Annotated[str | None, typer.Option(help="Why (recorded in the audit log).")]


@agents_app.command("suspend")
@handle_errors
def agents_suspend(agent: str, reason: ReasonOpt = None, state_dir: StateDir = None) -> None:
    """Suspend an agent and its descendants; their credentials stop working."""
    affected = _gate(state_dir).agents.suspend(agent, reason=reason, actor=_operator())
    _out().print(f"suspended {len(affected)} agent(s)")  # counts only what changed


@agents_app.command("reinstate")
@handle_errors
def agents_reinstate(
    agent: str,
    reason: Annotated[str, typer.Option(help="Why (required, audited).")],
    state_dir: StateDir = None,
) -> None:
    """Reinstate a suspended agent (and sub-agents suspended because of it)."""
    affected = _gate(state_dir).agents.reinstate(agent, reason=reason, actor=_operator())
    _out().print(f"reinstated {len(affected)} agent(s)")


@agents_app.command("revoke")
@handle_errors
def agents_revoke(agent: str, reason: ReasonOpt = None, state_dir: StateDir = None) -> None:
    """Revoke an agent and its descendants for good."""
    affected = _gate(state_dir).agents.revoke(agent, reason=reason, actor=_operator())
    _out().print(f"revoked {len(affected)} agent(s)")


@agents_app.command("export-key")
@handle_errors
def agents_export_key(
    agent: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Key file to create (0600).")],
    force: Annotated[
        bool, typer.Option("--force", help="Export again (needs --reason; audited).")
    ] = False,
    reason: ReasonOpt = None,
    by: Annotated[
        str | None, typer.Option(help="Who exports it (audited; default: your login name).")
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Write AGENT's private key to a new file once, for moving it to the agent's machine."""
    did = _gate(state_dir).agents.export_key(
        agent, output, by=by or _login_name() or "operator", force=force, reason=reason
    )
    _out().print(
        f"wrote the private key of {did} to {output} (mode 0600); move it to the agent's "
        "machine and delete this copy",
        markup=False,
    )


# -- credentials ------------------------------------------------------------------------


@creds_app.command("issue")
@handle_errors
def creds_issue(
    agent: str,
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="A capability; repeat -s for each (-s a:x -s b:y)."),
    ],
    ttl_minutes: Annotated[float | None, typer.Option(help="Lifetime in minutes.")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Issue a credential; prints the token (and nothing else) on stdout.

    The request is the operator's (audited as such): a scope the agent was never
    granted is refused and charged to no agent."""
    gate = _gate(state_dir)
    cred = gate.credential_manager.issue_credential(
        gate.agents.resolve(agent), scope=scope, ttl_minutes=ttl_minutes, requested_by=_operator()
    )
    if json_out:
        _print_json(
            {
                "token": cred.token,
                "jti": cred.jti,
                "agent": cred.agent_id,
                "scope": cred.scope,
                "expires_at": cred.expires_at.isoformat(),
            }
        )
    else:
        typer.echo(cred.token)
        _err(f"jti {cred.jti}, expires {cred.expires_at.isoformat()}")


def _read_token(token: str) -> str:
    return sys.stdin.read().strip() if token == "-" else token.strip()  # noqa: S105


@creds_app.command("verify")
@handle_errors
def creds_verify(
    token: Annotated[str, typer.Argument(help="The token, or - to read it from stdin.")],
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Verify a credential: exit 0 when valid, 1 with the reason when not."""
    claims = _gate(state_dir).credential_manager.verify(_read_token(token))
    data = {
        "valid": True,
        "sub": claims.sub,
        "jti": claims.jti,
        "scope": list(claims.scope),
        "expires_at": claims.expires_at.isoformat(),
    }
    if json_out:
        _print_json(data)
    else:
        _out().print(f"valid: {claims.sub} scope={list(claims.scope)} until {data['expires_at']}")


# A jti may start with "-" (base64url): read it as the id, not as an unknown option.
@creds_app.command("revoke", context_settings={"ignore_unknown_options": True})
@handle_errors
def creds_revoke(
    jti: Annotated[str | None, typer.Argument(help="Credential id to revoke.")] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="Revoke every credential issued so far to this agent and its sub-agents. "
            "The agent stays active and can get new ones at once: to stop it, use "
            "'opsgate agents suspend'."
        ),
    ] = None,
    reason: ReasonOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Revoke one credential by id, or every credential issued so far to an agent with
    --agent (the agent stays active and may be issued new ones; 'opsgate agents
    suspend' stops an agent). An id this gate never issued is not_found (exit 1)."""
    if (jti is None) == (agent is None):
        _err("error [usage]: give either a credential id or --agent")
        raise typer.Exit(2)
    gate = _gate(state_dir)
    if agent is not None:
        affected = gate.credential_manager.revoke_agent(agent, reason=reason)
        _out().print(
            f"revoked the credentials of {len(affected)} agent(s); they remain active and "
            "can be issued new ones (to stop an agent: opsgate agents suspend)"
        )
    else:
        assert jti is not None
        gate.credential_manager.revoke(jti, reason=reason)
        _out().print(f"revoked {jti}")


# -- keys ------------------------------------------------------------------------------------


@keys_app.command("jwks")
@handle_errors
def keys_jwks(state_dir: StateDir = None) -> None:
    """Print the JWK Set that verifies this gate's credentials (with their issuer)."""
    _print_json(_gate(state_dir).jwks())


@keys_app.command("show")
@handle_errors
def keys_show(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Issuer, audience, the pinned key and the chain of keys endorsed from it."""
    doc = _gate(state_dir).discovery()
    if json_out:
        _print_json(doc)
        return
    _out().print(f"issuer      {doc['issuer']}", markup=False)
    _out().print(f"audience    {doc['audience']}", markup=False)
    _out().print(f"algorithms  {', '.join(doc['algorithms'])}", markup=False)
    _out().print(f"pinned key  {doc['pinned_kid']}", markup=False)
    for k in doc["key_chain"]:
        state = "signing" if k["retired_at"] is None else f"retired {_when(k['retired_at'])}"
        _out().print(f"  {k['kid']}  created {_when(k['created_at'])}, {state}", markup=False)


@keys_app.command("rotate")
@handle_errors
def keys_rotate(state_dir: StateDir = None) -> None:
    """Sign with a fresh key from now on; the old key stays published until its tokens expire."""
    kid = _gate(state_dir).rotate_keys()
    _out().print(f"now signing with {kid}")


# -- audit ------------------------------------------------------------------------------------


@audit_app.command("verify")
@handle_errors
def audit_verify(
    anchor: Annotated[
        Path | None, typer.Option(help="A checkpoint file kept outside the database.")
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Check the hash chain (and an anchor); exit 1 naming the first bad seq."""
    from opsgate.audit.log import load_anchor

    gate = _gate(state_dir)
    report = gate.audit.verify(load_anchor(anchor) if anchor is not None else None)
    if json_out:
        _print_json(report.to_dict())
    elif report.ok:
        extra = " and the anchor" if report.anchor_checked else ""
        _out().print(
            f"audit log intact: {report.events} events, head seq {report.head_seq}, "
            f"{report.checkpoints_checked} checkpoint(s){extra} verified"
        )
    elif report.first_bad_seq is not None:
        _err(f"audit log TAMPERED: {report.problem} at seq {report.first_bad_seq}: {report.reason}")
    else:
        _err(f"gate state TAMPERED: {report.problem}: {report.reason}")
    if not json_out and report.ok and report.unsigned_events:
        # Said on stderr: stdout keeps one line, and the exit code stays 0.
        _err(
            f"note: {report.unsigned_events} event(s) after seq {report.signed_seq} are not "
            f"signed by a checkpoint yet (the oldest is {report.unsigned_age_seconds:.0f} s "
            "old); a database writer could still replace them"
        )
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("tail")
@handle_errors
def audit_tail(
    n: Annotated[int, typer.Option("-n", help="How many events.", min=1, max=10000)] = 20,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (did).")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Show the newest audit events."""
    records = _gate(state_dir).audit.tail(n, event_type=event_type, actor=actor)
    if json_out:
        _print_json([{**r.event, "hash": r.hash} for r in records])
        return
    table = _table("seq", "time", "type", "actor", "detail")
    for r in records:
        detail = {k: v for k, v in r.event.items() if k not in ("seq", "at", "type", "actor")}
        table.add_row(
            str(r.seq),
            _when(r.at),
            escape(r.type),
            escape(r.actor or "-"),
            escape(json.dumps(detail, default=str)),
        )
    _out().print(table)


@audit_app.command("export")
@handle_errors
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Export every event as JSON lines, with prev_hash and hash, for offline verification."""
    gate = _gate(state_dir)
    stream = _writable(output) if output else sys.stdout
    try:
        for r in gate.audit.events():
            stream.write(json.dumps({"event": r.event, "prev_hash": r.prev_hash, "hash": r.hash}))
            stream.write("\n")
    finally:
        if output:
            stream.close()


@audit_app.command("checkpoint")
@handle_errors
def audit_checkpoint(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the signed checkpoint here.")
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Sign the current head; keep the file somewhere the database is not."""
    gate = _gate(state_dir)
    cp = gate.audit.export_checkpoint(output) if output else gate.audit.checkpoint()
    where = f" -> {output}" if output else ""
    _out().print(f"checkpoint at seq {cp.seq} ({cp.hash[:16]}...) signed by {cp.kid}{where}")


# -- approvers and approvals ------------------------------------------------------------


TokenTtl = Annotated[
    int | None,
    typer.Option(
        "--ttl-days",
        help="Days until the token expires (default: approvals.token_ttl_days, 90).",
        show_default=False,
    ),
]


@approvers_app.command("add")
@handle_errors
def approvers_add(
    email: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Register an approver; prints their token once (it is stored only hashed)."""
    gate = _gate(state_dir)
    token = gate.approvals.add_approver(email, ttl_days=ttl_days)
    _print_token(gate.approvals.get_approver(email), token, json_out, "added")


@approvers_app.command("rotate")
@handle_errors
def approvers_rotate(
    email: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Replace an approver's token; prints the new one once. The old one stops working now."""
    gate = _gate(state_dir)
    token = gate.approvals.rotate_approver_token(email, ttl_days=ttl_days)
    _print_token(gate.approvals.get_approver(email), token, json_out, "rotated")


def _print_token(approver: Any, token: str, json_out: bool, what: str) -> None:
    expires = approver.token_expires_at
    if json_out:
        _print_json({"approver": approver.email, "token": token, "token_expires_at": _iso(expires)})
        return
    typer.echo(token)  # alone on stdout, so it can be captured
    _err(
        f"approver {approver.email} {what}; the token above is shown only this once "
        f"and expires {_when(expires)}"
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@approvers_app.command("list")
@handle_errors
def approvers_list(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """List registered approvers with their token's age and expiry (never the token)."""
    now = datetime.now(UTC).timestamp()
    approvers = _gate(state_dir).approvals.list_approvers()
    if json_out:
        _print_json([a.to_dict(now) for a in approvers])
        return
    table = _table("approver", "status", "token age", "token expires")
    for a in approvers:
        table.add_row(
            escape(a.email),
            a.status(now),
            f"{a.token_age_days(now):.0f} days",
            _when(a.token_expires_at),
        )
    _out().print(table)


@approvals_app.command("list")
@handle_errors
def approvals_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="pending, approved, denied, expired or consumed",
            callback=_one_of("pending", "approved", "denied", "expired", "consumed"),
        ),
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """List approval requests."""
    requests = _gate(state_dir).approvals.list(status=status)
    if json_out:
        _print_json([r.to_dict() for r in requests])
        return
    table = _table("id", "status", "capability", "requester", "approvers", "expires")
    table.columns[0].min_width = 28  # ids are copied into `approvals approve`: one line
    for r in requests:
        table.add_row(
            r.id,
            r.status,
            escape(r.capability),
            escape(r.requester_name),
            escape(f"{r.min_approvals} of " + ", ".join(r.approvers)),
            _when(r.expires_at),
        )
    _out().print(table)


@approvals_app.command("show")
@handle_errors
def approvals_show(approval_id: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Show one request: the exact plan it is bound to, and every decision."""
    data = _gate(state_dir).approvals.get(approval_id).to_dict()
    if json_out:
        _print_json(data)
        return
    _out().print(json.dumps(data, indent=2, default=str), markup=False)


ApproverOpt = Annotated[str, typer.Option("--approver", help="Your approver email.")]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--token", envvar="OPSGATE_APPROVER_TOKEN", help="Your approver token.", show_default=False
    ),
]
CommentOpt = Annotated[str | None, typer.Option(help="Recorded with the decision.")]


@approvals_app.command("approve")
@handle_errors
def approvals_approve(
    approval_id: str,
    approver: ApproverOpt,
    token: TokenOpt,
    comment: CommentOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Approve a request (as a listed approver, with your token)."""
    req = _gate(state_dir).approvals.approve(
        approval_id, approver=approver, token=token, comment=comment
    )
    _out().print(f"{req.id} is now {req.status}")


@approvals_app.command("deny")
@handle_errors
def approvals_deny(
    approval_id: str,
    approver: ApproverOpt,
    token: TokenOpt,
    comment: CommentOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Deny a request; one deny denies, and cancels an approved request not yet run."""
    from opsgate.approvals.model import cancelled_after_quorum

    req = _gate(state_dir).approvals.deny(
        approval_id, approver=approver, token=token, comment=comment
    )
    note = " (its approval is cancelled: it will not run)" if cancelled_after_quorum(req) else ""
    _out().print(f"{req.id} is now {req.status}{note}", markup=False)


# -- operators -----------------------------------------------------------------------------


@operators_app.command("add")
@handle_errors
def operators_add(
    name: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Register an operator of the HTTP API; prints their token once."""
    gate = _gate(state_dir)
    token = gate.operators.add(name, ttl_days=ttl_days)
    _print_operator_token(gate.operators.get(name), token, json_out, "added")


@operators_app.command("rotate")
@handle_errors
def operators_rotate(
    name: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Replace an operator's token; prints the new one once. The old one stops working now."""
    gate = _gate(state_dir)
    token = gate.operators.rotate(name, ttl_days=ttl_days)
    _print_operator_token(gate.operators.get(name), token, json_out, "rotated")


@operators_app.command("list")
@handle_errors
def operators_list(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """List operators with their token's status and expiry (never the token)."""
    now = datetime.now(UTC).timestamp()
    operators = _gate(state_dir).operators.list_operators()
    if json_out:
        _print_json([o.to_dict(now) for o in operators])
        return
    table = _table("operator", "status", "token issued", "token expires")
    for o in operators:
        table.add_row(
            escape(o.name), o.status(now), _when(o.token_issued_at), _when(o.token_expires_at)
        )
    _out().print(table)


def _print_operator_token(operator: Any, token: str, json_out: bool, what: str) -> None:
    if json_out:
        _print_json(
            {
                "operator": operator.name,
                "token": token,
                "token_expires_at": _iso(operator.token_expires_at),
            }
        )
        return
    typer.echo(token)  # alone on stdout, so it can be captured
    _err(
        f"operator {operator.name} {what}; the token above is shown only this once "
        f"and expires {_when(operator.token_expires_at)}"
    )


# -- serve -------------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    external_url: Annotated[
        str | None,
        typer.Option(
            help="The URL agents reach this gate at (default: server.external_url; on a "
            "loopback host, http://HOST:PORT)."
        ),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Run the HTTP API (agents: client assertion + DPoP; approvers and operators: tokens)."""
    import uvicorn

    from opsgate.server import create_app

    gate = _gate(state_dir)
    settings = gate.config.server
    url = external_url or settings.external_url
    if url is None:
        if not _loopback(host):
            raise ConfigError(
                "serving on a non-loopback address needs --external-url (or "
                "server.external_url): proofs of possession name it",
                code="external_url_missing",
            )
        url = f"http://{'127.0.0.1' if host == 'localhost' else host}:{port}"
    try:
        settings = settings.model_validate({**settings.model_dump(), "external_url": url})
    except ValueError as exc:
        raise ConfigError(f"invalid --external-url: {exc}", code="config_invalid") from exc
    application = create_app(gate, settings)
    _err(
        f"opsgate serving {gate.state_dir} on {host}:{port} as {url} "
        f"(approvers sign in at {url.rstrip('/')}/ui)"
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        # Bounded request heads and a bounded number of connections per process.
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=1024,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    gate.close()


# -- trust -------------------------------------------------------------------------------------


@trust_app.command("show")
@handle_errors
def trust_show(
    agent: Annotated[str | None, typer.Argument(help="One agent (default: all).")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Trust scores: own and effective (capped by every ancestor)."""
    gate = _gate(state_dir)
    agents = [gate.agents.get(agent)] if agent else gate.agents.list()
    thresholds = gate.config.trust
    rows = []
    for a in agents:
        own, eff = a.trust_score, a.effective_trust
        band = (
            "suspend"
            if eff < thresholds.suspend_below
            else "approval for production"
            if eff < thresholds.approval_below
            else "normal"
        )
        rows.append(
            {
                "name": a.name,
                "did": a.did,
                "score": own,
                "effective": eff,
                "status": a.status,
                "band": band,
            }
        )
    if json_out:
        _print_json(rows)
        return
    table = _table("agent", "score", "effective", "status", "band")
    for r in rows:
        table.add_row(
            escape(r["name"]), str(r["score"]), str(r["effective"]), r["status"], r["band"]
        )
    _out().print(table)


@trust_app.command("history")
@handle_errors
def trust_history(agent: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Explain an agent's score line by line: cause, delta, resulting score, evidence."""
    gate = _gate(state_dir)
    a = gate.agents.get(agent)
    changes = gate.trust.history(a.did)
    if json_out:
        _print_json([c.to_dict() for c in changes])
        return
    table = _table("seq", "time", "cause", "delta", "score", "reason")
    for c in changes:
        delta = f"{c.delta:+d}"
        if c.requested_delta is not None:
            delta += f" (of {c.requested_delta:+d})"
        reason = c.reason or ""
        if c.by:
            reason = f"{reason} (by {c.by})"
        for w in c.withheld:  # why credit was cut: every refused point is explained
            reason += f"; withheld [{w.get('rule')}]: {w.get('reason')}"
        table.add_row(
            str(c.audit_seq or "-"), _when(c.at), c.cause, delta, str(c.score), escape(reason)
        )
    _out().print(table)
    _out().print(f"{a.name}: score {a.trust_score}, effective {a.effective_trust}")


def _operator() -> str:
    """The audit actor of an operator's act on the CLI: `operator:<login>`."""
    return f"operator:{_login_name() or 'unknown'}"


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return ""


@trust_app.command("set")
@handle_errors
def trust_set(
    agent: str,
    score: Annotated[int, typer.Argument(help="The new score, 0-1000.")],
    reason: Annotated[str, typer.Option(help="Why (required, audited).")],
    by: Annotated[
        str | None,
        typer.Option(help="Who sets it (audited; default: your login name)."),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Set an agent's own score: the operator's audited way over the approval threshold
    (credit alone needs days of clean history). A lower score counts as a loss."""
    gate = _gate(state_dir)
    change = gate.set_trust_score(agent, score, reason=reason, by=by or _login_name())
    _out().print(f"{gate.agents.get(agent).name}: score {change.score} ({change.delta:+d})")


def _mount_optional() -> None:
    from opsgate.policy.cli import app as policy_app

    app.add_typer(policy_app, name="policy")
    # deploy, rollback, migrate, secrets, status: operations done as an agent; mcp:
    # the same operations as MCP tools for an LLM agent.
    import opsgate.cli_mcp
    import opsgate.cli_ops  # noqa: F401


_mount_optional()


def _repeat_hint(exc: Exception, message: str) -> str:
    """`-c a b` reads `b` as a stray argument: say how several values are given."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None or not message.startswith("Got unexpected extra argument"):
        return ""
    flags = [
        min(p.opts, key=len) for p in ctx.command.params if getattr(p, "multiple", False) and p.opts
    ]
    if not flags:
        return ""
    return f"; for several values repeat the option: {flags[0]} A {flags[0]} B"


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2."""
    import structlog
    from typer import Abort
    from typer._click.exceptions import ClickException

    from opsgate.audit.sanitize import scrub_log_event

    # Log lines go to stderr: stdout carries only results (tables, JSON, tokens).
    # Every line is scrubbed of secret-shaped text first, as audit events are.
    processors = list(structlog.get_config()["processors"])
    if scrub_log_event not in processors:
        processors.insert(0, scrub_log_event)
    structlog.configure(
        processors=processors, logger_factory=structlog.PrintLoggerFactory(file=sys.stderr)
    )
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        message = exc.format_message()
        if message:  # bare `opsgate` shows help and exits 2 without an error line
            _err(f"error [usage]: {message}{_repeat_hint(exc, message)}")
        sys.exit(2)
    except Abort:
        _err("error [aborted]: aborted")
        sys.exit(1)
    except Exception as exc:  # a bug or an unforeseen environment: still one line
        if os.environ.get("OPSGATE_DEBUG"):
            raise
        _err(
            f"error [internal]: unexpected {exc.__class__.__name__}; "
            "set OPSGATE_DEBUG=1 to see the traceback"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
