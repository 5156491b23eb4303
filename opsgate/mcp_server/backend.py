"""How `opsgate mcp` reaches the gate, as one agent.

RemoteBackend  the gate is `opsgate serve` at a URL; this process holds the agent's
               private key only (the remote SDK signs assertions and proofs).
LocalBackend   a single-user setup: the gate's state dir opened in this process, a
               credential issued for the agent as `opsgate deploy` etc. do.

Either way every operation goes through `Gate.execute` and every tool call is
recorded in the gate's audit as the agent (`tool.call`). Both are synchronous (the
server runs them in a worker thread).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opsgate.errors import ApprovalError, ConfigError, CredentialError, safe_text
from opsgate.operations.base import Operation, Outcome

if TYPE_CHECKING:
    from opsgate.gate import Gate


@dataclass(frozen=True, slots=True)
class Pending:
    """An operation waiting for a human approval."""

    approval_id: str
    approvers: tuple[str, ...]
    min_approvals: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Verdict:
    """A gate decision on a capability (`authorize`)."""

    effect: str
    reasons: tuple[str, ...]


class Backend(Protocol):
    agent_name: str
    agent_did: str
    grants: tuple[str, ...]
    #: The gate's external URL, where approvers decide (None when it has none).
    base_url: str | None

    def execute(self, operation: Operation, approval_id: str | None) -> Outcome | Pending: ...

    def authorize(self, capability: str, params: dict[str, Any]) -> Verdict: ...

    def approval(self, approval_id: str) -> dict[str, Any]: ...

    def record(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _pending(result: Any) -> Pending:
    return Pending(
        approval_id=str(result.approval_id),
        approvers=tuple(result.approvers),
        min_approvals=int(result.min_approvals),
        expires_at=result.expires_at,
    )


class RemoteBackend:
    """The agent over the remote SDK: its own key, the gate's URL, nothing else."""

    def __init__(self, url: str, key_file: Path, agent: str, *, timeout: float = 60.0) -> None:
        from opsgate.client import RemoteGate

        self._gate = RemoteGate(url, key_file, timeout=timeout)
        try:
            me = self._gate.grants()
            if agent not in (me["name"], me["did"]):
                raise ConfigError(
                    f"the key file belongs to agent {safe_text(me['name'])!r}, not "
                    f"{safe_text(agent)!r}",
                    code="agent_key_mismatch",
                )
            self.agent_name = str(me["name"])
            self.agent_did = str(me["did"])
            self.grants = tuple(str(c) for c in me["capabilities"])
            # One self-renewing credential of exactly the agent's grants: anything
            # beyond them is refused (and charged) by the gate, never by this process.
            self._credential = self._gate.credential(list(self.grants)) if self.grants else None
        except BaseException:
            self._gate.close()
            raise
        self.base_url: str | None = self._gate.url

    def _token(self) -> Any:
        if self._credential is None:
            raise CredentialError(
                f"agent {safe_text(self.agent_name)!r} has no grants", code="scope_invalid"
            )
        return self._credential

    def execute(self, operation: Operation, approval_id: str | None) -> Outcome | Pending:
        from opsgate.client import RemotePendingApproval

        result = self._gate.execute(self._token(), operation, approval_id=approval_id)
        if isinstance(result, RemotePendingApproval):
            return _pending(result)
        return result

    def authorize(self, capability: str, params: dict[str, Any]) -> Verdict:
        decision = self._gate.authorize(self._token(), capability, params=params)
        return Verdict(decision.effect, tuple(decision.reasons))

    def approval(self, approval_id: str) -> dict[str, Any]:
        req = self._gate.approval(approval_id, self._token())
        return {
            "approval_id": req.id,
            "status": req.status,
            "capability": req.capability,
            "approvers": list(req.approvers),
            "min_approvals": req.min_approvals,
            "expires_at": req.expires_at.isoformat(),
            "decisions": [dict(d) for d in req.decisions],
        }

    def record(self, record: dict[str, Any]) -> None:
        self._gate.record_tool_call(record, self._token())

    def close(self) -> None:
        self._gate.close()


