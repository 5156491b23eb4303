"""The remote SDK: an agent in another process talks to `opsgate serve` holding only
its own private key.

    gate = opsgate.client.RemoteGate("https://gate.example.com", agent_key="agent.pem")
    cred = gate.credential(["deploy:staging"])          # renews itself
    result = gate.execute(cred, Operation("deploy", "staging/app-web", {...}))

The calls are the in-process Gate's (`execute`, `resume`, `authorize`,
`wait_for_approval`, a self-renewing `credential()`); refusals raise the same
error classes with the same codes. The agent signs a client assertion to obtain
each credential and a DPoP proof for every request; the gate's keys, the
database and other agents' keys never leave the gate.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsgate import errors
from opsgate.boundary import typed_errors
from opsgate.credentials.proof import ProofRequest
from opsgate.decision import Decision, MatchedRule
from opsgate.identity.keys import did_from_public_key, read_private_key
from opsgate.operations.base import Operation, Outcome
from opsgate.secrets.value import SecretValue
from opsgate.server.dpop import body_request, make_assertion, make_dpop, normalise_url

__all__ = ["RemoteApproval", "RemoteCredential", "RemoteGate", "RemotePendingApproval", "connect"]


@dataclass(frozen=True, slots=True)
class RemotePendingApproval:
    """What `execute` returns when the operation waits for approval (HTTP 202); the
    attributes of the in-process PendingApproval."""

    approval_id: str
    approvers: tuple[str, ...]
    min_approvals: int
    expires_at: datetime
    digest: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoteApproval:
    """An approval request as its agent sees it (status and decisions)."""

    id: str
    status: str
    capability: str
    approvers: tuple[str, ...]
    min_approvals: int
    expires_at: datetime
    decisions: tuple[dict[str, Any], ...] = field(default=())


class RemoteCredential:
    """The agent's current credential; replaced (by a new client assertion) once less
    than a third of its lifetime is left, or at once after `renew()`. The token is a
    secret: never in repr()."""

    def __init__(self, gate: RemoteGate, scope: list[str], ttl_minutes: float | None) -> None:
        self._gate = gate
        self.scope = list(scope)
        self._ttl = ttl_minutes
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self.renewals = 0
        self.renew()  # scope errors surface here, not at first use

    def renew(self) -> None:
        with self._lock:
            self._replace()

    def _replace(self) -> None:
        data = self._gate._obtain(self.scope, self._ttl)
        if self._data:
            self.renewals += 1
        self._data = data

    @property
    def jti(self) -> str:
        return str(self._data["jti"])

    @property
    def expires_at(self) -> datetime:
        return datetime.fromisoformat(self._data["expires_at"])

    @property
    def issued_at(self) -> datetime:
        return datetime.fromisoformat(self._data["issued_at"])

    @property
    def token(self) -> str:
        with self._lock:
            issued = self.issued_at.timestamp()
            expires = self.expires_at.timestamp()
            if time.time() >= expires - (expires - issued) / 3:
                self._replace()
            return str(self._data["token"])

    def __repr__(self) -> str:
        return f"RemoteCredential(scope={self.scope!r}, jti={self._data.get('jti')!r})"


def _error(response: httpx.Response) -> errors.OpsgateError:
    """The error the gate answered with, as the same class and code as in-process."""
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    code = data.get("code") if isinstance(data.get("code"), str) else f"http_{response.status_code}"
    message = (
        data.get("message") if isinstance(data.get("message"), str) else response.reason_phrase
    )
    cls = getattr(errors, str(data.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.OpsgateError)):
        cls = errors.OpsgateError
    exc = cls.received(str(message), code=str(code))
    exc.detail["status"] = response.status_code
    return exc


def _code(response: httpx.Response) -> str | None:
    if response.status_code != 401:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get("code") if isinstance(data, dict) else None


def _result(response: httpx.Response) -> Outcome | RemotePendingApproval:
    data = response.json()
    if response.status_code == 202:
        return RemotePendingApproval(
            approval_id=data["approval_id"],
            approvers=tuple(data["approvers"]),
            min_approvals=int(data["min_approvals"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            digest=data["digest"],
            reasons=tuple(data.get("reasons") or ()),
        )
    detail = data.get("detail") or {}
    if isinstance(detail, dict):
        # A secret the gate let this agent read comes back as it does in-process.
        for key in data.get("secret_keys") or ():
            if isinstance(detail.get(key), str):
                detail[key] = SecretValue(detail[key])
    return Outcome(
        data["status"],
        data.get("summary") or "",
        detail,
        data.get("failure_kind"),
        data.get("audit_seq"),
    )


def _decision(data: dict[str, Any]) -> Decision:
    return Decision(
        effect=data["effect"],
        reasons=tuple(data.get("reasons") or ()),
        matched=tuple(
            MatchedRule(m["policy"], m["rule"], m["effect"], error=m.get("error"))
            for m in data.get("matched") or ()
        ),
        approvers=tuple(data.get("approvers") or ()),
        min_approvals=int(data.get("min_approvals") or 0),
        expires_in_seconds=data.get("expires_in_seconds"),
        errors=tuple(data.get("errors") or ()),
    )


Token = str | RemoteCredential


@typed_errors
class RemoteGate:
    """The gate at `url`, for the agent whose private key is `agent_key` (a 0600 PEM
    file from `opsgate agents export-key`, or a key object)."""

    def __init__(
        self,
        url: str,
        agent_key: str | PathLike[str] | Ed25519PrivateKey,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = normalise_url(url).rstrip("/")
        self._key = (
            agent_key
            if isinstance(agent_key, Ed25519PrivateKey)
            else read_private_key(Path(agent_key))
        )
        self.did = did_from_public_key(self._key.public_key())
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._last: RemoteCredential | None = None
        # The gate's latest DPoP-Nonce (when it asks for nonces), put in every proof.
        self._nonce: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- credentials -----------------------------------------------------------------

    def credential(self, scope: list[str], ttl_minutes: float | None = None) -> RemoteCredential:
        """A self-renewing credential for `scope`, bound to this agent's key."""
        self._last = RemoteCredential(self, scope, ttl_minutes)
        return self._last

    def _obtain(self, scope: list[str], ttl_minutes: float | None) -> dict[str, Any]:
        body = {
            "assertion": make_assertion(self._key, self.url, time.time()),
            "scope": scope,
            "ttl_minutes": ttl_minutes,
        }
        response = self._http.post("/v1/credentials", content=orjson.dumps(body), headers=_JSON)
        if response.status_code != 201:
            raise _error(response)
        data: dict[str, Any] = response.json()
        return data

    # -- requests ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        token: Token,
        request: ProofRequest | None,
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        raw = b"" if body is None else orjson.dumps(body)
        asked_nonce = renewed = False
        while True:
            text = token.token if isinstance(token, RemoteCredential) else token
            proof = make_dpop(
                self._key,
                method=method,
                url=self.url + path,
                token=text,
                request=request or body_request(method, path, raw),
                now=time.time(),
                nonce=self._nonce,
            )
            headers = {"Authorization": f"DPoP {text}", "DPoP": proof}
            if body is not None:
                headers.update(_JSON)
            response = self._http.request(method, path, content=raw or None, headers=headers)
            # A gate with nonces on names its latest on every answer; without the
            # header it has none, and a proof must then carry no nonce claim.
            nonce = response.headers.get("dpop-nonce")
            self._nonce = nonce or None
            code = _code(response)
            # RFC 9449 §8: the gate asks for its nonce; one retry with it, never more.
            if not asked_nonce and nonce and code == "use_dpop_nonce":
                asked_nonce = True
                continue
            # A credential an operator cut (or that lapsed) is news to this agent:
            # refused before anything ran, so a fresh one and one retry, never more.
            if (
                not renewed
                and isinstance(token, RemoteCredential)
                and response.status_code == 401
                and code in ("revoked", "expired")
            ):
                renewed = True
                token.renew()
                continue
            break
        if response.status_code >= 400:
            raise _error(response)
        return response

    def execute(
        self, token: Token, operation: Operation, *, approval_id: str | None = None
    ) -> Outcome | RemotePendingApproval:
        """Run `operation` through the gate: its Outcome, or a pending approval."""
        body = {
            "action": operation.action,
            "resource": operation.resource,
            "params": operation.params,
            "dry_run": operation.dry_run,
            "approval_id": approval_id,
        }
        if operation.secret is not None:
            body["secret"] = operation.secret.reveal()  # a secret write's value
        proof_for = ProofRequest.execute(operation, approval_id)
        return _result(self._send("POST", "/v1/operations", token, proof_for, body))

    def resume(
        self, approval_id: str, token: Token, *, secret: SecretValue | None = None
    ) -> Outcome | RemotePendingApproval:
        """Run an approved request (once), with fresh checks; a secret write's value is
        supplied again as `secret` (the gate never keeps it)."""
        path = f"/v1/approvals/{_segment(approval_id)}/resume"
        body = {} if secret is None else {"secret": secret.reveal()}
        proof_for = ProofRequest.resume(approval_id, secret)
        return _result(self._send("POST", path, token, proof_for, body))

    def authorize(
        self, token: Token, capability: str, *, params: dict[str, Any] | None = None
    ) -> Decision:
        body = {"capability": capability, "params": params}
        request = ProofRequest.authorize(capability, params)
        return _decision(self._send("POST", "/v1/authorize", token, request, body).json())

    def approval(self, approval_id: str, token: Token | None = None) -> RemoteApproval:
        """The status of one of this agent's approval requests."""
        path = f"/v1/operations/approvals/{_segment(approval_id)}"
        data = self._send("GET", path, self._token(token), None).json()
        return RemoteApproval(
            id=data["approval_id"],
            status=data["status"],
            capability=data["capability"],
            approvers=tuple(data["approvers"]),
            min_approvals=int(data["min_approvals"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            decisions=tuple(data.get("decisions") or ()),
        )

    def grants(self) -> dict[str, Any]:
        """This agent's own did, name, status and grants (for a fresh client assertion)."""
        body = {"assertion": make_assertion(self._key, self.url, time.time())}
        response = self._http.post(
            "/v1/credentials/grants", content=orjson.dumps(body), headers=_JSON
        )
        if response.status_code != 200:
            raise _error(response)
        data: dict[str, Any] = response.json()
        return data

    def record_tool_call(self, record: dict[str, Any], token: Token | None = None) -> int:
        """Audit one tool call of this agent (see `opsgate mcp`); the event's seq."""
        response = self._send("POST", "/v1/tool-calls", self._token(token), None, record)
        return int(response.json()["seq"])

    def wait_for_approval(
        self, approval_id: str, timeout: float = 60.0, *, token: Token | None = None
    ) -> RemoteApproval:
        """Poll (backing off from 0.2 s to 5 s) until the request is no longer pending
        or `timeout` seconds pass; returns its last state either way."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            req = self.approval(approval_id, token)
            left = deadline - time.monotonic()
            if req.status != "pending" or left <= 0:
                return req
            time.sleep(min(delay, left))
            delay = min(delay * 1.6, 5.0)

    def _token(self, token: Token | None) -> Token:
        if token is not None:
            return token
        if self._last is None:
            raise errors.CredentialMissing(
                "no credential yet: call credential(scope) first", code="credential_missing"
            )
        return self._last

    def __repr__(self) -> str:
        return f"RemoteGate(url={self.url!r}, agent={self.did!r})"


_JSON = {"Content-Type": "application/json"}


_APPROVAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _segment(value: str) -> str:
    """An approval id as one path segment. Only an id the gate could have issued: one
    that needs percent-encoding, or `.`/`..`, would reach another path than the proof
    names, and the gate refuses that as misuse of the credential, charged to its agent."""
    if not isinstance(value, str) or not _APPROVAL_ID.match(value):
        raise errors.ApprovalError("approval id is malformed", code="approval_not_found")
    return value


def connect(
    url: str, agent_key: str | PathLike[str] | Ed25519PrivateKey, **options: Any
) -> RemoteGate:
    """`RemoteGate(url, agent_key=...)`."""
    return RemoteGate(url, agent_key, **options)
