"""`opsgate` command line: the same Gate as the SDK, one command per operator action.

Exit codes: 0 ok, 1 refused or failed check, 2 usage, 3 approval pending (the
commands that act as an agent, opsgate.cli_ops). Errors are one line on stderr
(`error [code]: message`), never a traceback. `--json` on listings.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from opsgate.cli_common import (
    JsonOut,
    StateDir,
    app,
    console,
    format_time,
    handle_errors,
    login_name,
    new_table,
    one_of,
    open_gate,
    operator_actor,
    print_error,
    print_json,
)
from opsgate.errors import ConfigError, OutputUnwritable, safe_text

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


def _writable(path: Path, *, force: bool = False) -> Any:
    """Open an output file up front, so nothing is done when it cannot be written. The
    file is the owner's only (the audit names every agent, grant and refusal); one that
    exists is replaced only with `force` (never through a symlink), so a mistyped path
    cannot truncate a key or an earlier export."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OutputUnwritable(
            f"cannot write '{path}': it exists (pass --force to replace it)",
            code="output_unwritable",
        ) from None
    except OSError as exc:
        raise OutputUnwritable(
            f"cannot write '{path}': {exc.strerror or 'not a file'}", code="output_unwritable"
        ) from exc
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)  # a replaced file keeps no wider mode
    return os.fdopen(fd, "w", encoding="utf-8")


# Said where a gate starts without any policy: capabilities alone then decide.
NO_POLICIES = (
    "note: no policies are loaded: whatever an agent's capabilities cover is allowed, "
    "production included, unless the trust gate asks for approval (load a policy, such "
    "as examples/policies.yaml, before production use)"
)


