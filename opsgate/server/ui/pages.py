"""The approval web UI at /ui: server-rendered pages for approvers.

An approver signs in with their approver token and gets a session (see
security.py for the cookie, CSRF and headers). Every page reads through the
gate's public API; the one thing a page changes, a decision, goes through
`ApprovalService.decide_in_session`, which checks the session in the same
transaction and refuses a sponsor like every other way in.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from opsgate.approvals.model import ApproverSession
from opsgate.audit.verify import VerifyReport
from opsgate.errors import ApprovalError, AuditError, OpsgateError, plain_text
from opsgate.server.context import ServerContext
from opsgate.server.errors import status_of
from opsgate.server.ui import views
from opsgate.server.ui.chart import trust_chart
from opsgate.server.ui.security import UiRefusal, csrf_ok, derive, parse_form, safe_next

HERE = Path(__file__).parent
STATIC: dict[str, tuple[bytes, str]] = {
    "ui.css": ((HERE / "static" / "ui.css").read_bytes(), "text/css; charset=utf-8"),
    "ui.js": ((HERE / "static" / "ui.js").read_bytes(), "text/javascript; charset=utf-8"),
}
SIGNIN_COOKIE = "opsgate_signin"
SIGNIN_SECONDS = 900
_SESSION_CODES = ("session_invalid", "session_expired", "approver_token_expired")

router = APIRouter(prefix="/ui", include_in_schema=False)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    return env


@dataclass(frozen=True)
class UiSettings:
    """Where the UI lives behind the external URL, and how its cookie is set."""

    prefix: str  # the external URL's path ('' or '/gate'), for links and redirects
    https: bool
    session_seconds: float
    env: jinja2.Environment

    @classmethod
    def of(cls, external_url: str, session_minutes: int) -> UiSettings:
        parts = urlsplit(external_url)
        return cls(
            prefix=parts.path.rstrip("/"),
            https=parts.scheme == "https",
            session_seconds=session_minutes * 60.0,
            env=templates(),
        )

    @property
    def cookie(self) -> str:
        # __Host-: only over https, host-only, path / (a sibling subdomain cannot set it).
        return "__Host-opsgate_session" if self.https else "opsgate_session"

    @property
    def signin_cookie(self) -> str:
        """The sign-in form's pre-session cookie, host-only over https like the session's:
        a sibling subdomain that could plant it would know the form's token, and sign
        the victim's browser in to the attacker's account (login CSRF)."""
        return f"__Host-{SIGNIN_COOKIE}" if self.https else SIGNIN_COOKIE

    def url(self, path: str) -> str:
        return self.prefix + path


def _ui(request: Request) -> UiSettings:
    ui: UiSettings = request.app.state.ui
    return ui


# How old the chain status on the audit page may be: a walk of the whole log costs
# time in proportion to it, so page views share one walk rather than each doing its own.
CHAIN_STATUS_SECONDS = 30.0


class ChainStatus:
    """The audit chain's verification as the UI shows it: one walk at a time, its
    report reused for CHAIN_STATUS_SECONDS (a page says when it was checked). Without
    it every view of the audit page walked the whole log: an approver reloading it
    (or several at once) made the server walk millions of rows per second."""

    def __init__(self, verify: Callable[[], VerifyReport], max_age: float = CHAIN_STATUS_SECONDS):
        self._verify = verify
        self._max_age = max_age
        self._lock = threading.Lock()
        self._report: VerifyReport | None = None
        self._checked = 0.0  # monotonic
        self._checked_at = 0.0  # wall clock, for the page

    def report(self) -> tuple[VerifyReport, float]:
        """The latest report (walking the log again when it is too old) and when it was
        made (epoch seconds). Callers waiting on a walk in progress get its report."""
        with self._lock:
            if self._report is None or time.monotonic() - self._checked >= self._max_age:
                self._report = self._verify()
                self._checked, self._checked_at = time.monotonic(), time.time()
            return self._report, self._checked_at


def _chain(request: Request) -> ChainStatus:
    chain: ChainStatus | None = getattr(request.app.state, "chain", None)
    if chain is None:
        chain = request.app.state.chain = ChainStatus(_ctx(request).gate.audit.verify)
    return chain


def _ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def _render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    ui = _ui(request)
    html = ui.env.get_template(name).render(
        base=ui.url("/ui"), static=ui.url("/ui/static"), **values
    )
    return HTMLResponse(html, status_code=status)


def _redirect(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(_ui(request).url(path), status_code=303)


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    ui = _ui(request)
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=ui.https,
        httponly=True,
        samesite="strict",
    )


def _clear_cookie(request: Request, response: Response, name: str) -> None:
    ui = _ui(request)
    response.delete_cookie(name, path="/", secure=ui.https, httponly=True, samesite="strict")


@dataclass(frozen=True)
class Signed:
    """The signed-in approver of a request: the cookie's secret and the session."""

    secret: str
    session: ApproverSession

    @property
    def who(self) -> str:
        return self.session.approver

    @property
    def csrf(self) -> str:
        return derive(self.secret, "opsgate-ui-csrf")