class LocalBackend:
    """The gate opened in this process (a single user's state dir): the agent's
    credential is issued by the local operator, as the operation commands do."""

    def __init__(self, gate: Gate, agent: str, *, operator: str, owns_gate: bool = False) -> None:
        self._gate = gate
        self._owns_gate = owns_gate
        self._operator = operator  # who issues the agent's credentials (audited)
        state = gate.agents.state(agent)
        self.agent_name: str = state.name
        self.agent_did: str = state.did
        self.grants: tuple[str, ...] = (
            () if state.grant is None else tuple(state.grant.capabilities)
        )
        self.base_url: str | None = gate.config.server.external_url
        self._lock = threading.Lock()
        self._credential: Any = None

    @classmethod
    def open(cls, state_dir: str | None, agent: str, *, operator: str) -> LocalBackend:
        """The gate of `state_dir` (never created here), closed with the backend. Like
        the CLI's commands, it compares its policies with those in force and never
        publishes them over the replicas' (but on SQLite, where every gate does)."""
        from opsgate.config import resolve_state_dir
        from opsgate.gate import Gate

        gate = Gate.open(resolve_state_dir(state_dir), create=False, publish_policies=False)
        try:
            return cls(gate, agent, operator=operator, owns_gate=True)
        except BaseException:
            gate.close()
            raise

    def _token(self) -> str:
        """A credential of the agent's grants, replaced when a third of its life is left
        or at once when it was revoked (presenting it would be charged as misuse)."""
        from opsgate.credentials.handle import is_revoked

        with self._lock:
            cred = self._credential
            if cred is not None and not is_revoked(self._gate.state, cred):
                issued, expires = cred.issued_at.timestamp(), cred.expires_at.timestamp()
                if time.time() < expires - (expires - issued) / 3:
                    return str(cred.token)
            self._credential = self._gate.credential_manager.issue_credential(
                self.agent_did,
                scope=list(self.grants),
                ttl_minutes=self._gate.config.cli.credential_ttl_minutes,
                requested_by=self._operator,
            )
            return str(self._credential.token)

    def _proof(self, token: str, request: Any) -> str | None:
        if not self._gate.config.require_proof:
            return None
        from opsgate.credentials.proof import make_proof

        key = self._gate.agents.private_key(self.agent_did)
        return make_proof(key, token, request, time.time())

    def execute(self, operation: Operation, approval_id: str | None) -> Outcome | Pending:
        from opsgate.approvals import PendingApproval
        from opsgate.credentials.proof import ProofRequest

        token = self._token()
        proof = self._proof(token, ProofRequest.execute(operation, approval_id))
        result = self._gate.execute(token, operation, proof=proof, approval_id=approval_id)
        if isinstance(result, PendingApproval):
            return _pending(result)
        return result

    def authorize(self, capability: str, params: dict[str, Any]) -> Verdict:
        from opsgate.credentials.proof import ProofRequest

        token = self._token()
        proof = self._proof(token, ProofRequest.authorize(capability, params))
        decision = self._gate.authorize(token, capability, proof=proof, params=params)
        return Verdict(decision.effect, tuple(decision.reasons))

    def approval(self, approval_id: str) -> dict[str, Any]:
        req = self._gate.approvals.get(approval_id)
        if req.requester_did != self.agent_did:  # as over HTTP: others' are not found
            raise ApprovalError(
                f"no approval request {safe_text(approval_id)!r}", code="approval_not_found"
            )
        return {
            "approval_id": req.id,
            "status": req.status,
            "capability": req.capability,
            "approvers": list(req.approvers),
            "min_approvals": req.min_approvals,
            "expires_at": req.expires.isoformat(),
            "decisions": [
                {"approver": d.approver, "decision": d.decision, "at": d.at} for d in req.decisions
            ],
        }

    def record(self, record: dict[str, Any]) -> None:
        fields = dict(record)
        withheld = fields.pop("args_withheld", None)
        self._gate.audit.append(
            "tool.call",
            actor=self.agent_did,
            at=time.time(),
            surface=fields.pop("surface", "mcp"),
            tool=fields.pop("tool"),
            args_digest=fields.pop("args_digest"),
            **({} if withheld is None else {"args_withheld": withheld}),
            outcome=fields.pop("outcome"),
            code=fields.pop("code", None),
            capability=_safe(fields.pop("capability", None)),
            approval=_safe(fields.pop("approval_id", None)),
            operation_seq=fields.pop("audit_seq", None),
        )

    def close(self) -> None:
        if self._owns_gate:
            self._gate.close()


def _safe(value: object) -> str | None:
    return None if value is None else safe_text(value)
