"""What every route needs: the gate, the settings, and the three ways in.

Roles and how each authenticates:
- agent:    `Authorization: DPoP <credential>` plus exactly one `DPoP: <proof>`
            header; the proof is checked by the kernel's verify (a PossessionCheck),
            so refusals are audited and charged like any other credential misuse.
- approver: `Authorization: Basic base64(email:approver-token)`.
- operator: `Authorization: Basic base64(name:operator-token)`.
A credential of one role on another role's endpoint is `wrong_role` (403).
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from opsgate.approvals.service import TOKEN_PREFIX as APPROVER_PREFIX
from opsgate.cache import BoundedCache
from opsgate.config import ServerConfig
from opsgate.credentials.manager import Claims
from opsgate.credentials.proof import REMEMBERED_TOKEN_MAX, ProofRequest
from opsgate.errors import InvalidCredential, OpsgateError, safe_text
from opsgate.gate import Gate
from opsgate.operators import TOKEN_PREFIX as OPERATOR_PREFIX
from opsgate.server.authorizer import Authorizer
from opsgate.server.dpop import DPoPCheck, ProofRules, body_request, proof_nonce
from opsgate.server.errors import HttpRefusal
from opsgate.server.limits import RefusalLimiter, json_depth_ok
from opsgate.server.metrics import ServerMetrics
from opsgate.server.nonce import issue_nonce, nonce_key, nonce_valid
from opsgate.server.paths import request_path

M = TypeVar("M", bound=BaseModel)
_MAX_AUTH_HEADER = 8192


@dataclass
class ServerContext:
    gate: Gate
    settings: ServerConfig
    external_url: str
    rules: ProofRules
    metrics: ServerMetrics
    limiter: RefusalLimiter
    authorizer: Authorizer | None  # authorize requests decided in batches (SQLite)
    _nonce_keys: dict[str, bytes] = field(default_factory=dict)

    # -- bodies ---------------------------------------------------------------------

    async def body(self, request: Request) -> bytes:
        return await request.body()

    def parse(self, raw: bytes, model: type[M]) -> M:
        """A JSON object body checked for depth, then by `model` (unknown keys refused)."""
        if not raw.strip():
            raw = b"{}"
        if not json_depth_ok(raw, self.settings.max_json_depth):
            raise HttpRefusal(
                f"request body nests deeper than {self.settings.max_json_depth} levels",
                code="json_too_deep",
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HttpRefusal("request body is not json", code="json_invalid") from None
        if not isinstance(data, dict):
            raise HttpRefusal("request body must be a json object", code="json_invalid")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise HttpRefusal(
                f"request body field {safe_text(where)!r}: {first['msg'].lower()}",
                code="request_invalid",
            ) from None

    # -- agents -----------------------------------------------------------------------

    def agent_scheme(self, request: Request) -> tuple[str, str]:
        """The request's scheme and credential, if it is an agent's request at all (not
        rate limited, not a human's Basic token): checked before its body is read, so
        the wrong role is told as such whatever the body holds."""
        self.check_blocked(request)
        scheme, value = _authorization(request)
        if scheme == "basic":
            raise HttpRefusal("this endpoint is for agents (DPoP credentials)", code="wrong_role")
        if scheme not in ("dpop", "bearer") or not value:
            raise HttpRefusal(
                "authorization must be 'DPoP <credential>'", code="authorization_malformed"
            )
        return scheme, value

    def agent_auth(self, request: Request, *, audited: bool = False) -> tuple[str, DPoPCheck]:
        """The presented credential and the DPoP check for this request.

        A Bearer credential is accepted as presented and then refused by the kernel
        for want of a proof (charged to its agent when genuine): over HTTP no
        credential is a bearer token, whatever `require_proof` says. `audited`: the
        request is one the gate always audits durably before it answers (authorize,
        execute, resume), so its proof id needs no disk sync of its own.
        """
        scheme, value = self.agent_scheme(request)  # the address is not blocked
        sub = request.state.claimed_sub = unverified_sub(value)
        if sub:  # and now the agent it names
            _refuse_for(self.limiter.retry_after(f"agent:{sub}", time.monotonic()))
        presented = tuple(request.headers.getlist("dpop")) if scheme == "dpop" else ()
        nonce = self.required_nonce(presented) if self.settings.dpop_nonce else None
        proofs = self.gate.credential_manager.proofs
        check = DPoPCheck(
            proofs=presented,
            method=request.method,
            path=request_path(request),
            rules=self.rules,
            use_once=proofs.use_once_before_audit if audited else proofs.use_once,
            nonce=nonce,
        )
        return value, check

    # -- server nonces (RFC 9449 §8) ----------------------------------------------------

    def _nonce_key(self) -> bytes:
        kid, key = self.gate.keyring.signer()
        derived = self._nonce_keys.get(kid)
        if derived is None:
            derived = nonce_key(self.gate.gate_id, key.private_bytes_raw())
            self._nonce_keys = {kid: derived}  # the current key's only
        return derived

    def current_nonce(self, now: float | None = None) -> str:
        """The nonce to hand out now (the same on every replica within a window)."""
        at = time.time() if now is None else now
        return issue_nonce(self._nonce_key(), self.settings.dpop_nonce_seconds, at)

    def required_nonce(self, proofs: tuple[str, ...], now: float | None = None) -> str | None:
        """The proof's nonce when it is one this gate issued lately; otherwise the
        request is answered `use_dpop_nonce` with a fresh one (no database work, no
        charge: getting a nonce is a step of the protocol, not a refusal). A request
        whose proof is malformed goes on to be refused by the full check."""
        nonce = proof_nonce(proofs)
        at = time.time() if now is None else now
        if nonce is not None and nonce_valid(
            self._nonce_key(), self.settings.dpop_nonce_seconds, at, nonce
        ):
            return nonce
        if len(proofs) != 1:
            return None  # missing or several proofs: the kernel refuses (and charges)
        raise HttpRefusal(
            "the DPoP proof must carry the server's nonce (see the DPoP-Nonce header)",
            code="use_dpop_nonce",
            nonce=self.current_nonce(at),
        )

    async def agent_claims(self, request: Request, raw: bytes) -> Claims:
        """Authenticate an agent for a request that runs no operation: the proof binds
        the method, path and the exact body bytes."""
        token, check = self.agent_auth(request)
        proof_request: ProofRequest = body_request(request.method, request_path(request), raw)
        claims = await run_in_threadpool(self.gate.authenticate, token, proof_request, proof=check)
        request.state.agent = claims.sub
        return claims

    # -- humans -------------------------------------------------------------------------

    def _basic(self, request: Request, role: str, foreign_prefix: str) -> tuple[str, str]:
        self.check_blocked(request)
        scheme, value = _authorization(request)
        if scheme in ("dpop", "bearer"):
            raise HttpRefusal(f"this endpoint is for {role}s", code="wrong_role")
        if scheme != "basic":
            raise HttpRefusal(
                f"authorization must be Basic with your {role} name and token",
                code="authorization_malformed",
            )
        try:
            user, _, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except ValueError:  # binascii.Error, non-ASCII text, bytes not UTF-8
            raise HttpRefusal(
                "authorization is not valid Basic credentials", code="authorization_malformed"
            ) from None
        if secret.startswith(foreign_prefix):
            raise HttpRefusal(f"this endpoint is for {role}s", code="wrong_role")
        return user, secret

    async def approver(self, request: Request) -> tuple[str, str]:
        """(email, token) of an authenticated approver."""
        email, token = self._basic(request, "approver", OPERATOR_PREFIX)
        who = await run_in_threadpool(self.gate.approvals.authenticate_approver, email, token)
        return who, token

    async def operator(self, request: Request) -> str:
        name, token = self._basic(request, "operator", APPROVER_PREFIX)
        who: str = await run_in_threadpool(self.gate.operators.authenticate, name, token)
        request.state.operator = who
        return who

    async def operator_or_approver(self, request: Request) -> str:
        """Trust scores are for operators and approvers alike (a decision needs them)."""
        _, secret = self._basic(request, "operator or approver", "\x00")
        if secret.startswith(APPROVER_PREFIX):
            return (await self.approver(request))[0]
        return await self.operator(request)

    # -- refusals -------------------------------------------------------------------------

    def blocked(self, request: Request) -> float | None:
        """Seconds to wait when this client address, or the agent its credential
        names, has used up its refusals; checked before anything else is done."""
        now = time.monotonic()
        keys = [_address_key(request)]
        sub = getattr(request.state, "claimed_sub", None)
        if sub:
            keys.append(f"agent:{sub}")
        waits = [w for w in (self.limiter.retry_after(k, now) for k in keys) if w is not None]
        return max(waits) if waits else None

    def check_blocked(self, request: Request) -> None:
        _refuse_for(self.blocked(request))

    def refused(self, request: Request, exc: OpsgateError, status: int) -> None:
        """Count a refusal; take a token from the address and, when the request proved
        its agent's key, from that agent: a forged `sub` or a leaked token charges no
        agent's budget."""
        self.metrics.refusals.labels(exc.code).inc()
        if status not in (401, 403, 413, 422, 431) or exc.code == "use_dpop_nonce":
            return
        now = time.monotonic()
        self.limiter.charge(_address_key(request), now)
        agent = exc.detail.get("agent") or getattr(request.state, "agent", None)
        if isinstance(exc, InvalidCredential) and not exc.detail.get("proven"):
            # A credential refusal names its agent whether or not the sender holds the
            # agent's key: only one its key proved counts against the agent, or one
            # leaked token (expired or revoked long ago) would shut the agent out.
            agent = getattr(request.state, "agent", None)
        if isinstance(agent, str):
            self.limiter.charge(f"agent:{agent}", now)


def _refuse_for(wait: float | None) -> None:
    """Refuse a request that must wait `wait` seconds (nothing when None)."""
    if wait is not None:
        raise HttpRefusal(
            "too many refused requests; slow down", code="rate_limited", retry_after=wait
        )


def _address_key(request: Request) -> str:
    return f"ip:{request.client.host if request.client else '-'}"


def _authorization(request: Request) -> tuple[str, str]:
    values = request.headers.getlist("authorization")
    if not values:
        raise HttpRefusal("no credentials were presented", code="credential_missing")
    if len(values) != 1 or len(values[0]) > _MAX_AUTH_HEADER:
        raise HttpRefusal("exactly one authorization header", code="authorization_malformed")
    scheme, _, value = values[0].partition(" ")
    return scheme.lower(), value.strip()


# The subs of tokens seen lately: an agent presents one credential for up to 15
# minutes, so its payload is decoded once, not on every request. Bounded in entries
# and in size (`REMEMBERED_TOKEN_MAX`). ("" for a token that claims none.)
_SUBS: BoundedCache[str, str] = BoundedCache(4096)


def unverified_sub(token: str) -> str | None:
    """The `sub` a token claims, unverified: only a rate-limit key (a forged sub can
    only slow down requests presenting that sub, never authenticate anything)."""
    seen = _SUBS.get(token)
    if seen is None:
        seen = _claimed_sub(token) or ""
        if len(token) <= REMEMBERED_TOKEN_MAX:
            _SUBS.put(token, seen)
    return seen or None


def _claimed_sub(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        data: Any = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    sub = data.get("sub") if isinstance(data, dict) else None
    return sub if isinstance(sub, str) and len(sub) <= 64 else None
