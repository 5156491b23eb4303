"""Small pieces shared by the routers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from opsgate.approvals import PendingApproval
from opsgate.operations.base import Outcome
from opsgate.secrets.value import SecretValue
from opsgate.server.context import ServerContext

# The largest audit seq a database integer holds: a path or query asking beyond it
# names no record (and must not reach the database as an overflow).
MAX_SEQ = 2**63 - 1


class Body(BaseModel):
    """Request bodies: strict, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


def ctx_of(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status)


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself (it needs the exact bytes)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def result_response(result: Outcome | PendingApproval) -> Response:
    """An Outcome is 200; a pending approval is 202 with what the agent waits for."""
    if isinstance(result, PendingApproval):
        return json(
            {
                "status": "approval_pending",
                "approval_id": result.approval_id,
                "approvers": list(result.approvers),
                "min_approvals": result.min_approvals,
                "expires_at": result.expires_at.isoformat(),
                "digest": result.digest,
                "reasons": list(result.reasons),
            },
            202,
        )
    detail, secret_keys = _revealed(result.detail)
    return json(
        {
            "status": result.status,
            "summary": result.summary,
            "detail": detail,
            "secret_keys": secret_keys,
            "failure_kind": result.failure_kind,
            "audit_seq": result.audit_seq,
        }
    )


def _revealed(detail: Any) -> tuple[Any, list[str]]:
    """An outcome's detail as JSON: a secret the gate let this agent read (a
    `read:secrets/...` outcome) goes to that agent as text, its key named in
    `secret_keys`, so the remote SDK hands it back as a SecretValue."""
    if not isinstance(detail, dict):
        return detail, []
    keys = [k for k, v in detail.items() if isinstance(v, SecretValue)]
    if not keys:
        return detail, []
    return {k: v.reveal() if k in keys else v for k, v in detail.items()}, keys