async def _signed(request: Request) -> Signed:
    _ctx(request).check_blocked(request)
    secret = request.cookies.get(_ui(request).cookie)
    if not secret:
        raise ApprovalError("not signed in", code="session_invalid", quiet=True)
    session = await run_in_threadpool(_ctx(request).gate.approvals.session, secret)
    return Signed(secret, session)


async def _form(request: Request, signed: Signed, fields: frozenset[str]) -> dict[str, str]:
    form = parse_form(await request.body(), request.headers.get("content-type"), fields)
    if not csrf_ok(signed.secret, "opsgate-ui-csrf", form.get("csrf")):
        raise UiRefusal("the form's CSRF token is missing or wrong; reload the page")
    return form


def _failed(request: Request, exc: OpsgateError, *, page: bool) -> Response:
    """A refusal as a page: counted for rate limiting like any API refusal; a GET
    without a live session goes to the sign-in page instead."""
    ctx = _ctx(request)
    status = status_of(exc)
    if exc.code in _SESSION_CODES and page:
        if not exc.detail.get("quiet"):
            ctx.refused(request, exc, status)
        target = "/ui/signin?next=" + quote(safe_next(request.url.path), safe="/")
        response: Response = _redirect(request, target)
        _clear_cookie(request, response, _ui(request).cookie)
        return response
    ctx.refused(request, exc, status)
    response = _render(
        request, "error.html", status, code=exc.code, message=exc.message, signed=None
    )
    retry = exc.detail.get("retry_after")
    if status == 429 and isinstance(retry, float):
        response.headers["Retry-After"] = str(max(1, int(retry) + 1))
    return response


# -- sign in and out ------------------------------------------------------------------


def _signin_page(
    request: Request,
    status: int = 200,
    error: str | None = None,
    email: str = "",
    next_page: str | None = None,
) -> Response:
    pre = secrets.token_urlsafe(32)
    response = _render(
        request,
        "signin.html",
        status,
        csrf=derive(pre, "opsgate-ui-signin"),
        next=safe_next(next_page or request.query_params.get("next")),
        error=error,
        email=email,
        signed=None,
    )
    _set_cookie(request, response, _ui(request).signin_cookie, pre, SIGNIN_SECONDS)
    return response


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return _redirect(request, "/ui/approvals")


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    ctx = _ctx(request)
    ui = _ui(request)
    form: dict[str, str] = {}
    try:
        ctx.check_blocked(request)
        form = parse_form(
            await request.body(),
            request.headers.get("content-type"),
            frozenset({"email", "token", "csrf", "next"}),
        )
        presented = request.cookies.get(ui.signin_cookie)
        if not csrf_ok(presented, "opsgate-ui-signin", form.get("csrf")):
            raise UiRefusal("the sign-in form's CSRF token is missing or wrong; reload the page")
        secret, _ = await run_in_threadpool(
            lambda: ctx.gate.approvals.open_session(
                form.get("email", ""), form.get("token", ""), ttl_seconds=ui.session_seconds
            )
        )
    except ApprovalError as exc:
        status = 401  # a malformed email is refused like a wrong token: nothing to learn
        ctx.refused(request, exc, status)
        message = (
            exc.message
            if exc.code == "approver_token_expired"
            else "sign-in refused: that email and approver token do not match"
        )
        return _signin_page(request, status, f"{message} [{exc.code}]", next_page=form.get("next"))
    except OpsgateError as exc:
        return _failed(request, exc, page=False)
    response = _redirect(request, safe_next(form.get("next")))
    _set_cookie(request, response, ui.cookie, secret, int(ui.session_seconds))
    _clear_cookie(request, response, ui.signin_cookie)
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    try:
        signed = await _signed(request)
        await _form(request, signed, frozenset({"csrf"}))
        await run_in_threadpool(_ctx(request).gate.approvals.close_session, signed.secret)
    except OpsgateError as exc:
        return _failed(request, exc, page=False)
    response = _redirect(request, "/ui/signin")
    _clear_cookie(request, response, _ui(request).cookie)
    return response


# -- approvals --------------------------------------------------------------------------


@router.get("/approvals")
async def approvals(request: Request) -> Response:
    ctx = _ctx(request)
    try:
        signed = await _signed(request)
        requests = await run_in_threadpool(ctx.gate.approvals.list)
    except OpsgateError as exc:
        return _failed(request, exc, page=True)
    mine = [r for r in requests if signed.who in r.approvers]
    pending = [views.approval_row(r) for r in mine if r.status == "pending"]
    decided = [views.approval_row(r) for r in reversed(mine) if r.status != "pending"][:25]
    return _render(
        request, "approvals.html", signed=signed, pending=pending, decided=decided, now=time.time()
    )


