"""One agent over HTTP sees only its own: another agent's operations and approval
requests are not found, whatever id or seq it names (out-of-range ones included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import DEPLOY_SCOPE, audit_events, deploy
from server_helpers import Api, open_api

from opsgate.credentials.proof import ProofRequest


@pytest.fixture
def api(tmp_path: Path) -> Api:
    api = open_api(tmp_path / "state", refusal_burst=1000)
    api.other = api.gate.register_agent(  # type: ignore[attr-defined]
        "other-agent", DEPLOY_SCOPE, sponsor="mallory@company.com"
    )
    return api


def _as_other(api: Api, method: str, path: str, **kw: Any) -> Any:
    other = api.other  # type: ignore[attr-defined]
    return api.agent_call(method, path, api.credential(other), key=api.agent_key(other), **kw)


def test_another_agents_operation_and_approval_are_not_found(api: Api) -> None:
    token = api.credential()
    seq = api.execute(token, deploy("staging/app-web")).json()["audit_seq"]
    approval_id = api.execute(token, deploy("production/app-web")).json()["approval_id"]
    own = api.agent_call("GET", f"/v1/operations/{seq}", token)
    assert own.status_code == 200, own.text
    r = _as_other(api, "GET", f"/v1/operations/{seq}")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = _as_other(api, "GET", f"/v1/operations/approvals/{approval_id}")
    assert (r.status_code, r.json()["code"]) == (404, "approval_not_found")
    resume = ProofRequest.resume(approval_id)
    r = _as_other(api, "POST", f"/v1/approvals/{approval_id}/resume", body={}, request=resume)
    assert r.status_code == 404, r.text
    assert api.world.executor.count == 1  # the agent's own staging deploy only


@pytest.mark.parametrize("seq", ["0", "-1", str(2**63), str(2**64), "1" + "0" * 30])
def test_an_operation_seq_out_of_range_is_not_found(api: Api, seq: str) -> None:
    """A seq no database integer holds is an operation that does not exist (it was a 500)."""
    r = api.agent_call("GET", f"/v1/operations/{seq}", api.credential())
    assert (r.status_code, r.json()["code"]) == (404, "not_found"), r.text


def test_another_agents_approval_answers_like_one_that_does_not_exist(api: Api) -> None:
    """Resuming, or executing under, another agent's approval gets the very answer a
    made-up id gets (it said `approval_not_yours`: the id exists); the audit keeps the
    real code."""
    token = api.credential()
    op = deploy("production/app-web")
    theirs = api.execute(token, op).json()["approval_id"]
    made_up = "apr_" + "0" * 24
    other = api.other  # type: ignore[attr-defined]
    other_token, other_key = api.credential(other), api.agent_key(other)

    def answers(approval_id: str) -> list[tuple[int, str, str]]:
        resume = api.agent_call(
            "POST",
            f"/v1/approvals/{approval_id}/resume",
            other_token,
            {},
            request=ProofRequest.resume(approval_id),
            key=other_key,
        )
        staging = deploy("staging/app-web")  # an operation the other agent may run
        body = {
            "action": staging.action,
            "resource": staging.resource,
            "params": staging.params,
            "dry_run": False,
            "approval_id": approval_id,
        }
        execute = api.agent_call(
            "POST",
            "/v1/operations",
            other_token,
            body,
            request=ProofRequest.execute(staging, approval_id),
            key=other_key,
        )
        return [
            (r.status_code, r.json()["code"], r.json()["message"].replace(approval_id, "ID"))
            for r in (resume, execute)
        ]

    assert answers(theirs) == answers(made_up)
    assert [a[:2] for a in answers(theirs)] == [(404, "approval_not_found")] * 2
    refused = [e["code"] for e in audit_events(api.gate, "approval.refused")]
    assert "approval_not_yours" in refused
    assert api.world.executor.count == 0
