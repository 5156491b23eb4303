"""The HTTP API: `create_app(gate, settings)` builds it; `opsgate serve` runs it.

A thin layer: every privileged call is the Gate's public API (execute, resume,
authorize, authenticate, credential_manager, approvals, agents, audit, trust).
The layer adds only what HTTP needs: who is calling (context.py), proofs of
possession (dpop.py), limits (limits.py), errors as JSON with the right status
(errors.py) and metrics (metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsgate.config import ServerConfig
from opsgate.errors import ConfigError, HttpRefusal, NotFound, OpsgateError
from opsgate.gate import Gate
from opsgate.server.authorizer import Authorizer
from opsgate.server.context import ServerContext
from opsgate.server.dpop import ProofRules, normalise_url
from opsgate.server.errors import status_of
from opsgate.server.limits import BodyLimit, RefusalLimiter
from opsgate.server.metrics import ServerMetrics
from opsgate.server.paths import route_path
from opsgate.server.routes import (
    agent_tools,
    agents,
    approvals,
    audit,
    credentials,
    health,
    operations,
    policy,
    trust,
)
from opsgate.server.ui import SecurityHeaders, UiSettings
from opsgate.server.ui import router as ui_router


def _error_body(exc: OpsgateError) -> dict[str, Any]:
    return exc.to_dict()


def create_app(
    gate: Gate,
    settings: ServerConfig | None = None,
    *,
    direct_authorize: bool = True,
    owns_gate: bool = False,
) -> FastAPI:
    """The API of `gate`. `settings.external_url` is required: proofs name it.

    `direct_authorize=False`: `POST /v1/authorize` through FastAPI's router like every
    other route (the tests compare the two ways; see `DirectAuthorize`).
    `owns_gate`: the app closes the gate when it shuts down (a worker process's)."""
    settings = settings or gate.config.server
    if settings.external_url is None:
        raise ConfigError(
            "the server needs its external URL (server.external_url): proofs of "
            "possession and client assertions name it",
            code="external_url_missing",
        )
    external = normalise_url(settings.external_url).rstrip("/")
    limits = gate.config.limits
    ctx = ServerContext(
        gate=gate,
        settings=settings,
        external_url=external,
        rules=ProofRules(
            external_url=external,
            allowed_algorithms=limits.allowed_algorithms,
            window_seconds=settings.proof_window_seconds,
            leeway_seconds=limits.leeway_seconds,
            replay_skew_seconds=limits.proof_clock_skew_seconds,
        ),
        metrics=ServerMetrics(gate),
        limiter=RefusalLimiter(burst=settings.refusal_burst, rate=settings.refusal_rate),
        # SQLite: one thread decides authorize requests in batches. PostgreSQL: each
        # request's reads and its proof id's record are round trips to the server,
        # which one thread would make one after another; there they stay on the pool.
        authorizer=Authorizer(gate) if gate.store.is_sqlite else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # In-flight requests have been answered: the authorize thread ends (deciding
        # whatever is still queued) before the gate it decides with is closed.
        if ctx.authorizer is not None:
            await asyncio.to_thread(ctx.authorizer.close)
        if owns_gate:
            await asyncio.to_thread(gate.close)

    app = GateApp(
        title="opsgate",
        summary="The gate every privileged operation of an AI agent passes through.",
        version="0.1.0",
        # No redirect to the path with or without a trailing slash: Starlette builds
        # its Location from the request's Host header, which the gate never trusts.
        redirect_slashes=False,
        # No Swagger UI or ReDoc pages: they load unpinned scripts from a CDN on the
        # gate's own origin, where the approver UI's session cookie lives. The schema
        # stays at /openapi.json (JSON, no script), for tools that read it.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks off: the gate reports through /metrics and
        # its audit log, and the hooks asked the OpenTelemetry API for a configured
        # provider on every request (a few per cent of the authorize route's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    app.state.ui = UiSettings.of(external, settings.ui_session_minutes)

    @app.exception_handler(OpsgateError)
    async def opsgate_error(request: Request, exc: OpsgateError) -> JSONResponse:
        return refusal_response(ctx, request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        err = HttpRefusal(f"{where}: {str(first.get('msg', '')).lower()}", code="request_invalid")
        ctx.refused(request, err, 422)
        return JSONResponse(_error_body(err), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail).lower()
        err: OpsgateError
        if exc.status_code == 404:
            err = NotFound(message, code="not_found")
        elif exc.status_code == 405:
            err = HttpRefusal(message, code="method_not_allowed")
        else:
            err = HttpRefusal(message, code="http_error")
        return JSONResponse(_error_body(err), status_code=exc.status_code)

    # The agents' hot routes first: a request is matched against the routes in order.
    for module in (
        operations,
        health,
        credentials,
        approvals,
        agents,
        audit,
        trust,
        policy,
        agent_tools,
    ):
        app.include_router(module.router)
    app.include_router(ui_router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.dpop_nonce:
        app.add_middleware(NonceHeader, ctx=ctx)
    # Added last, so outermost: the UI's headers on every /ui answer, the body limit's
    # refusals included.
    app.add_middleware(SecurityHeaders, https=app.state.ui.https)
    if direct_authorize:
        app.authorize_route = authorize_route(ctx, settings, debug=app.debug)
    return app


class GateApp(FastAPI):
    """The API, with `POST /v1/authorize` (the agents' hottest call) taken before
    FastAPI's stack: its telemetry and body-limit wrappers, the server-error, UI
    header, body-limit and nonce middlewares, routing, dependency solving and
    exception middleware cost ~30 µs of a ~55 µs request on the event loop, for an
    endpoint that takes a plain Request. `authorize_route` answers it with the same
    endpoint behind the same middlewares that concern it (server errors, nonce, body
    limit; the UI's headers are for /ui only): the same answers, refusals and 500s
    as through the router, which keeps every other method and path (and the schema).
    None: every request through the router."""

    authorize_route: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.authorize_route
        if route is not None and scope["type"] == "http" and scope["method"] == "POST":
            if self.root_path:
                scope["root_path"] = self.root_path  # as FastAPI's own call does first
            if route_path(scope) == "/v1/authorize":
                scope["app"] = self  # as Starlette's call does: routes find the context
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def authorize_route(ctx: ServerContext, settings: ServerConfig, *, debug: bool) -> Any:
    """`DirectAuthorize` behind the middlewares the router's way puts in front of it,
    in the same order: server errors (a 500, the exception re-raised for the server
    to log), then the nonce header, then the body limit."""
    from starlette.middleware.errors import ServerErrorMiddleware

    inner: Any = BodyLimit(DirectAuthorize(ctx), max_bytes=settings.max_body_bytes)
    if settings.dpop_nonce:
        inner = NonceHeader(inner, ctx=ctx)
    return ServerErrorMiddleware(inner, debug=debug)


# Young collections every this many net allocations (CPython's default is 700): a
# request allocates a few thousand short-lived objects that die with it, so a young
# collection every few requests walked the live ones of every request in flight.
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_heap() -> None:
    """Before serving: what is alive now (modules, the gate, its policies, caches)
    lives as long as the process, so collections stop walking it (`gc.freeze`: a full
    collection of the started server walks ~1M objects, about 0.1 s, on the request
    path), and young collections run less often. Measured under load on the
    authorize route, 8 seconds: 700 young, 64 middle and 4 full collections before,
    none after; CPU per request -6%, p99 ~30 ms instead of 70-130 ms."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


# How `opsgate serve --workers N` tells its worker processes what the parent checked:
# the state dir (absolute), the external URL the proofs name, and the digest of the
# policies (with the decision settings) it loaded and published.
WORKER_STATE_DIR = "OPSGATE_STATE_DIR"
WORKER_EXTERNAL_URL = "OPSGATE_SERVE_EXTERNAL_URL"
WORKER_POLICIES = "OPSGATE_SERVE_POLICIES"


def worker_app() -> FastAPI:
    """The app of one worker process of `opsgate serve --workers N` (uvicorn's factory).

    Each worker is a replica of its own on the shared state database (its own gate,
    caches and authorize thread; revocations reach it through the change feed, proof
    ids through the replay store, the audit chain through the database's write lock),
    so N workers use N cores where one process is bound to one by the GIL. The parent
    opened the gate first (migrations, policies, the external URL) and put what it
    checked in the environment the workers start with. A worker started again later
    (the one before it died) serves the policies its server loaded or none: files
    edited since are refused (`policies_changed`), not put in force by a crash.

    A worker that cannot start says why on one line and exits with uvicorn's startup
    failure code, which stops the server (exit 1) rather than restarting it forever."""
    from pathlib import Path

    from uvicorn.config import STARTUP_FAILURE  # its supervisor then stops, not restarts

    from opsgate.audit.sanitize import log_to_stderr

    log_to_stderr()
    _exit_with_parent()
    state_dir = os.environ.get(WORKER_STATE_DIR, "")
    external = os.environ.get(WORKER_EXTERNAL_URL, "")
    policies = os.environ.get(WORKER_POLICIES, "")
    try:
        if not state_dir or not external or not policies:
            raise ConfigError(
                "a worker process is started by `opsgate serve --workers N`, which names its "
                "state dir, external URL and policies",
                code="config_invalid",
            )
        gate = Gate.open(
            Path(state_dir), create=False, publish_policies=True, expect_policies=policies
        )
        try:
            base = gate.config.server
            settings = base.model_validate({**base.model_dump(), "external_url": external})
            app = create_app(gate, settings, owns_gate=True)
        except BaseException:
            gate.close()
            raise
    except Exception as exc:  # noqa: BLE001 - any failure to start is one line and exit 3
        if isinstance(exc, OpsgateError):
            detail = f"[{exc.code}]: {exc.message}"  # an error's own text is safe to show
        else:
            detail = f"[internal]: unexpected {type(exc).__name__}"
        print(f"error {detail} (worker {os.getpid()} not started)", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    settle_heap()
    return app


def _exit_with_parent() -> None:
    """Linux: this worker is sent SIGTERM when the process that supervises it dies (a
    `kill -9` of `opsgate serve` must not leave workers serving the port unsupervised);
    if it is already gone, the worker does not start."""
    import ctypes
    import signal

    from uvicorn.config import STARTUP_FAILURE

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's pipe still ends the worker's health checks
    if os.getppid() != parent:
        sys.exit(STARTUP_FAILURE)


def uvicorn_options(settings: ServerConfig) -> dict[str, Any]:
    """uvicorn's options that are the server's own: its HTTP protocol (each response
    in one write, `OneWriteHttp`), and how it reads the client's address:
    X-Forwarded-For only from the configured proxies (uvicorn's default trusts it from
    any loopback peer, so a local client could choose the address its refusals are
    counted against)."""
    from opsgate.server.protocol import OneWriteHttp  # uvicorn's, imported to serve only

    if not settings.trusted_proxies:
        return {"http": OneWriteHttp, "proxy_headers": False}
    return {
        "http": OneWriteHttp,
        "proxy_headers": True,
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }


def refusal_response(ctx: ServerContext, request: Request, exc: OpsgateError) -> JSONResponse:
    """A refused request's answer: the error as JSON, its status, and the headers the
    protocol asks for (a DPoP challenge, a fresh nonce, Retry-After). Counted."""
    status = status_of(exc)
    ctx.refused(request, exc, status)
    headers: dict[str, str] = {}
    if exc.code == "use_dpop_nonce":
        headers["WWW-Authenticate"] = (
            'DPoP error="use_dpop_nonce", error_description="resource server requires '
            'nonce in DPoP proof", algs="EdDSA Ed25519"'
        )
        headers["DPoP-Nonce"] = str(exc.detail["nonce"])
    elif status == 401 and isinstance(exc.detail.get("agent", ""), str | None):
        headers["WWW-Authenticate"] = 'DPoP algs="EdDSA Ed25519"'
    retry = exc.detail.get("retry_after")
    if status == 429 and isinstance(retry, float):
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return JSONResponse(_error_body(exc), status_code=status, headers=headers)


class DirectAuthorize:
    """ASGI app of `POST /v1/authorize` alone (`GateApp` sends it only those): the
    same endpoint function and the same refusal answers (`refusal_response`) as
    through the router; an unexpected exception goes on to the server's error
    middleware, as from the router."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive, send)
        response: Response
        try:
            response = await operations.authorize(request)
        except OpsgateError as exc:
            response = refusal_response(self.ctx, request, exc)
        await response(scope, receive, send)


class NonceHeader:
    """ASGI middleware: every response carries the current DPoP-Nonce, so a client
    keeps a fresh one without an extra round trip (RFC 9449 §8.2)."""

    def __init__(self, app: Any, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_nonce(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"dpop-nonce" for name, _ in headers):
                    headers.append((b"dpop-nonce", self.ctx.current_nonce().encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_nonce)