@router.get("/approvals/{approval_id}")
async def approval(approval_id: str, request: Request) -> Response:
    ctx = _ctx(request)
    try:
        signed = await _signed(request)
        req = await run_in_threadpool(ctx.gate.approvals.get, approval_id)
        if signed.who not in req.approvers:  # like the API: others' requests do not exist
            raise ApprovalError("no such approval request", code="approval_not_found")
        view = await run_in_threadpool(views.approval_view, ctx.gate, req, signed.who)
    except OpsgateError as exc:
        return _failed(request, exc, page=True)
    # Confirms a decision just posted, only if this approver's own decisions hold it: a
    # link carrying ?decided= must not tell an approver a denial was recorded that was not.
    decided = request.query_params.get("decided")
    mine = {d.decision for d in req.decisions if d.approver == signed.who}
    return _render(
        request,
        "approval.html",
        signed=signed,
        a=view,
        decided=decided if decided in mine else None,
    )


@router.post("/approvals/{approval_id}")
async def decide(approval_id: str, request: Request) -> Response:
    ctx = _ctx(request)
    try:
        signed = await _signed(request)
        form = await _form(request, signed, frozenset({"csrf", "verdict", "comment"}))
        given = form.get("verdict")
        if given not in ("approve", "deny"):
            raise ApprovalError("verdict must be approve or deny", code="verdict_invalid")
        verdict: Literal["approve", "deny"] = "approve" if given == "approve" else "deny"
        comment = form.get("comment", "").strip() or None
        await run_in_threadpool(
            lambda: ctx.gate.approvals.decide_in_session(
                approval_id,
                session=signed.secret,
                verdict=verdict,
                comment=comment,
            )
        )
    except OpsgateError as exc:
        return _failed(request, exc, page=False)
    return _redirect(request, f"/ui/approvals/{quote(approval_id, safe='')}?decided={verdict}")


# -- agents and audit ---------------------------------------------------------------------


@router.get("/agents")
async def agents(request: Request) -> Response:
    ctx = _ctx(request)
    try:
        signed = await _signed(request)
        tree = await run_in_threadpool(views.agent_tree, ctx.gate)
    except OpsgateError as exc:
        return _failed(request, exc, page=True)
    return _render(request, "agents.html", signed=signed, tree=tree)


@router.get("/agents/{agent}")
async def agent(agent: str, request: Request) -> Response:
    ctx = _ctx(request)
    trust = ctx.gate.config.trust

    def load() -> tuple[dict[str, Any], list[Any]]:
        did = ctx.gate.agents.resolve(agent)
        ctx.gate.agents.state(did)  # agent_not_found for an unknown did
        return views.agent_row(ctx.gate, did), ctx.gate.trust.history(did)

    try:
        signed = await _signed(request)
        row, history = await run_in_threadpool(load)
    except OpsgateError as exc:
        return _failed(request, exc, page=True)
    chart = trust_chart(
        [(c.at, c.score) for c in history],
        approval_below=trust.approval_below,
        suspend_below=trust.suspend_below,
        title=f"trust score of {row['name']}",
    )
    return _render(
        request,
        "agent.html",
        signed=signed,
        agent=row,
        chart=Markup(chart),  # noqa: S704 - built from numbers, every text escaped (chart.py)
        history=[c.to_dict() for c in reversed(history)],
    )


@router.get("/audit")
async def audit(request: Request) -> Response:
    ctx = _ctx(request)
    q = request.query_params
    agent_given, type_given = q.get("agent") or "", q.get("type") or ""
    agent_filter, type_filter = agent_given.strip(), type_given.strip()

    def load() -> tuple[list[dict[str, Any]], Any, str | None]:
        problem = None
        actor = None
        # Checked as given (never cut or trimmed into another filter), refused as the
        # API's filters are.
        for given, limit, what in ((agent_given, 128, "agent"), (type_given, 64, "type")):
            if not plain_text(given) or len(given) > limit:
                raise AuditError(
                    f"the {what} filter must be one line of text of at most {limit} characters",
                    code="audit_query_invalid",
                )
        if agent_filter:
            try:
                actor = ctx.gate.agents.resolve(agent_filter)
            except OpsgateError as exc:
                problem = exc.message
        records = (
            [] if problem else ctx.gate.audit.tail(100, event_type=type_filter or None, actor=actor)
        )
        report, checked_at = _chain(request).report()
        return views.event_rows(ctx.gate, records), (report, _when(checked_at)), problem

    try:
        signed = await _signed(request)
        events, (report, checked_at), problem = await run_in_threadpool(load)
    except OpsgateError as exc:
        return _failed(request, exc, page=True)
    return _render(
        request,
        "audit.html",
        signed=signed,
        events=events,
        report=report,
        checked_at=checked_at,
        problem=problem,
        agent_filter=agent_filter,
        type_filter=type_filter,
    )


@router.get("/static/{name}")
async def static(name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media = found
    return Response(body, media_type=media)