@app.command()
@handle_errors
def init(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Create the state directory, database and gate signing key (and pin it)."""
    gate = open_gate(state_dir, create=True)
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
        print_json(info)
    else:
        # markup=False: a path is the operator's text, "[...]" in it is not Rich markup.
        console().print(f"opsgate ready in {info['state_dir']} ({info['database']})", markup=False)
        console().print(f"gate id {info['gate_id']} (the issuer of its credentials)")
        console().print(f"signing key {info['kid']}")
        console().print(
            f"pinned key {info['pinned_kid']}: keep this line somewhere else; every gate "
            "key must chain back to it"
        )
        if gate.policies is None:
            print_error(NO_POLICIES)


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
        print_json(data)
        return
    table = new_table("field", "value", show_header=False, box=None)
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        table.add_row(f"[bold]{key}[/bold]", escape(str(shown)))
    console().print(table)


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
    agent = open_gate(state_dir).register_agent(
        name,
        capabilities=capability,
        sponsor=sponsor,
        trust_score=trust_score,
        ttl=ttl,
        actor=operator_actor(),
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
    gate = open_gate(state_dir)
    child = gate.agents.get(parent).delegate(
        name=name,
        capabilities=capability,
        ttl=ttl,
        trust_score=trust_score,
        requested_by=operator_actor(),
    )
    _show_agent(child, json_out)


@agents_app.command("list")
@handle_errors
def agents_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="active, suspended or revoked",
            callback=one_of("active", "suspended", "revoked"),
        ),
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """List agents."""
    agents = open_gate(state_dir).agents.list(status=status)
    if json_out:
        print_json([a.to_dict() for a in agents])
        return
    table = new_table("name", "did", "depth", "status", "trust", "capabilities")
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
    console().print(table)


@agents_app.command("show")
@handle_errors
def agents_show(agent: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Show one agent (by name or did)."""
    _show_agent(open_gate(state_dir).agents.get(agent), json_out)


ReasonOpt = Annotated[str | None, typer.Option(help="Why (recorded in the audit log).")]


@agents_app.command("suspend")
@handle_errors
def agents_suspend(agent: str, reason: ReasonOpt = None, state_dir: StateDir = None) -> None:
    """Suspend an agent and its descendants; their credentials stop working."""
    affected = open_gate(state_dir).agents.suspend(agent, reason=reason, actor=operator_actor())
    console().print(f"suspended {len(affected)} agent(s)")  # counts only what changed


@agents_app.command("reinstate")
@handle_errors
def agents_reinstate(
    agent: str,
    reason: Annotated[str, typer.Option(help="Why (required, audited).")],
    state_dir: StateDir = None,
) -> None:
    """Reinstate a suspended agent (and sub-agents suspended because of it)."""
    affected = open_gate(state_dir).agents.reinstate(agent, reason=reason, actor=operator_actor())
    console().print(f"reinstated {len(affected)} agent(s)")


@agents_app.command("revoke")
@handle_errors
def agents_revoke(agent: str, reason: ReasonOpt = None, state_dir: StateDir = None) -> None:
    """Revoke an agent and its descendants for good."""
    affected = open_gate(state_dir).agents.revoke(agent, reason=reason, actor=operator_actor())
    console().print(f"revoked {len(affected)} agent(s)")


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
    did = open_gate(state_dir).agents.export_key(
        agent,
        output,
        by=by if by is not None else (login_name() or "operator"),
        force=force,
        reason=reason,
    )
    console().print(
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
    gate = open_gate(state_dir)
    cred = gate.credential_manager.issue_credential(
        gate.agents.resolve(agent),
        scope=scope,
        ttl_minutes=ttl_minutes,
        requested_by=operator_actor(),
    )
    if json_out:
        print_json(
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
        print_error(f"jti {cred.jti}, expires {cred.expires_at.isoformat()}")


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
    from opsgate.errors import InvalidCredential

    gate = open_gate(state_dir)
    try:
        claims = gate.credential_manager.verify(_read_token(token))
    except InvalidCredential as exc:
        if json_out:  # the answer on stdout either way, for scripts
            print_json({"valid": False, "code": exc.code, "message": exc.message})
        raise
    data = {
        "valid": True,
        "sub": claims.sub,
        "jti": claims.jti,
        "scope": list(claims.scope),
        "expires_at": claims.expires_at.isoformat(),
    }
    if json_out:
        print_json(data)
    else:
        console().print(
            f"valid: {claims.sub} scope={list(claims.scope)} until {data['expires_at']}"
        )


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
        print_error("error [usage]: give either a credential id or --agent")
        raise typer.Exit(2)
    gate = open_gate(state_dir)
    if agent is not None:
        affected = gate.credential_manager.revoke_agent(agent, reason=reason)
        console().print(
            f"revoked the credentials of {len(affected)} agent(s); they remain active and "
            "can be issued new ones (to stop an agent: opsgate agents suspend)"
        )
    else:
        assert jti is not None
        gate.credential_manager.revoke(jti, reason=reason)
        console().print(f"revoked {jti}")


# -- keys ------------------------------------------------------------------------------------


@keys_app.command("jwks")
@handle_errors
def keys_jwks(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Print the JWK Set that verifies this gate's credentials (with their issuer);
    always JSON (`--json` is accepted like everywhere else)."""
    del json_out
    print_json(open_gate(state_dir).jwks())


@keys_app.command("show")
@handle_errors
def keys_show(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Issuer, audience, the pinned key and the chain of keys endorsed from it."""
    doc = open_gate(state_dir).discovery()
    if json_out:
        print_json(doc)
        return
    console().print(f"issuer      {doc['issuer']}", markup=False)
    console().print(f"audience    {doc['audience']}", markup=False)
    console().print(f"algorithms  {', '.join(doc['algorithms'])}", markup=False)
    console().print(f"pinned key  {doc['pinned_kid']}", markup=False)
    for k in doc["key_chain"]:
        state = "signing" if k["retired_at"] is None else f"retired {format_time(k['retired_at'])}"
        console().print(
            f"  {k['kid']}  created {format_time(k['created_at'])}, {state}", markup=False
        )


@keys_app.command("rotate")
@handle_errors
def keys_rotate(state_dir: StateDir = None) -> None:
    """Sign with a fresh key from now on; the old key stays published until its tokens expire."""
    kid = open_gate(state_dir).rotate_keys()
    console().print(f"now signing with {kid}")


@keys_app.command("rekey-secrets")
@handle_errors
def keys_rekey_secrets(
    new_key_file: Annotated[
        Path,
        typer.Option(
            "--new-key-file", help="The new master key (0600, 32 bytes as hex or base64)."
        ),
    ],
    generate: Annotated[
        bool, typer.Option("--generate", help="Create the file with a fresh key first.")
    ] = False,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Seal every embedded secret again under a new master key (all or nothing, audited)."""
    done = open_gate(state_dir).rekey_secrets(new_key_file, generate=generate)
    if json_out:
        print_json(done)
        return
    console().print(
        f"{done['versions']} secret versions sealed again: key {done['old_key_id']} -> "
        f"{done['new_key_id']}",
        markup=False,
    )
    if done["key_file_replaced"]:
        print_error(f"the state dir's key file now holds the new key (also in {new_key_file})")
    else:
        print_error(
            "the key came from OPSGATE_MASTER_KEY: set it to the new key's text (from "
            f"{new_key_file}) wherever the gate runs before it next opens"
        )


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

    gate = open_gate(state_dir)
    report = gate.audit.verify(load_anchor(anchor) if anchor is not None else None)
    if json_out:
        print_json(report.to_dict())
    elif report.ok:
        extra = " and the anchor" if report.anchor_checked else ""
        console().print(
            f"audit log intact: {report.events} events, head seq {report.head_seq}, "
            f"{report.checkpoints_checked} checkpoint(s){extra} verified"
        )
    elif report.first_bad_seq is not None:
        print_error(
            f"audit log TAMPERED: {report.problem} at seq {report.first_bad_seq}: {report.reason}"
        )
    else:
        print_error(f"gate state TAMPERED: {report.problem}: {report.reason}")
    if not json_out and report.ok and report.unsigned_events:
        # Said on stderr: stdout keeps one line, and the exit code stays 0.
        print_error(
            f"note: {report.unsigned_events} event(s) after seq {report.signed_seq} are not "
            f"signed by a checkpoint yet (the oldest is {report.unsigned_age_seconds:.0f} s "
            "old); a database writer could still replace them"
        )
    if not json_out and report.ok and report.state_checkpoint_seq is None and report.events > 2:
        # Nothing kept outside the database to compare with: say so, it is not "intact".
        print_error(
            "note: no kept checkpoint (audit.checkpoint_file) was found: a database writer "
            "could have cut or replaced the log unnoticed; verify against an exported "
            "anchor (--anchor)"
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
    records = open_gate(state_dir).audit.tail(n, event_type=event_type, actor=actor)
    if json_out:
        print_json([{**r.event, "hash": r.hash} for r in records])
        return
    table = new_table("seq", "time", "type", "actor", "detail")
    for r in records:
        detail = {k: v for k, v in r.event.items() if k not in ("seq", "at", "type", "actor")}
        table.add_row(
            str(r.seq),
            format_time(r.at),
            escape(r.type),
            escape(r.actor or "-"),
            escape(json.dumps(detail, default=str)),
        )
    console().print(table)


@audit_app.command("export")
@handle_errors
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Export every event as JSON lines, with prev_hash and hash, for offline verification."""
    gate = open_gate(state_dir)
    stream = _writable(output, force=force) if output else sys.stdout
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
    gate = open_gate(state_dir)
    cp = gate.audit.export_checkpoint(output) if output else gate.audit.checkpoint()
    where = f" -> {output}" if output else ""
    console().print(
        f"checkpoint at seq {cp.seq} ({cp.hash[:16]}...) signed by {cp.kid}{where}", markup=False
    )


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
    gate = open_gate(state_dir)
    token = gate.approvals.add_approver(email, ttl_days=ttl_days, actor=operator_actor())
    _print_token(gate.approvals.get_approver(email), token, json_out, "added")


@approvers_app.command("rotate")
@handle_errors
def approvers_rotate(
    email: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Replace an approver's token; prints the new one once. The old one stops working now."""
    gate = open_gate(state_dir)
    token = gate.approvals.rotate_approver_token(email, ttl_days=ttl_days, actor=operator_actor())
    _print_token(gate.approvals.get_approver(email), token, json_out, "rotated")


def _print_token(approver: Any, token: str, json_out: bool, what: str) -> None:
    expires = approver.token_expires_at
    if json_out:
        print_json({"approver": approver.email, "token": token, "token_expires_at": _iso(expires)})
        return
    typer.echo(token)  # alone on stdout, so it can be captured
    print_error(
        f"approver {approver.email} {what}; the token above is shown only this once "
        f"and expires {format_time(expires)}"
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@approvers_app.command("list")
@handle_errors
def approvers_list(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """List registered approvers with their token's age and expiry (never the token)."""
    now = datetime.now(UTC).timestamp()
    approvers = open_gate(state_dir).approvals.list_approvers()
    if json_out:
        print_json([a.to_dict(now) for a in approvers])
        return
    table = new_table("approver", "status", "token age", "token expires")
    for a in approvers:
        table.add_row(
            escape(a.email),
            a.status(now),
            f"{a.token_age_days(now):.0f} days",
            format_time(a.token_expires_at),
        )
    console().print(table)


@approvals_app.command("list")
@handle_errors
def approvals_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="pending, approved, denied, expired or consumed",
            callback=one_of("pending", "approved", "denied", "expired", "consumed"),
        ),
    ] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """List approval requests."""
    requests = open_gate(state_dir).approvals.list(status=status)
    if json_out:
        print_json([r.to_dict() for r in requests])
        return
    table = new_table("id", "status", "capability", "requester", "approvers", "expires")
    table.columns[0].min_width = 28  # ids are copied into `approvals approve`: one line
    for r in requests:
        table.add_row(
            r.id,
            r.status,
            escape(r.capability),
            escape(r.requester_name),
            escape(f"{r.min_approvals} of " + ", ".join(r.approvers)),
            format_time(r.expires_at),
        )
    console().print(table)


@approvals_app.command("show")
@handle_errors
def approvals_show(approval_id: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Show one request: the exact plan it is bound to, and every decision."""
    data = open_gate(state_dir).approvals.get(approval_id).to_dict()
    if json_out:
        print_json(data)
        return
    console().print(json.dumps(data, indent=2, default=str), markup=False)


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
    req = open_gate(state_dir).approvals.approve(
        approval_id, approver=approver, token=token, comment=comment
    )
    console().print(f"{req.id} is now {req.status}")


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

    req = open_gate(state_dir).approvals.deny(
        approval_id, approver=approver, token=token, comment=comment
    )
    note = " (its approval is cancelled: it will not run)" if cancelled_after_quorum(req) else ""
    console().print(f"{req.id} is now {req.status}{note}", markup=False)


# -- operators -----------------------------------------------------------------------------


@operators_app.command("add")
@handle_errors
def operators_add(
    name: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Register an operator of the HTTP API; prints their token once."""
    gate = open_gate(state_dir)
    token = gate.operators.add(name, ttl_days=ttl_days, actor=operator_actor())
    _print_operator_token(gate.operators.get(name), token, json_out, "added")


@operators_app.command("rotate")
@handle_errors
def operators_rotate(
    name: str, ttl_days: TokenTtl = None, state_dir: StateDir = None, json_out: JsonOut = False
) -> None:
    """Replace an operator's token; prints the new one once. The old one stops working now."""
    gate = open_gate(state_dir)
    token = gate.operators.rotate(name, ttl_days=ttl_days, actor=operator_actor())
    _print_operator_token(gate.operators.get(name), token, json_out, "rotated")


@operators_app.command("list")
@handle_errors
def operators_list(state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """List operators with their token's status and expiry (never the token)."""
    now = datetime.now(UTC).timestamp()
    operators = open_gate(state_dir).operators.list_operators()
    if json_out:
        print_json([o.to_dict(now) for o in operators])
        return
    table = new_table("operator", "status", "token issued", "token expires")
    for o in operators:
        table.add_row(
            escape(o.name),
            o.status(now),
            format_time(o.token_issued_at),
            format_time(o.token_expires_at),
        )
    console().print(table)


def _print_operator_token(operator: Any, token: str, json_out: bool, what: str) -> None:
    if json_out:
        print_json(
            {
                "operator": operator.name,
                "token": token,
                "token_expires_at": _iso(operator.token_expires_at),
            }
        )
        return
    typer.echo(token)  # alone on stdout, so it can be captured
    print_error(
        f"operator {operator.name} {what}; the token above is shown only this once "
        f"and expires {format_time(operator.token_expires_at)}"
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
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes sharing the port, each a replica on the state database "
            "(one process uses one core).",
            min=1,
            max=64,
        ),
    ] = 1,
    state_dir: StateDir = None,
) -> None:
    """Run the HTTP API (agents: client assertion + DPoP; approvers and operators: tokens)."""
    import uvicorn
    from pydantic import ValidationError

    from opsgate.server import create_app, settle_heap, uvicorn_options
    from opsgate.server.app import WORKER_EXTERNAL_URL, WORKER_POLICIES, WORKER_STATE_DIR

    gate = open_gate(state_dir, publish_policies=True)
    gate.audit.check_checkpoint_file()
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
    except ValidationError as exc:
        why = str(exc.errors()[0].get("msg", "not a URL")).removeprefix("Value error, ")
        raise ConfigError(
            f"invalid --external-url: {safe_text(why)}", code="config_invalid"
        ) from None
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        # Bounded request heads and a bounded number of connections per process.
        "h11_max_incomplete_event_size": 16 * 1024,
        "limit_concurrency": 1024,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 10,
        **uvicorn_options(settings),
    }
    where = f"on {host}:{port} as {url} (approvers sign in at {url.rstrip('/')}/ui)"
    if workers > 1:
        # The workers open the gate themselves (a spawned process shares no connection
        # or thread with this one); this one only checked it and supervises them.
        no_policies = gate.policies is None
        os.environ[WORKER_STATE_DIR] = str(gate.state_dir)
        os.environ[WORKER_EXTERNAL_URL] = url
        os.environ[WORKER_POLICIES] = gate.state.policy_digest or ""
        gate.close()
        print_error(f"opsgate serving {gate.state_dir} with {workers} workers {where}")
        if no_policies:
            print_error(NO_POLICIES)
        if not _supervise(workers, options):
            raise typer.Exit(1)
        return
    # The app closes the gate when it shuts down (signed tail, summaries), before
    # uvicorn hands on a SIGTERM it caught.
    application = create_app(gate, settings, owns_gate=True)
    print_error(f"opsgate serving {gate.state_dir} {where}")
    if gate.policies is None:
        print_error(NO_POLICIES)
    settle_heap()
    uvicorn.run(application, **options)
    gate.close()


def _supervise(workers: int, options: dict[str, Any]) -> bool:
    """Run `workers` worker processes on one socket under uvicorn's supervisor; False
    when one failed to start (the supervisor then stops them all)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "opsgate.server.app:worker_app", factory=True, workers=workers, **options
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        print_error("error [not_ready]: a worker failed to start (see above); server stopped")
        return False
    return True


# -- trust -------------------------------------------------------------------------------------


@trust_app.command("show")
@handle_errors
def trust_show(
    agent: Annotated[str | None, typer.Argument(help="One agent (default: all).")] = None,
    state_dir: StateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Trust scores: own and effective (capped by every ancestor)."""
    gate = open_gate(state_dir)
    agents = [gate.agents.get(agent)] if agent else gate.agents.list()
    thresholds = gate.config.trust
    rows: list[dict[str, Any]] = []
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
        print_json(rows)
        return
    table = new_table("agent", "score", "effective", "status", "band")
    for r in rows:
        table.add_row(
            escape(r["name"]), str(r["score"]), str(r["effective"]), r["status"], r["band"]
        )
    console().print(table)


@trust_app.command("history")
@handle_errors
def trust_history(agent: str, state_dir: StateDir = None, json_out: JsonOut = False) -> None:
    """Explain an agent's score line by line: cause, delta, resulting score, evidence."""
    gate = open_gate(state_dir)
    a = gate.agents.get(agent)
    changes = gate.trust.history(a.did)
    if json_out:
        print_json([c.to_dict() for c in changes])
        return
    table = new_table("seq", "time", "cause", "delta", "score", "reason")
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
            str(c.audit_seq or "-"), format_time(c.at), c.cause, delta, str(c.score), escape(reason)
        )
    console().print(table)
    console().print(f"{a.name}: score {a.trust_score}, effective {a.effective_trust}")


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
    gate = open_gate(state_dir)
    who = by if by is not None else (login_name() or "operator")
    change = gate.set_trust_score(agent, score, reason=reason, by=who)
    console().print(f"{gate.agents.get(agent).name}: score {change.score} ({change.delta:+d})")


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


def _unechoed(message: str) -> str:
    """The parser's "unexpected extra argument(s) (...)" without the words: a stray
    word is as likely a password typed after the path as a typo, and a short one has
    no shape the scrubber would recognise."""
    if not message.startswith("Got unexpected extra argument"):
        return message
    plural = message.startswith("Got unexpected extra arguments")
    return f"Got unexpected extra argument{'s' if plural else ''} (not shown)"


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2."""
    from typer import Abort
    from typer._click.exceptions import ClickException

    from opsgate.audit.sanitize import log_to_stderr

    log_to_stderr()
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        message = _unechoed(exc.format_message())
        if message:  # bare `opsgate` shows help and exits 2 without an error line
            print_error(f"error [usage]: {message}{_repeat_hint(exc, message)}")
        sys.exit(2)
    except Abort:
        print_error("error [aborted]: aborted")
        sys.exit(1)
    except Exception as exc:  # a bug or an unforeseen environment: still one line
        if os.environ.get("OPSGATE_DEBUG"):
            raise
        print_error(
            f"error [internal]: unexpected {exc.__class__.__name__}; "
            "set OPSGATE_DEBUG=1 to see the traceback"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
