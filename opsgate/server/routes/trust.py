"""Trust scores and their history (operators and approvers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from opsgate.server.routes.common import ctx_of, json

router = APIRouter(prefix="/v1/trust", tags=["trust"])


@router.get("")
async def scores(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.operator_or_approver(request)

    def rows() -> list[dict[str, object]]:
        return [
            {
                "name": a.name,
                "did": a.did,
                "score": a.trust_score,
                "effective": a.effective_trust,
                "status": a.status,
            }
            for a in ctx.gate.agents.list()
        ]

    return json(await run_in_threadpool(rows))


@router.get("/{agent}/history")
async def history(agent: str, request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.operator_or_approver(request)

    def changes() -> list[dict[str, object]]:
        did = ctx.gate.agents.resolve(agent)
        ctx.gate.agents.state(did)  # agent_not_found for an unknown did
        return [c.to_dict() for c in ctx.gate.trust.history(did)]

    return json(await run_in_threadpool(changes))
