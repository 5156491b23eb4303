"""Liveness, readiness, the JWKS and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from opsgate.errors import OpsgateError
from opsgate.server.routes.common import ctx_of, json

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    """The process answers (nothing else is checked)."""
    return json({"status": "alive"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """The database answers, this replica's view of other replicas is fresh, and its
    policies are the ones in force (else it refuses every decision: policy_mismatch)."""
    ctx = ctx_of(request)

    def probe() -> str | None:
        gate = ctx.gate
        try:
            gate.store.ping()
            gate.state.maybe_refresh()
        except OpsgateError as exc:
            return exc.code
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            return f"database unreachable ({exc.__class__.__name__})"
        if not gate.state.is_fresh():
            return "replica view is stale"
        problem = gate.state.policy_problem()
        return None if problem is None else f"policy_mismatch: {problem}"

    problem = await run_in_threadpool(probe)
    if problem is not None:
        return json({"status": "not_ready", "code": "not_ready", "message": problem}, 503)
    return json({"status": "ready"})


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> Response:
    ctx = ctx_of(request)
    return json(await run_in_threadpool(ctx.gate.jwks))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    if not ctx.settings.metrics_public:
        await ctx.operator(request)
    body = await run_in_threadpool(ctx.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
