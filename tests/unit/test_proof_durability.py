"""Which DPoP proof ids may skip their own disk sync: only those of requests the gate
always audits durably before answering (authorize, execute, resume). Any other agent
request (renew, revoke, status, tool records) records its proof id durably itself."""

from __future__ import annotations

from pathlib import Path

import orjson
from helpers import audit_types
from server_helpers import open_api, proof_parts, sign

from opsgate.credentials.proof import ProofRequest


def _batches(api: object) -> tuple[int, int]:
    """Proof ids recorded with a sync of their own, and without (before an audit)."""
    proofs = api.gate.credential_manager.proofs  # type: ignore[attr-defined]
    return proofs._uses.items, proofs._uses_before_audit.items + proofs.noted_recorded


def test_only_audited_requests_record_proof_ids_without_their_own_sync(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    durable, deferred = _batches(api)

    r = api.agent_call(
        "POST",
        "/v1/authorize",
        token,
        {"capability": "deploy:staging/app"},
        request=ProofRequest.authorize("deploy:staging/app", None),
    )
    assert r.status_code == 200, r.text
    assert _batches(api) == (durable, deferred + 1)
    assert audit_types(api.gate)[-1] == "authorize"  # its durable record

    r = api.agent_call("POST", "/v1/credentials/renew", token, {})
    assert r.status_code == 201, r.text
    assert _batches(api) == (durable + 1, deferred + 1)


def test_a_proof_recorded_without_its_own_sync_is_still_single_use(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    body = {"capability": "deploy:staging/app"}
    request = ProofRequest.authorize("deploy:staging/app", None)
    header, claims = proof_parts(api.agent_key(), "POST", "/v1/authorize", token, request)
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": sign(api.agent_key(), header, claims),
        "Content-Type": "application/json",
    }
    first = api.client.post("/v1/authorize", content=orjson.dumps(body), headers=headers)
    assert first.status_code == 200, first.text
    second = api.client.post("/v1/authorize", content=orjson.dumps(body), headers=headers)
    assert second.status_code == 401 and second.json()["code"] == "proof_replayed", second.text
