"""A self-renewing credential for one agent and scope, for SDK callers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsgate.boundary import typed_errors
from opsgate.clock import to_epoch
from opsgate.credentials.manager import Credential
from opsgate.credentials.proof import ProofRequest, make_proof
from opsgate.errors import CredentialError
from opsgate.operations.base import Operation
from opsgate.secrets.value import SecretValue
from opsgate.state import LiveState


class Issue(Protocol):
    """Issues a credential (the gate's `CredentialManager.issue_credential`)."""

    def __call__(
        self,
        agent_id: str,
        scope: list[str],
        ttl_minutes: float | None = None,
        *,
        now: datetime | float | None = None,
    ) -> Credential: ...


def is_revoked(state: LiveState, credential: Credential) -> bool:
    """Whether `credential` was revoked, by id or by its agent's cut-off, as this
    process knows (two dictionary lookups): a holder replaces it at once rather than
    keep presenting it, each use a refusal and the first charged as misuse."""
    if state.is_revoked(credential.jti):
        return True
    agent = state.agent(credential.agent_id)
    nb = None if agent is None else agent.credentials_not_before
    return nb is not None and credential.issued_at.timestamp() <= nb


@typed_errors
class CredentialHandle:
    """Holds the current credential; replaces it once less than a third of its life is left.

    The replaced token stays valid until its own expiry, so requests in flight
    are never cut off by a renewal.
    """

    def __init__(
        self,
        agent_did: str,
        agent_name: str,
        scope: list[str],
        ttl_minutes: float | None,
        *,
        issue: Issue,
        state: LiveState,
        private_key: Callable[[str], Ed25519PrivateKey],
    ) -> None:
        """`issue` is the gate's `issue_credential`, `state` its live state (revocations),
        `private_key` reads an agent's key (for proofs of possession)."""
        self._did = agent_did
        self._name = agent_name
        self._issue = issue
        self._state = state
        self._private_key = private_key
        self._scope = list(scope)
        self._ttl = ttl_minutes
        self._lock = threading.Lock()
        self._current: Credential | None = None
        self.renewals = 0
        self.current()  # issue now: scope errors surface at creation, not at first use

    def current(self, now: datetime | float | None = None) -> Credential:
        t = to_epoch(now)
        with self._lock:
            c = self._current
            if c is None or t >= self._renew_at(c) or self._revoked(c):
                if c is not None:
                    self.renewals += 1
                c = self._issue(self._did, self._scope, self._ttl, now=t)
                self._current = c
            return c

    def _revoked(self, c: Credential) -> bool:
        """A revoked credential is replaced at once (two dictionary lookups)."""
        return is_revoked(self._state, c)

    @staticmethod
    def _renew_at(c: Credential) -> float:
        issued, expires = c.issued_at.timestamp(), c.expires_at.timestamp()
        return expires - (expires - issued) / 3

    @property
    def token(self) -> str:
        return self.current().token

    # The attributes a RemoteCredential has too, so an agent reads either alike.
    @property
    def scope(self) -> list[str]:
        return list(self._scope)

    @property
    def jti(self) -> str:
        return self.current().jti

    @property
    def issued_at(self) -> datetime:
        return self.current().issued_at

    @property
    def expires_at(self) -> datetime:
        return self.current().expires_at

    def proof(
        self,
        request: Operation | ProofRequest,
        now: datetime | float | None = None,
        *,
        approval_id: str | None = None,
    ) -> str:
        """Proof of possession of the agent's key for one request, used once.

        Pass the `Operation` you are about to `execute` (and the `approval_id` you
        pass with it), or a `ProofRequest` (see `authorize_proof`, `resume_proof`).
        The proof covers the whole request: changing any param invalidates it.
        """
        if isinstance(request, Operation):
            request = ProofRequest.execute(request, approval_id)
        elif not isinstance(request, ProofRequest) or approval_id is not None:
            raise CredentialError(
                "a proof is for an Operation (with its approval_id) or a ProofRequest",
                code="proof_request_invalid",
            )
        t = to_epoch(now)
        key = self._private_key(self._did)
        return make_proof(key, self.current(t).token, request, t)

    def authorize_proof(
        self,
        capability: str,
        params: dict[str, Any] | None = None,
        now: datetime | float | None = None,
    ) -> str:
        """Proof for `gate.authorize(token, capability, params=params)`."""
        return self.proof(ProofRequest.authorize(capability, params), now)

    def resume_proof(
        self,
        approval_id: str,
        now: datetime | float | None = None,
        *,
        secret: SecretValue | None = None,
    ) -> str:
        """Proof for `gate.resume(approval_id, token, secret=secret)`."""
        return self.proof(ProofRequest.resume(approval_id, secret), now)

    def __repr__(self) -> str:
        c = self._current
        jti = c.jti if c else None
        return f"CredentialHandle(agent={self._name!r}, scope={self._scope!r}, jti={jti!r})"
