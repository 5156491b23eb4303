"""A self-renewing credential for one agent and scope, for SDK callers."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opsgate.boundary import typed_errors
from opsgate.clock import to_epoch
from opsgate.credentials.manager import Credential
from opsgate.credentials.proof import ProofRequest, make_proof
from opsgate.errors import CredentialError
from opsgate.operations.base import Operation

if TYPE_CHECKING:
    from opsgate.gate import Gate
    from opsgate.identity.registry import Agent


@typed_errors
class CredentialHandle:
    """Holds the current credential; replaces it once less than a third of its life is left.

    The replaced token stays valid until its own expiry, so requests in flight
    are never cut off by a renewal.
    """

    def __init__(
        self, gate: Gate, agent: Agent, scope: list[str], ttl_minutes: float | None
    ) -> None:
        self._gate = gate
        self._agent = agent
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
                c = self._gate.credential_manager.issue_credential(
                    self._agent.did, self._scope, self._ttl, now=t
                )
                self._current = c
            return c

    def _revoked(self, c: Credential) -> bool:
        """A revoked credential is replaced at once (two dictionary lookups)."""
        state = self._gate.state
        if state.is_revoked(c.jti):
            return True
        agent = state.agent(c.agent_id)
        nb = None if agent is None else agent.credentials_not_before
        return nb is not None and c.issued_at.timestamp() <= nb

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
        key = self._gate.agents.private_key(self._agent.did)
        return make_proof(key, self.current(t).token, request, t)

    def authorize_proof(
        self,
        capability: str,
        params: dict[str, Any] | None = None,
        now: datetime | float | None = None,
    ) -> str:
        """Proof for `gate.authorize(token, capability, params=params)`."""
        return self.proof(ProofRequest.authorize(capability, params), now)

    def resume_proof(self, approval_id: str, now: datetime | float | None = None) -> str:
        """Proof for `gate.resume(approval_id, token)`."""
        return self.proof(ProofRequest.resume(approval_id), now)

    def __repr__(self) -> str:
        c = self._current
        jti = c.jti if c else None
        return f"CredentialHandle(agent={self._agent.name!r}, scope={self._scope!r}, jti={jti!r})"
