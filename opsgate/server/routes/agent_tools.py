"""What an agent's tool surface (`opsgate mcp`) needs besides operations.

- `POST /v1/credentials/grants`: the agent's own grants, for a client assertion signed
  by its key (the same check as obtaining a credential). A tool surface offers only
  the tools those grants can cover and asks for a credential of exactly them.
- `POST /v1/tool-calls`: one audit event per tool call (agent, tool, argument
  digest, outcome), written as the authenticated agent (DPoP, body bound). The
  operation a call ran is audited by the gate itself; this record says which tool
  asked for it, with what arguments (by digest, never a secret value).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from opsgate.errors import safe_text
from opsgate.server.routes.common import Body, body_doc, ctx_of, json
from opsgate.server.routes.credentials import asserted_agent

router = APIRouter(prefix="/v1", tags=["agent tools"])

#: What a tool call came to, as a tool surface reports it.
ToolOutcome = Literal["succeeded", "failed", "dry_run", "approval_pending", "refused", "invalid"]


class GrantsBody(Body):
    assertion: str


class ToolCallBody(Body):
    surface: Literal["mcp"] = "mcp"
    tool: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    args_digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    outcome: ToolOutcome
    #: Given arguments the digest leaves out besides a secret's value (a count only).
    args_withheld: int | None = Field(default=None, ge=1, le=2**31 - 1)
    code: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,64}$")
    # No length limit of their own (the body's bounds them): what the call asked is
    # recorded, described by its length where it is long (safe_text), never refused
    # (a refused record would leave the call without its `tool.call` event).
    capability: str | None = None
    approval_id: str | None = None
    audit_seq: int | None = Field(default=None, ge=1)


def grants_of(gate: Any, did: str) -> dict[str, Any]:
    """An agent's own view of itself: name, status and the grants its chain proves."""
    state = gate.agents.state(did)
    return {
        "did": state.did,
        "name": state.name,
        "status": state.effective_status,
        "capabilities": [] if state.grant is None else list(state.grant.capabilities),
    }


@router.post("/credentials/grants", openapi_extra=body_doc(GrantsBody))
async def own_grants(request: Request) -> Response:
    """The presenting agent's name, status and grants (client assertion, single use)."""
    ctx = ctx_of(request)
    ctx.check_blocked(request)
    body = ctx.parse(await ctx.body(request), GrantsBody)
    gate = ctx.gate

    def read() -> dict[str, Any]:
        did = asserted_agent(ctx, request, body.assertion, time.time())
        return grants_of(gate, did)

    return json(await run_in_threadpool(read))


@router.post("/tool-calls", openapi_extra=body_doc(ToolCallBody), status_code=201)
async def record_tool_call(request: Request) -> Response:
    """Audit one tool call of the presenting agent (`tool.call`)."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    ctx.agent_scheme(request)  # the role before the body
    body = ctx.parse(raw, ToolCallBody)
    claims = await ctx.agent_claims(request, raw)
    record = await run_in_threadpool(
        lambda: ctx.gate.audit.append(
            "tool.call",
            actor=claims.sub,
            at=time.time(),
            jti=claims.jti,
            surface=body.surface,
            tool=body.tool,
            args_digest=body.args_digest,
            **({} if body.args_withheld is None else {"args_withheld": body.args_withheld}),
            outcome=body.outcome,
            code=body.code,
            capability=None if body.capability is None else safe_text(body.capability),
            approval=None if body.approval_id is None else safe_text(body.approval_id),
            operation_seq=body.audit_seq,
        )
    )
    return json({"seq": record.seq}, 201)
