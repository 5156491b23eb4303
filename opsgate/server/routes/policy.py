"""Policy explain for operators: which rules a request would match, and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from opsgate.errors import PolicyError
from opsgate.policy.request import PolicyRequest, canonical_target
from opsgate.server.routes.common import Body, body_doc, ctx_of, json

router = APIRouter(prefix="/v1/policy", tags=["policy"])


class ExplainBody(Body):
    action: str
    resource: str
    params: dict[str, Any] = Field(default_factory=dict)
    destructive: bool = False
    # An agent's name or did: its trust, depth and sponsor as the gate sees them now.
    agent: str | None = None


@router.post("/explain", openapi_extra=body_doc(ExplainBody))
async def explain(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.operator(request)
    b = ctx.parse(await ctx.body(request), ExplainBody)

    def decide() -> dict[str, Any]:
        gate = ctx.gate
        if gate.policies is None:
            raise PolicyError("no policies are loaded", code="policy_missing")
        agent: dict[str, Any] = {}
        if b.agent is not None:
            st = gate.agents.state(b.agent)
            agent = {
                "agent_name": st.name,
                "agent_did": st.did,
                "agent_sponsor": st.sponsor,
                "agent_depth": st.depth,
                "agent_trust_score": gate.trust.effective(st),
            }
        now = datetime.now(UTC)
        # As the gate sees it: one case, its aliases resolved, the environment derived.
        resource, environment, undeclared = canonical_target(
            b.action, b.resource, gate.environments
        )
        req = PolicyRequest(
            action=b.action,
            resource=resource,
            environment=environment,
            destructive=b.destructive,
            params=b.params,
            hour=now.hour,
            weekday=now.weekday(),
            minute=now.minute,
            **agent,
        )
        note = (
            None
            if undeclared is None
            else f"the gate refuses this request before policy: environment {undeclared!r} "
            "is not declared (environment_undeclared)"
        )
        mismatch = gate.state.policy_problem()
        if mismatch is not None:  # what is explained is not what the replicas enforce
            note = f"this replica refuses every decision (policy_mismatch): {mismatch}"
        return {
            "request": req.to_dict(),
            "decision": gate.policies.decide(req).to_dict(),
            "note": note,
        }

    return json(await run_in_threadpool(decide))
