"""Credentials: a client assertion for a credential bound to the agent's key; renew; revoke."""

from __future__ import annotations

import contextlib
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from opsgate.credentials.manager import Credential
from opsgate.errors import InvalidCredential, OpsgateError
from opsgate.server.context import ServerContext, unverified_sub
from opsgate.server.dpop import check_assertion
from opsgate.server.routes.common import Body, body_doc, ctx_of, json

router = APIRouter(prefix="/v1/credentials", tags=["credentials"])

# Refusals only an agent's own key can produce (the signature verified first):
# audited against that agent; anything earlier is unproven and only counted.
_SIGNED_REFUSALS = frozenset(
    {
        "bad_audience",
        "assertion_not_yet_valid",
        "assertion_expired",
        "assertion_lifetime",
        "assertion_replayed",
    }
)


class AssertionBody(Body):
    assertion: str
    scope: list[str]
    ttl_minutes: float | None = None


class RenewBody(Body):
    scope: list[str] | None = None
    ttl_minutes: float | None = None


def _issued(c: Credential) -> dict[str, object]:
    return {
        "token": c.token,
        "token_type": "DPoP",
        "jti": c.jti,
        "agent": c.agent_id,
        "scope": c.scope,
        "issued_at": c.issued_at.isoformat(),
        "expires_at": c.expires_at.isoformat(),
    }


@router.post("", openapi_extra=body_doc(AssertionBody), status_code=201)
async def obtain(request: Request) -> Response:
    """Exchange a client assertion (a JWT signed by the agent's own key) for a
    credential bound to that key."""
    ctx = ctx_of(request)
    ctx.check_blocked(request)
    body = ctx.parse(await ctx.body(request), AssertionBody)
    gate = ctx.gate

    def issue() -> Credential:
        now = time.time()
        did = asserted_agent(ctx, request, body.assertion, now)
        return gate.credential_manager.issue_credential(did, body.scope, body.ttl_minutes, now=now)

    return json(_issued(await run_in_threadpool(issue)), 201)


def asserted_agent(ctx: ServerContext, request: Request, assertion: str, now: float) -> str:
    """The did whose key signed this client assertion for this gate (single use); a
    refusal the agent's own key produced is audited against it, none is charged."""
    try:
        did = check_assertion(
            assertion,
            rules=ctx.rules,
            now=now,
            use_once=ctx.gate.credential_manager.proofs.use_once,
            known=ctx.gate.agents.state,  # agent_not_found before anything is written
        )
    except InvalidCredential as exc:
        if exc.code in _SIGNED_REFUSALS:
            exc.detail["agent"] = None  # not a credential: nothing to charge
            _audit_refusal(ctx, exc, assertion, now)
        raise
    request.state.agent = did
    return did


def _audit_refusal(ctx: ServerContext, exc: InvalidCredential, assertion: str, now: float) -> None:
    with contextlib.suppress(OpsgateError):  # refused either way
        ctx.gate.audit.append(
            "credential.assertion_refused",
            actor=unverified_sub(assertion),  # the signature verified: it is this agent's
            at=now,
            code=exc.code,
            reason=exc.message,
        )


@router.post("/renew", openapi_extra=body_doc(RenewBody), status_code=201)
async def renew(request: Request) -> Response:
    """A fresh credential for the presenting agent (default: the same scope)."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    ctx.agent_scheme(request)  # the role before the body
    body = ctx.parse(raw, RenewBody)
    claims = await ctx.agent_claims(request, raw)
    scope = body.scope if body.scope is not None else list(claims.scope)
    cred = await run_in_threadpool(
        ctx.gate.credential_manager.issue_credential, claims.sub, scope, body.ttl_minutes
    )
    return json(_issued(cred), 201)


@router.post("/revoke", openapi_extra=body_doc(Body))
async def revoke(request: Request) -> Response:
    """Revoke the credential presented (an agent giving up its own credential)."""
    ctx = ctx_of(request)
    raw = await ctx.body(request)
    ctx.agent_scheme(request)  # the role before the body
    ctx.parse(raw, Body)
    claims = await ctx.agent_claims(request, raw)
    await run_in_threadpool(
        lambda: ctx.gate.credential_manager.revoke(claims.jti, reason="revoked by its agent")
    )
    return json({"revoked": claims.jti})
