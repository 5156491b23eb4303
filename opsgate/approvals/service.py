"""Approval requests in the state database: create, decide (authenticated), consume once.

Rules enforced here, each with a stable error code:
- only the resolved approvers of the request may decide, with their approver token,
  and only while that token has not expired;
- no sponsor in the requesting agent's chain may decide on its request;
- `min_approvals` distinct approvers per requirement; one deny denies, also after
  the quorum was met, until the request is consumed (the deny cancels it);
- nothing is decided or consumed after expiry; an approved request is consumed once;
- every status change is conditional on the status it was read in, so two
  replicas racing (a resume, a deny, an expiry) never overwrite each other.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from sqlalchemy import Connection

from opsgate.approvals.model import (
    DAY,
    ApprovalDecision,
    ApprovalRequest,
    Approver,
    ApproverSession,
    PendingApproval,
    cancelled_after_quorum,
    quorum_status,
)
from opsgate.approvals.notify import Dispatcher, build_notifiers
from opsgate.boundary import typed_errors
from opsgate.clock import to_epoch
from opsgate.decision import APPROVAL_EXPIRY_SECONDS, ApprovalRequirement, Decision
from opsgate.errors import (
    ApprovalError,
    OpsgateError,
    StatusInvalid,
    TokenTtlInvalid,
    plain_text,
    safe_text,
    scrub,
    shown,
)
from opsgate.identity.registry import check_email
from opsgate.store import Store
from opsgate.store import agents as agent_rows
from opsgate.store import approvals as approval_rows

if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog
    from opsgate.config import Config
    from opsgate.operations.base import Plan
    from opsgate.state import AgentState

log = structlog.get_logger("opsgate.approvals")
_STATUSES = ("pending", "approved", "denied", "expired", "consumed")
# The refusal for a request found in a status the act cannot take.
_STATUS_CODES = {
    "pending": "approval_pending",
    "approved": "approval_approved",
    "denied": "approval_denied",
    "expired": "approval_expired",
    "consumed": "approval_consumed",
}
TOKEN_PREFIX = "opsg_apr_"  # noqa: S105 - a prefix that makes leaked tokens greppable


def _hash_token(token: str) -> str:
    # surrogatepass: a presented token with a lone surrogate hashes (and never matches).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _approver(row: Any) -> Approver:
    return Approver(
        email=row.email,
        created_at=float(row.created_at),
        token_issued_at=float(row.token_issued_at),
        token_expires_at=float(row.token_expires_at),
        disabled_at=None if row.disabled_at is None else float(row.disabled_at),
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")


@typed_errors
class ApprovalService:
    """`gate.approvals`: approvers, requests and decisions."""

    def __init__(self, *, store: Store, audit: AuditLog, config: Config) -> None:
        self._store = store
        self._audit = audit
        self._token_ttl_days = config.approvals.token_ttl_days
        self._max_pending = config.approvals.max_pending_per_agent
        self.dispatcher = Dispatcher(build_notifiers(config.notifications), self._notify_failed)

    # -- approvers -------------------------------------------------------------------

    def add_approver(
        self,
        email: str,
        *,
        ttl_days: int | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
    ) -> str:
        """Register an approver; returns their token, shown once and stored only hashed.

        The token expires after `ttl_days` (default `approvals.token_ttl_days`);
        `rotate_approver_token` issues the next one.
        """
        t = to_epoch(now)
        address = self._email(email)
        expires = t + self._ttl_seconds(ttl_days)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.write() as conn:
            if approval_rows.approver_exists(conn, address):
                raise ApprovalError(
                    f"approver {address!r} already exists; rotate their token instead",
                    code="approver_exists",
                )
            approval_rows.insert_approver(conn, address, _hash_token(token), t, expires)
            self._audit.append_in(
                conn,
                "approver.added",
                actor=safe_text(actor),
                at=t,
                approver=address,
                token_expires_at=expires,
            )
        return token

    def rotate_approver_token(
        self,
        email: str,
        *,
        ttl_days: int | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
    ) -> str:
        """Replace an approver's token; the old one stops working at once (no grace:
        a rotation is usually because the old token may have leaked)."""
        t = to_epoch(now)
        address = self._email(email)
        expires = t + self._ttl_seconds(ttl_days)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.write() as conn:
            if not approval_rows.replace_approver_token(
                conn, address, _hash_token(token), t, expires
            ):
                raise ApprovalError(f"no approver {address!r}", code="approver_not_found")
            self._audit.append_in(
                conn,
                "approver.token_rotated",
                actor=safe_text(actor),
                at=t,
                approver=address,
                token_expires_at=expires,
            )
        return token

    def list_approvers(self) -> list[Approver]:
        """Every registered approver with their token's age and expiry (never the token)."""
        with self._store.read() as conn:
            found = approval_rows.approvers(conn)
        return [_approver(r) for r in found]

    def get_approver(self, email: str) -> Approver:
        address = self._email(email)
        with self._store.read() as conn:
            row = approval_rows.approver(conn, address)
        if row is None:
            raise ApprovalError(f"no approver {address!r}", code="approver_not_found")
        return _approver(row)

    def _ttl_seconds(self, ttl_days: object) -> float:
        if ttl_days is None:
            return self._token_ttl_days * DAY
        if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 3650:
            raise TokenTtlInvalid(
                f"token lifetime must be whole days from 1 to 3650, got "
                f"{ttl_days if type(ttl_days) is int else shown(ttl_days)}",
                code="token_ttl_invalid",
            )
        return ttl_days * DAY

    @staticmethod
    def _email(email: object) -> str:
        return check_email(email, "approver")  # an EmailInvalid is an ApprovalError too

    def authenticate_approver(
        self, email: str, token: object, *, now: datetime | float | None = None
    ) -> str:
        """Check an approver's token (constant time; expired tokens refused) and
        return the approver's address: the HTTP API's approver role."""
        t = to_epoch(now)
        who = self._email(email)
        with self._store.read() as conn:
            self._authenticate(conn, who, token, t)
        return who

    def _authenticate(self, conn: Connection, approver: str, token: object, t: float) -> None:
        row = approval_rows.approver_credentials(conn, approver)
        presented = _hash_token(token) if isinstance(token, str) else ""
        expected = row[0] if row is not None and row[1] is None else "x" * 64
        if not hmac.compare_digest(presented, expected) or row is None:
            raise ApprovalError(
                f"approver {approver!r} could not be authenticated", code="approver_unauthenticated"
            )
        # Checked only after the token matched: an expiry tells nothing to a guesser.
        if t >= row[2]:
            raise ApprovalError(
                f"the token of approver {approver!r} has expired; the operator must rotate it "
                "(opsgate approvers rotate)",
                code="approver_token_expired",
            )

    # -- web UI sessions ------------------------------------------------------------------

    def open_session(
        self,
        email: str,
        token: object,
        *,
        ttl_seconds: float,
        now: datetime | float | None = None,
    ) -> tuple[str, ApproverSession]:
        """Sign an approver in to the web UI with their token: returns the session's
        secret (for the cookie, stored only hashed) and the session. Audited, also
        when refused."""
        t = to_epoch(now)
        # Until the address is a plain email, the refusal is nobody's: what was typed
        # (a did, "gate", any text) never becomes an audit actor, only a field.
        who = "anonymous"
        presented: str | None = safe_text(email) if isinstance(email, str) else "?"
        try:
            who, presented = self._email(email), None
            if not 60 <= ttl_seconds <= 12 * 3600:
                raise ApprovalError("session lifetime out of range", code="session_ttl_invalid")
            secret = secrets.token_urlsafe(32)
            with self._store.write() as conn:
                self._authenticate(conn, who, token, t)
                issued = approval_rows.token_issued_at(conn, who)
                approval_rows.drop_expired_sessions(conn, t)
                session = ApproverSession(who, t, t + ttl_seconds, issued)
                approval_rows.insert_session(
                    conn, _hash_token(secret), who, session.token_issued_at, t, session.expires_at
                )
                self._audit.append_in(
                    conn, "approver.signed_in", actor=who, at=t, expires_at=session.expires_at
                )
        except ApprovalError as exc:
            self._audit.append(
                "approver.sign_in_refused",
                actor=who,
                at=t,
                code=exc.code,
                reason=exc.message,
                presented=presented,
            )
            raise
        return secret, session

    def session(self, secret: object, *, now: datetime | float | None = None) -> ApproverSession:
        """The live session of this secret; session_invalid / session_expired /
        approver_token_expired otherwise (a rotated or disabled token ends it)."""
        t = to_epoch(now)
        with self._store.read() as conn:
            who = self._session_approver(conn, secret, t)
            row = approval_rows.session(conn, _hash_token(str(secret)))
        assert row is not None  # _session_approver found it in this snapshot
        return ApproverSession(
            who, float(row.created_at), float(row.expires_at), float(row.token_issued_at)
        )

    def close_session(self, secret: object, *, now: datetime | float | None = None) -> bool:
        """Sign out: the session's row is deleted, so its cookie is worthless at once,
        on every replica. False when there was no such session."""
        t = to_epoch(now)
        if not isinstance(secret, str) or not secret or len(secret) > 128:
            return False
        with self._store.write() as conn:
            row = approval_rows.session(conn, _hash_token(secret))
            if row is None:
                return False
            approval_rows.delete_session(conn, _hash_token(secret))
            self._audit.append_in(conn, "approver.signed_out", actor=row.approver, at=t)
        return True

    def _session_approver(self, conn: Connection, secret: object, t: float) -> str:
        if not isinstance(secret, str) or not secret or len(secret) > 128:
            raise ApprovalError("not signed in", code="session_invalid")
        row = approval_rows.session(conn, _hash_token(secret))
        if row is None:
            raise ApprovalError("not signed in", code="session_invalid")
        if t >= row.expires_at:
            raise ApprovalError("the session has expired; sign in again", code="session_expired")
        approver = approval_rows.approver_token_state(conn, row.approver)
        if (
            approver is None
            or approver.disabled_at is not None
            or float(approver.token_issued_at) != float(row.token_issued_at)
        ):
            raise ApprovalError(
                "the approver's token changed since sign-in; sign in again",
                code="session_invalid",
            )
        if t >= approver.token_expires_at:
            raise ApprovalError(
                f"the token of approver {row.approver!r} has expired; the operator must "
                "rotate it (opsgate approvers rotate)",
                code="approver_token_expired",
            )
        return str(row.approver)

    # -- requests ----------------------------------------------------------------------

    def create(
        self,
        *,
        agent: AgentState,
        sponsors: tuple[str, ...],
        plan: Plan,
        decision: Decision,
        now: float,
        asked_with_iat: float | None = None,
    ) -> PendingApproval:
        """Store a pending request bound to plan.digest; announce it. `asked_with_iat`:
        the issue time of the credential that asked (a cut of the agent's credentials
        at or after it outlives the request, whatever this replica's clock says)."""
        if not decision.requirements:
            raise ApprovalError("decision has no approval requirement", code="no_approvers")
        expiry = min(
            (r.expires_in_seconds or APPROVAL_EXPIRY_SECONDS) for r in decision.requirements
        )
        req = ApprovalRequest(
            id="apr_" + secrets.token_hex(12),
            digest=plan.digest,
            requester_did=agent.did,
            requester_name=agent.name,
            sponsors=sponsors,
            capability=plan.capability,
            operation=plan.operation.to_dict(),
            plan=plan.to_dict(),
            requirements=decision.requirements,
            reasons=decision.reasons,
            status="pending",
            created_at=now,
            expires_at=now + expiry,
            asked_with_iat=asked_with_iat,
        )
        with self._store.write() as conn:
            # The audit head first: this transaction appends to the log anyway, and
            # holding it from the count on makes count-then-insert one step for every
            # replica (two requests at once on PostgreSQL each counted the other's
            # place free, and both got in beyond the limit).
            self._audit.hold_head(conn)
            # Those asked for before its credentials were cut can never run (consume).
            since = agent.credentials_not_before
            waiting = approval_rows.pending_count(conn, agent.did, now, since)
            if waiting >= self._max_pending:
                raise ApprovalError(
                    f"agent {agent.name!r} already has {waiting} approval requests waiting for "
                    f"a decision (at most {self._max_pending}); wait until one is decided or "
                    "expires",
                    code="approval_limit",
                )
            approval_rows.insert_request(
                conn,
                id=req.id,
                digest=req.digest,
                requester_did=req.requester_did,
                requester_name=req.requester_name,
                sponsors=_dumps(list(sponsors)),
                capability=req.capability,
                operation=_dumps(req.operation),
                plan=_dumps(req.plan),
                requirements=_dumps(
                    [
                        {
                            "policy": r.policy,
                            "rule": r.rule,
                            "approvers": list(r.approvers),
                            "min_approvals": r.min_approvals,
                            "expires_in_seconds": r.expires_in_seconds,
                        }
                        for r in req.requirements
                    ]
                ),
                reasons=_dumps(list(req.reasons)),
                status="pending",
                created_at=now,
                expires_at=req.expires_at,
                asked_with_iat=asked_with_iat,
            )
            self._audit.append_in(
                conn,
                "approval.requested",
                actor=agent.did,
                at=now,
                approval=req.id,
                capability=req.capability,
                digest=req.digest,
                approvers=list(req.approvers),
                min_approvals=req.min_approvals,
                expires_at=req.expires_at,
            )
        self.dispatcher.dispatch("approval.requested", req)
        return PendingApproval(req.id, req)

    def _load(
        self, conn: Connection, approval_id: object, *, lock: bool = False
    ) -> ApprovalRequest:
        """Read a request; `lock` holds its row until the transaction ends (PostgreSQL)."""
        if (
            not isinstance(approval_id, str)
            or len(approval_id) > 64
            or not (approval_id.isascii() and approval_id.isprintable())
        ):
            raise ApprovalError("approval id is malformed", code="approval_not_found")
        row = approval_rows.request(conn, approval_id, lock=lock and not self._store.is_sqlite)
        if row is None:
            raise ApprovalError(
                f"no approval request {shown(approval_id)}", code="approval_not_found"
            )
        drows = approval_rows.decisions(conn, approval_id)
        return ApprovalRequest(
            id=row.id,
            digest=row.digest,
            requester_did=row.requester_did,
            requester_name=row.requester_name,
            sponsors=tuple(orjson.loads(row.sponsors)),
            capability=row.capability,
            operation=orjson.loads(row.operation),
            plan=orjson.loads(row.plan),
            requirements=tuple(
                ApprovalRequirement(
                    policy=r["policy"],
                    rule=r["rule"],
                    approvers=tuple(r["approvers"]),
                    min_approvals=r["min_approvals"],
                    expires_in_seconds=r["expires_in_seconds"],
                )
                for r in orjson.loads(row.requirements)
            ),
            reasons=tuple(orjson.loads(row.reasons)),
            status=row.status,
            created_at=float(row.created_at),
            expires_at=float(row.expires_at),
            decided_at=row.decided_at,
            consumed_at=row.consumed_at,
            asked_with_iat=None if row.asked_with_iat is None else float(row.asked_with_iat),
            decisions=tuple(
                ApprovalDecision(d.approver, d.decision, float(d.at), d.comment) for d in drows
            ),
        )

    def get(self, approval_id: str, *, now: datetime | float | None = None) -> ApprovalRequest:
        t = to_epoch(now)
        with self._store.read() as conn:
            req = self._load(conn, approval_id)
        if req.status in ("pending", "approved") and t >= req.expires_at:
            self.expire_due(now=t)
            with self._store.read() as conn:
                req = self._load(conn, approval_id)
        return req

    def list(
        self, *, status: str | None = None, now: datetime | float | None = None
    ) -> list[ApprovalRequest]:
        if status is not None and status not in _STATUSES:
            raise StatusInvalid(
                f"status must be one of {', '.join(_STATUSES)}, got {shown(status)}",
                code="status_invalid",
            )
        self.expire_due(now=now)
        with self._store.read() as conn:
            ids = approval_rows.request_ids(conn, status)
            return [self._load(conn, i) for i in ids]

    def expire_due(self, *, now: datetime | float | None = None) -> builtins.list[str]:
        """Mark every pending/approved request past its expiry as expired (audited).

        Each row changes only from the status it was read in: a request another
        replica consumed or denied meanwhile keeps that status.
        """
        t = to_epoch(now)
        with self._store.write() as conn:
            due = approval_rows.due_requests(conn, t)
            expired = [i for i, status in due if approval_rows.expire_request(conn, i, status, t)]
            # Every request's row before the audit head, as a decision or a consume takes
            # them: locking one after the head waited for a consume holding it, which
            # waited for the head (a deadlock, failing one of them).
            for approval_id in expired:
                self._audit.append_in(
                    conn, "approval.expired", actor="gate", at=t, approval=approval_id
                )
        return expired

    # -- deciding ----------------------------------------------------------------------

    def approve(
        self,
        approval_id: str,
        *,
        approver: str,
        token: str,
        comment: str | None = None,
        now: datetime | float | None = None,
    ) -> ApprovalRequest:
        return self._decide(approval_id, approver, token, "approve", comment, to_epoch(now))

    def deny(
        self,
        approval_id: str,
        *,
        approver: str,
        token: str,
        comment: str | None = None,
        now: datetime | float | None = None,
    ) -> ApprovalRequest:
        return self._decide(approval_id, approver, token, "deny", comment, to_epoch(now))

    def decide_in_session(
        self,
        approval_id: str,
        *,
        session: str,
        verdict: Literal["approve", "deny"],
        comment: str | None = None,
        now: datetime | float | None = None,
    ) -> ApprovalRequest:
        """Approve or deny as the approver signed in to the web UI with `session`
        (the cookie's secret): checked in the same transaction as the decision."""
        if verdict not in ("approve", "deny"):
            raise ApprovalError("verdict must be approve or deny", code="verdict_invalid")
        t = to_epoch(now)

        def authenticate(conn: Connection) -> str:
            return self._session_approver(conn, session, t)

        return self._decide(approval_id, "session", authenticate, verdict, comment, t)

    def _decide(
        self,
        approval_id: str,
        approver: str,
        token: str | Callable[[Connection], str],
        verdict: Literal["approve", "deny"],
        comment: str | None,
        t: float,
    ) -> ApprovalRequest:
        """`token` is the approver's token, or a check of another credential (a UI
        session) run inside the decision's transaction that returns the approver."""
        try:
            if comment is not None and (not plain_text(comment, lines=True) or len(comment) > 2000):
                raise ApprovalError(
                    "comment must be text of at most 2000 characters, without control "
                    "characters but line breaks and tabs",
                    code="comment_invalid",
                )
            if comment is not None:
                comment = scrub(comment)  # a token pasted into a comment is not kept
            who = "" if callable(token) else self._email(approver)
            self.expire_due(now=t)
            with self._store.write() as conn:
                if callable(token):
                    who = approver = token(conn)
                else:
                    self._authenticate(conn, who, token, t)
                req = self._load(conn, approval_id, lock=True)
                if req.status in ("pending", "approved") and t >= req.expires_at:
                    raise ApprovalError(f"approval {req.id!r} has expired", code="approval_expired")
                # Until it is consumed, an approved request can still be denied: the
                # deny cancels it. Only a deny: the quorum is already met.
                decidable = ("pending", "approved") if verdict == "deny" else ("pending",)
                if req.status not in decidable:
                    raise ApprovalError(
                        f"approval {req.id!r} is {req.status}, not pending",
                        code=_STATUS_CODES[req.status],
                    )
                if who in req.sponsors:
                    raise ApprovalError(
                        f"{who!r} sponsors the requesting agent and cannot decide on its request",
                        code="self_approval",
                    )
                if who not in req.approvers:
                    raise ApprovalError(
                        f"{who!r} is not an approver of {req.id!r}", code="not_an_approver"
                    )
                # An approver who approved may still deny (withdraw it); nothing else twice.
                mine = {d.decision for d in req.decisions if d.approver == who}
                if verdict in mine or "deny" in mine:
                    raise ApprovalError(f"{who!r} has already decided", code="already_decided")
                approval_rows.insert_decision(conn, req.id, who, verdict, comment, t)
                decisions = (*req.decisions, ApprovalDecision(who, verdict, t, comment))
                status = quorum_status(req.requirements, decisions)
                changed = status != req.status
                if changed and not approval_rows.change_status(conn, req.id, req.status, status, t):
                    # Changed since it was read: decide again.
                    raise ApprovalError(
                        f"approval {req.id!r} changed while it was being decided; try again",
                        code="approval_conflict",
                    )
                self._audit.append_in(
                    conn,
                    f"approval.{'approved' if verdict == 'approve' else 'denied'}_by",
                    actor=who,
                    at=t,
                    approval=req.id,
                    comment=comment,
                    status=status,
                    cancelled=True if req.status == "approved" else None,
                )
                result = self._load(conn, req.id)
        except ApprovalError as exc:
            self._audit.append(
                "approval.refused",
                actor=safe_text(approver),
                at=t,
                approval=safe_text(approval_id),
                code=exc.code,
                reason=exc.message,
            )
            raise
        if result.status == "denied" and cancelled_after_quorum(result):
            self.dispatcher.dispatch("approval.cancelled", result)
        elif result.status != "pending":
            self.dispatcher.dispatch(f"approval.{result.status}", result)
        return result

    def consume(
        self,
        approval_id: str,
        *,
        digest: str,
        requester: str,
        now: float,
    ) -> ApprovalRequest:
        """Atomically mark an approved, unexpired request for this digest as used.

        A request made before the requester's credentials were cut (a suspension, a
        revocation, its credentials revoked) was made by an agent, or a credential, no
        longer trusted, and is not honoured afterwards. The cut-off is read here, in the
        consuming transaction, not from a replica's view of the agent (up to a refresh
        old): a cut made through another replica a moment ago counts. Read, not locked:
        consumes take the request's row, then the head, and a writer holding the head
        locks agents' rows."""
        try:
            with self._store.write() as conn:
                req = self._load(conn, approval_id, lock=True)
                if req.requester_did != requester:
                    raise ApprovalError(
                        f"approval {req.id!r} was requested by another agent",
                        code="approval_not_yours",
                    )
                if req.digest != digest:
                    raise ApprovalError(
                        f"the operation changed since approval {req.id!r} was requested; "
                        "it needs a new approval",
                        code="digest_mismatch",
                    )
                not_before = agent_rows.credentials_not_before(conn, requester)
                # Stored after the cut by a replica whose clock runs ahead, a request
                # asked with a credential the cut revoked is still outlived by it.
                asked = (
                    req.created_at
                    if req.asked_with_iat is None
                    else min(req.created_at, req.asked_with_iat)
                )
                if not_before is not None and asked <= not_before:
                    raise ApprovalError(
                        f"approval {req.id!r} was requested before the agent's credentials "
                        "were cut (suspended, revoked or its credentials revoked); request "
                        "it again",
                        code="approval_outlived",
                    )
                if req.status == "approved" and now >= req.expires_at:
                    raise ApprovalError(f"approval {req.id!r} has expired", code="approval_expired")
                if not approval_rows.consume_request(conn, req.id, now):
                    raise ApprovalError(
                        f"approval {req.id!r} is {req.status}, not approved",
                        code=_STATUS_CODES[req.status],
                    )
                self._audit.append_in(
                    conn,
                    "approval.consumed",
                    actor=requester,
                    at=now,
                    approval=req.id,
                    digest=digest,
                )
                return self._load(conn, req.id)
        except ApprovalError as exc:
            exc.audited = True
            self._audit.append(
                "approval.refused",
                actor=requester,
                at=now,
                approval=safe_text(approval_id),
                code=exc.code,
                reason=exc.message,
            )
            raise

    def wait(self, approval_id: str, *, timeout: float, poll: float = 0.2) -> ApprovalRequest:
        """Block until the request is no longer pending, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            req = self.get(approval_id)
            if req.status != "pending" or time.monotonic() >= deadline:
                return req
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def _notify_failed(self, notifier: str, event: str, req: ApprovalRequest, why: str) -> None:
        try:
            self._audit.append(
                "notification.failed",
                actor="gate",
                approval=req.id,
                notifier=notifier,
                event=event,
                error=why,
            )
        except OpsgateError as exc:  # already logged by the dispatcher; the request is stored
            log.error("notification failure not audited", approval=req.id, code=exc.code)
