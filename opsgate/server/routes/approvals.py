"""Approvals for approvers: list, show, approve, deny (approver token, Basic auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from opsgate.errors import ApprovalError, HttpRefusal
from opsgate.server.routes.common import Body, body_doc, ctx_of, json

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])
_STATUSES = ("pending", "approved", "denied", "expired", "consumed")


class DecisionBody(Body):
    comment: str | None = None


@router.get("")
async def list_approvals(request: Request, status: str | None = None) -> Response:
    """The requests this approver may decide on (optionally of one status)."""
    ctx = ctx_of(request)
    who, _ = await ctx.approver(request)
    if status is not None and status not in _STATUSES:
        raise HttpRefusal(f"status must be one of {', '.join(_STATUSES)}", code="request_invalid")
    requests = await run_in_threadpool(lambda: ctx.gate.approvals.list(status=status))
    return json([r.to_dict() for r in requests if who in r.approvers])


@router.get("/{approval_id}")
async def show(approval_id: str, request: Request) -> Response:
    """One request: the exact plan it is bound to, and every decision."""
    ctx = ctx_of(request)
    who, _ = await ctx.approver(request)
    req = await run_in_threadpool(ctx.gate.approvals.get, approval_id)
    if who not in req.approvers:
        raise ApprovalError(f"no approval request {approval_id!r}", code="approval_not_found")
    return json(req.to_dict())


async def _decide(approval_id: str, request: Request, verdict: str) -> Response:
    ctx = ctx_of(request)
    who, token = await ctx.approver(request)
    body = ctx.parse(await ctx.body(request), DecisionBody)
    service = ctx.gate.approvals
    decide = service.approve if verdict == "approve" else service.deny
    req = await run_in_threadpool(
        lambda: decide(approval_id, approver=who, token=token, comment=body.comment)
    )
    return json(req.to_dict())


@router.post("/{approval_id}/approve", openapi_extra=body_doc(DecisionBody))
async def approve(approval_id: str, request: Request) -> Response:
    return await _decide(approval_id, request, "approve")


@router.post("/{approval_id}/deny", openapi_extra=body_doc(DecisionBody))
async def deny(approval_id: str, request: Request) -> Response:
    return await _decide(approval_id, request, "deny")
