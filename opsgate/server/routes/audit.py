"""The audit log for operators: tail, export (JSON lines), verify."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from opsgate.server.routes.common import MAX_SEQ, ctx_of, json

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/tail")
async def tail(
    request: Request,
    n: int = Query(20, ge=1, le=10_000),
    type: str | None = None,
    actor: str | None = None,
) -> Response:
    ctx = ctx_of(request)
    await ctx.operator(request)
    records = await run_in_threadpool(lambda: ctx.gate.audit.tail(n, event_type=type, actor=actor))
    return json([{**r.event, "hash": r.hash} for r in records])


@router.get("/export")
async def export(request: Request, after_seq: int = Query(0, ge=0, le=MAX_SEQ)) -> Response:
    """Every event after `after_seq` as JSON lines with prev_hash and hash."""
    ctx = ctx_of(request)
    await ctx.operator(request)

    def lines() -> Iterator[bytes]:
        for r in ctx.gate.audit.events(after_seq=after_seq):
            yield orjson.dumps({"event": r.event, "prev_hash": r.prev_hash, "hash": r.hash})
            yield b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/verify")
async def verify(request: Request) -> Response:
    ctx = ctx_of(request)
    await ctx.operator(request)
    report = await run_in_threadpool(ctx.gate.audit.verify)
    return json(report.to_dict(), 200 if report.ok else 409)
