"""The HTTP endpoints `opsgate mcp` uses besides operations: an agent's own grants for
a client assertion (single use, signed by its key), the `tool.call` record (DPoP,
body bound, strict body), and secret values over the remote SDK (a read's value to
the agent that may read it, a write's value never in a param or the audit)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import DEPLOY_SCOPE, audit_events, database_text, stored_trust
from server_helpers import BASE, Api, open_api

from opsgate.client import RemoteGate
from opsgate.credentials.proof import ProofRequest
from opsgate.errors import OpsgateError
from opsgate.operations.base import Operation
from opsgate.secrets.value import SecretValue
from opsgate.server.dpop import make_assertion

DIGEST = "sha256:" + "ab" * 32
RECORD = {"tool": "deploy", "args_digest": DIGEST, "outcome": "succeeded"}
VALUE = "Sw0rdf1sh-over-http-Q9"


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return open_api(tmp_path / "state")


def test_an_agent_reads_its_own_grants_with_a_single_use_assertion(api: Api) -> None:
    assertion = make_assertion(api.agent_key(), BASE, time.time())
    r = api.client.post("/v1/credentials/grants", json={"assertion": assertion})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "did": api.world.agent.did,
        "name": "deploy-agent",
        "status": "active",
        "capabilities": DEPLOY_SCOPE,
    }
    again = api.client.post("/v1/credentials/grants", json={"assertion": assertion})
    assert again.status_code == 401 and again.json()["code"] == "assertion_replayed"
    assert audit_events(api.gate, "credential.assertion_refused")[-1]["code"] == (
        "assertion_replayed"
    )


@pytest.mark.parametrize(
    "body",
    [{}, {"assertion": "garbage"}, {"assertion": "a.b.c"}, {"assertion": 3}, {"x": 1}],
)
def test_grants_need_a_valid_assertion(api: Api, body: dict[str, object]) -> None:
    r = api.client.post("/v1/credentials/grants", json=body)
    assert r.status_code in (401, 422), r.text
    assert "capabilities" not in r.text


def test_another_gates_audience_is_refused(api: Api) -> None:
    assertion = make_assertion(api.agent_key(), "http://elsewhere", time.time())
    r = api.client.post("/v1/credentials/grants", json={"assertion": assertion})
    assert r.status_code == 401 and r.json()["code"] == "bad_audience"


def test_a_tool_call_is_recorded_as_the_proven_agent(api: Api) -> None:
    token = api.credential()
    body = {**RECORD, "capability": "deploy:staging/app-web", "audit_seq": 3}
    r = api.agent_call("POST", "/v1/tool-calls", token, body)
    assert r.status_code == 201, r.text
    event = audit_events(api.gate, "tool.call")[-1]
    assert event["tool"] == "deploy" and event["surface"] == "mcp"
    assert event["args_digest"] == DIGEST and event["outcome"] == "succeeded"
    assert event["operation_seq"] == 3
    record = api.gate.audit.tail(1, event_type="tool.call")[0]
    assert record.actor == api.world.agent.did and record.seq == r.json()["seq"]


def test_a_capability_of_any_length_is_recorded_described_never_refused(api: Api) -> None:
    """A record whose capability (or approval id) is longer than a capability may be
    is still the call's `tool.call` event: the text described by its length, as any
    long text in the audit, not a 422 that leaves the call unrecorded."""
    token = api.credential()
    long_capability = "read:secrets/staging/" + "/".join(["s" * 60] * 5)
    body = {
        **RECORD,
        "outcome": "refused",
        "code": "capability_malformed",
        "capability": long_capability,
        "approval_id": "a" * 300,
        "args_withheld": 2,
    }
    r = api.agent_call("POST", "/v1/tool-calls", token, body)
    assert r.status_code == 201, r.text
    event = audit_events(api.gate, "tool.call")[-1]
    assert event["capability"] == f"<{len(long_capability)} characters, not shown>"
    assert event["approval"] == "<300 characters, not shown>"
    assert event["args_withheld"] == 2 and event["outcome"] == "refused"
    short = api.agent_call("POST", "/v1/tool-calls", token, RECORD)
    assert short.status_code == 201
    assert "args_withheld" not in audit_events(api.gate, "tool.call")[-1]


@pytest.mark.parametrize(
    "bad",
    [
        {"tool": "Deploy; drop"},
        {"args_digest": "md5:00"},
        {"args_withheld": 0},
        {"args_withheld": "2"},
        {"capability": 7},
        {"outcome": "allowed"},
        {"code": "Not A Code"},
        {"surface": "cli"},
        {"extra": 1},
        {"audit_seq": "3"},
    ],
)
def test_a_malformed_record_is_refused_and_nothing_is_written(
    api: Api, bad: dict[str, object]
) -> None:
    token = api.credential()
    before = len(audit_events(api.gate, "tool.call"))
    r = api.agent_call("POST", "/v1/tool-calls", token, {**RECORD, **bad})
    assert r.status_code == 422 and r.json()["code"] == "request_invalid"
    assert len(audit_events(api.gate, "tool.call")) == before


def test_a_record_needs_the_agents_credential_and_proof(api: Api) -> None:
    r = api.client.post("/v1/tool-calls", json=RECORD)
    assert r.status_code == 401 and r.json()["code"] == "credential_missing"
    r = api.client.post("/v1/tool-calls", json=RECORD, headers=api.operator())
    assert r.status_code == 403 and r.json()["code"] == "wrong_role"
    token = api.credential()
    # A proof made for another body does not carry this one.
    other = ProofRequest.authorize("deploy:staging/app-web", None)
    r = api.agent_call("POST", "/v1/tool-calls", token, RECORD, request=other)
    assert r.status_code == 401
    assert audit_events(api.gate, "tool.call") == []


def test_secret_values_travel_to_the_agent_and_nowhere_else(api: Api) -> None:
    agent = api.gate.register_agent(
        "secrets-agent",
        ["read:secrets/staging", "write:secrets/staging"],
        "lead@company.com",
        800,
    )
    key = api.gate.agents.private_key(agent.did)
    with RemoteGate(BASE, key, transport=api.client._transport) as gate:
        cred = gate.credential(["read:secrets/staging", "write:secrets/staging"])
        write = Operation("write", "secrets/staging/db", {}, secret=SecretValue(VALUE))
        wrote = gate.execute(cred, write)
        assert wrote.status == "succeeded"
        read = gate.execute(cred, Operation("read", "secrets/staging/db", {}))
        assert read.status == "succeeded"
        value = read.detail["value"]  # type: ignore[union-attr]
        assert isinstance(value, SecretValue) and value.reveal() == VALUE
        assert VALUE not in repr(read)
        # Out of scope: refused, and the value is in no part of the refusal.
        with pytest.raises(OpsgateError) as refused:
            gate.execute(
                cred, Operation("write", "secrets/production/db", {}, secret=SecretValue(VALUE))
            )
        assert refused.value.code == "operation_denied" and VALUE not in str(refused.value)
    assert VALUE not in database_text(api.gate)


@pytest.mark.parametrize("approval_id", ["apr x", "apr%zz", "apr_é", "..", "a/b", ""])
def test_an_approval_id_no_path_can_carry_is_refused_before_sending(
    api: Api, approval_id: str
) -> None:
    """The SDK (and so the MCP approval_status tool, whose id is the model's text) names an
    approval in the URL: an id that would need percent-encoding or dot-normalising made a
    proof for another URL, refused as credential misuse and charged to the agent's trust."""
    did = api.world.agent.did
    with RemoteGate(BASE, api.agent_key(), transport=api.client._transport) as gate:
        cred = gate.credential(DEPLOY_SCOPE)
        before = stored_trust(api.gate, did)
        seq = api.gate.audit.head()[0]
        for call in (gate.approval, gate.resume):
            with pytest.raises(OpsgateError) as refused:
                call(approval_id, cred)
            assert refused.value.code == "approval_not_found"
    assert stored_trust(api.gate, did) == before
    assert [r.type for r in api.gate.audit.events(after_seq=seq)] == []


def test_a_secret_of_the_largest_allowed_size_is_not_refused_at_the_door(tmp_path: Path) -> None:
    """The body limit used to equal the largest secret value (64 KiB), so a value the gate
    accepts was 413 over HTTP once its JSON envelope was added. Unless set, the limit
    leaves room for it; one byte more than the value limit is the gate's own refusal."""
    from fastapi.testclient import TestClient
    from helpers import open_world

    from opsgate.server import create_app

    world = open_world(tmp_path / "state")
    gate = world.gate
    try:
        settings = gate.config.server.model_copy(update={"external_url": BASE})
        assert settings.max_body_bytes > 2 * gate.config.secrets.max_value_bytes
        client = TestClient(create_app(gate, settings))
        agent = gate.register_agent(
            "big-secrets", ["write:secrets/staging"], "lead@company.com", 800
        )
        key = gate.agents.private_key(agent.did)
        biggest = "v" * gate.config.secrets.max_value_bytes
        with RemoteGate(BASE, key, transport=client._transport) as remote:
            cred = remote.credential(["write:secrets/staging"])
            wrote = remote.execute(
                cred, Operation("write", "secrets/staging/big", {}, secret=SecretValue(biggest))
            )
            assert wrote.status == "succeeded"
            with pytest.raises(OpsgateError) as refused:
                remote.execute(
                    cred,
                    Operation(
                        "write", "secrets/staging/big", {}, secret=SecretValue(biggest + "v")
                    ),
                )
            assert refused.value.code != "body_too_large"
            assert biggest not in str(refused.value)
    finally:
        gate.close()
