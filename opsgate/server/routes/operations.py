"""Operations: execute (or dry run), resume an approved one, authorize, and read status.

Each goes through the gate's one path with the request's DPoP proof as its proof
of possession: the proof's `req` must be the gate's own digest of the operation
(or the capability and params, or the approval), so a proof moves to no other body.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from opsgate.approvals import PendingApproval
from opsgate.errors import ApprovalError, NotFound, OpsgateError, shown
from opsgate.gate import AuthorizeRequest
from opsgate.operations.base import Operation, Outcome
from opsgate.secrets.value import SecretValue
from opsgate.server.routes.common import MAX_SEQ, Body, body_doc, ctx_of, iso, json, result_response

router = APIRouter(prefix="/v1", tags=["operations"])


class ExecuteBody(Body):
    action: str
    resource: str
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False
    approval_id: str | None = None
    # A secret write's value (Operation.secret): never a param, so never in the
    # audit or an approval's stored request; the approval digest binds it.
    secret: str | None = Field(default=None, min_length=1, max_length=1_048_576)


class ResumeBody(Body):
    # A secret write's value, supplied again (the gate never keeps it with the request):
    # only the value the approval's digest binds is written.
    secret: str | None = Field(default=None, min_length=1, max_length=1_048_576)


class AuthorizeBody(Body):
    capability: str
    params: dict[str, Any] | None = None


def _not_yours_is_not_found(exc: OpsgateError, approval_id: str | None) -> None:
    """Another agent's approval is answered as one that does not exist, as the status
    route does: an agent learns nothing about others' requests (the audit keeps the
    real code)."""
    if exc.code == "approval_not_yours":
        raise ApprovalError(
            f"no approval request {shown(approval_id)}", code="approval_not_found"
        ) from None


def _count(ctx: Any, result: Outcome | PendingApproval) -> None:
    effect = "require_approval" if isinstance(result, PendingApproval) else "allow"
    ctx.metrics.decision(effect)


@router.post("/operations", openapi_extra=body_doc(ExecuteBody))
async def execute(request: Request) -> Response:
    """Run an operation: 200 with its outcome, or 202 when it waits for approval."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    token, check = ctx.agent_auth(request, audited=True)  # the role before the body
    body = ctx.parse(raw, ExecuteBody)
    secret = None if body.secret is None else SecretValue(body.secret)
    operation = Operation(body.action, body.resource, body.params, body.dry_run, secret=secret)
    started = time.perf_counter()
    try:
        result = await run_in_threadpool(
            lambda: ctx.gate.execute(token, operation, proof=check, approval_id=body.approval_id)
        )
    except OpsgateError as exc:
        if exc.code == "operation_denied":
            ctx.metrics.decision("deny")
        _not_yours_is_not_found(exc, body.approval_id)
        raise
    finally:
        ctx.metrics.operation_seconds.observe(time.perf_counter() - started)
    _count(ctx, result)
    return result_response(result)


@router.post("/approvals/{approval_id}/resume", openapi_extra=body_doc(ResumeBody))
async def resume(approval_id: str, request: Request) -> Response:
    """Run an approved request (the approval fixes the operation), once; a secret
    write's value is sent again as `secret`."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    token, check = ctx.agent_auth(request, audited=True)  # the role before the body
    body = ctx.parse(raw, ResumeBody)
    secret = None if body.secret is None else SecretValue(body.secret)
    started = time.perf_counter()
    try:
        result = await run_in_threadpool(
            lambda: ctx.gate.resume(approval_id, token, proof=check, secret=secret)
        )
    except OpsgateError as exc:
        _not_yours_is_not_found(exc, approval_id)
        raise
    finally:
        ctx.metrics.operation_seconds.observe(time.perf_counter() - started)
    _count(ctx, result)
    return result_response(result)


@router.post("/authorize", openapi_extra=body_doc(AuthorizeBody))
async def authorize(request: Request) -> Response:
    """Decide whether the credential may exercise a capability now (audited, scored)."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    token, check = ctx.agent_auth(request, audited=True)  # the role before the body
    body = ctx.parse(raw, AuthorizeBody)
    if ctx.authorizer is not None:
        decision = await ctx.authorizer.decide(
            AuthorizeRequest(token, body.capability, proof=check, params=body.params)
        )
    else:
        decision = await run_in_threadpool(
            lambda: ctx.gate.authorize(token, body.capability, proof=check, params=body.params)
        )
    ctx.metrics.decision(decision.effect)
    # orjson: a decision holds only text, numbers and lists of them.
    return Response(orjson.dumps(decision.to_dict()), media_type="application/json")


@router.get("/operations/approvals/{approval_id}")
async def approval_status(approval_id: str, request: Request) -> Response:
    """The status of one of the agent's own approval requests (others' are not found)."""
    ctx = ctx_of(request)
    claims = await ctx.agent_claims(request, b"")
    req = await run_in_threadpool(ctx.gate.approvals.get, approval_id)
    if req.requester_did != claims.sub:
        raise ApprovalError(f"no approval request {approval_id!r}", code="approval_not_found")
    return json(
        {
            "approval_id": req.id,
            "status": req.status,
            "capability": req.capability,
            "approvers": list(req.approvers),
            "min_approvals": req.min_approvals,
            "expires_at": iso(req.expires_at),
            "decisions": [
                {"approver": d.approver, "decision": d.decision, "at": iso(d.at)}
                for d in req.decisions
            ],
        }
    )


@router.get("/operations/{seq}")
async def operation_status(seq: int, request: Request) -> Response:
    """An operation's outcome by its audit seq (the agent's own operations only)."""
    ctx = ctx_of(request)
    claims = await ctx.agent_claims(request, b"")

    def find() -> Any:
        if not 1 <= seq <= MAX_SEQ:  # beyond what the database can hold: none such
            return None
        for record in ctx.gate.audit.events(after_seq=max(0, seq - 1), batch=1):
            return record if record.seq == seq else None
        return None

    record = await run_in_threadpool(find)
    if (
        record is None
        or record.actor != claims.sub
        or record.type not in ("operation.outcome", "operation.attempt", "operation.dry_run")
    ):
        raise NotFound(f"no operation {seq} of this agent", code="not_found")
    event = record.event
    return json(
        {
            "seq": record.seq,
            "type": record.type,
            "at": iso(record.at),
            "capability": event.get("capability"),
            "digest": event.get("digest"),
            "outcome": event.get("outcome"),
            "summary": event.get("summary"),
        }
    )
