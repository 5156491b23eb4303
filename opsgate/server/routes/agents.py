"""Agents for operators: register (with the agent's own did), delegate, suspend, reinstate."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from opsgate.server.routes.common import Body, body_doc, ctx_of, json

router = APIRouter(prefix="/v1/agents", tags=["agents"])


class RegisterBody(Body):
    name: str
    capabilities: list[str]
    sponsor: str
    trust_score: int | None = None
    ttl: float | None = None
    # The did of a key the agent generated on its own machine: the gate then never
    # holds its private key. Without it the gate generates one (see export-key).
    did: str | None = None


class DelegateBody(Body):
    name: str
    capabilities: list[str]
    trust_score: int | None = None
    ttl: float | None = None
    sponsor: str | None = None
    did: str | None = None


class ReasonBody(Body):
    reason: str | None = None


@router.get("")
async def list_agents(request: Request, status: str | None = None) -> Response:
    ctx = ctx_of(request)
    await ctx.operator(request)
    agents = await run_in_threadpool(lambda: ctx.gate.agents.list(status=status))
    return json([a.to_dict() for a in agents])


@router.get("/{agent}")
async def show_agent(agent: str, request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.operator(request)
    return json(await run_in_threadpool(lambda: ctx.gate.agents.get(agent).to_dict()))


@router.post("", openapi_extra=body_doc(RegisterBody), status_code=201)
async def register(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await ctx.operator(request)
    b = ctx.parse(await ctx.body(request), RegisterBody)
    agent = await run_in_threadpool(
        lambda: ctx.gate.register_agent(
            b.name,
            b.capabilities,
            b.sponsor,
            b.trust_score,
            ttl=b.ttl,
            did=b.did,
            actor=f"operator:{who}",
        )
    )
    return json(agent.to_dict(), 201)


@router.post("/{parent}/delegate", openapi_extra=body_doc(DelegateBody), status_code=201)
async def delegate(parent: str, request: Request) -> Response:
    ctx = ctx_of(request)
    who = await ctx.operator(request)
    b = ctx.parse(await ctx.body(request), DelegateBody)
    child = await run_in_threadpool(
        lambda: ctx.gate.agents.get(parent).delegate(
            b.name,
            b.capabilities,
            b.ttl,
            trust_score=b.trust_score,
            sponsor=b.sponsor,
            did=b.did,
            requested_by=f"operator:{who}",
        )
    )
    return json(child.to_dict(), 201)


@router.post("/{agent}/suspend", openapi_extra=body_doc(ReasonBody))
async def suspend(agent: str, request: Request) -> Response:
    ctx = ctx_of(request)
    who = await ctx.operator(request)
    b = ctx.parse(await ctx.body(request), ReasonBody)
    affected = await run_in_threadpool(
        lambda: ctx.gate.agents.suspend(agent, reason=b.reason, actor=f"operator:{who}")
    )
    return json({"suspended": affected})


@router.post("/{agent}/reinstate", openapi_extra=body_doc(ReasonBody))
async def reinstate(agent: str, request: Request) -> Response:
    ctx = ctx_of(request)
    who = await ctx.operator(request)
    b = ctx.parse(await ctx.body(request), ReasonBody)
    affected = await run_in_threadpool(
        lambda: ctx.gate.agents.reinstate(agent, reason=b.reason or "", actor=f"operator:{who}")
    )
    return json({"reinstated": affected})
