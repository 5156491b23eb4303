"""A credential that was cut (an operator's revocation) or ran out, presented by the
holder of its key with a valid proof, is refused and recorded but charges its agent
nothing: over HTTP an agent cannot know its credential was revoked. The same token
without the key (a thief's) is charged as misuse, once. And no refusal of a token
whose key was not proven spends its agent's refusal budget: one leaked token, even
long expired, cannot shut its agent out of the API."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from helpers import audit_events, stored_trust
from server_helpers import BASE, Api, open_api, proof_parts, sign

from opsgate.client import RemoteGate
from opsgate.credentials.proof import ProofRequest
from opsgate.errors import OpsgateError

CAPABILITY = "deploy:staging/app-web"


def _authorize(api: Api, token: str, *, proof: bool = True, client: TestClient | None = None):  # type: ignore[no-untyped-def]
    body = {"capability": CAPABILITY}
    headers = {"Authorization": f"DPoP {token}", "Content-Type": "application/json"}
    if proof:
        key = api.agent_key()
        header, claims = proof_parts(
            key, "POST", "/v1/authorize", token, ProofRequest.authorize(CAPABILITY, None)
        )
        headers["DPoP"] = sign(key, header, claims)
    return (client or api.client).post("/v1/authorize", json=body, headers=headers)


def _rejections(api: Api, code: str) -> list[dict[str, object]]:
    return [e for e in audit_events(api.gate, "credential.rejected") if e.get("code") == code]


def test_a_revoked_credential_from_its_key_holder_is_refused_and_not_charged(
    tmp_path: Path,
) -> None:
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    before = stored_trust(api.gate, did)
    for _ in range(3):  # an operator cuts the agent's credential three times over
        token = api.credential()
        assert _authorize(api, token).status_code == 200
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        api.gate.credential_manager.revoke(jti, reason="rotation")
        r = _authorize(api, token)
        assert (r.status_code, r.json()["code"]) == (401, "revoked"), r.text
    assert stored_trust(api.gate, did) == before
    assert api.gate.agents.state(did).status == "active"
    assert len(_rejections(api, "revoked")) == 3  # each refusal is still on record


def test_the_same_revoked_token_without_its_key_is_charged_once(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    token = api.credential()
    api.gate.credential_manager.revoke_agent(did, reason="leaked")
    before = stored_trust(api.gate, did)
    for _ in range(3):
        r = _authorize(api, token, proof=False)
        assert r.status_code == 401
    assert stored_trust(api.gate, did) < before
    charged = stored_trust(api.gate, did)
    # The key's holder afterwards: refused, never charged again for this credential.
    assert _authorize(api, token).status_code == 401
    assert stored_trust(api.gate, did) == charged


def test_a_replayed_proof_does_not_pass_for_the_key_holder(tmp_path: Path) -> None:
    """Possession is proven by a fresh proof only: the same proof sent twice for a
    revoked credential is charged the second time (a copy, not the key)."""
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    token = api.credential()
    api.gate.credential_manager.revoke_agent(did, reason="rotation")
    key = api.agent_key()
    header, claims = proof_parts(
        key, "POST", "/v1/authorize", token, ProofRequest.authorize(CAPABILITY, None)
    )
    headers = {"Authorization": f"DPoP {token}", "DPoP": sign(key, header, claims)}
    before = stored_trust(api.gate, did)
    first = api.client.post("/v1/authorize", json={"capability": CAPABILITY}, headers=headers)
    assert first.json()["code"] == "revoked"
    assert stored_trust(api.gate, did) == before
    again = api.client.post("/v1/authorize", json={"capability": CAPABILITY}, headers=headers)
    assert again.status_code == 401
    assert stored_trust(api.gate, did) < before


def test_a_leaked_expired_token_cannot_shut_its_agent_out(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state", refusal_burst=5, refusal_rate=0.01)
    did = api.world.agent.did
    leaked = api.gate.credential_manager.issue_credential(
        did, ["deploy:staging"], now=time.time() - 3600
    ).token
    assert jwt.decode(leaked, options={"verify_signature": False})["sub"] == did
    attacker = TestClient(api.client.app, client=("10.6.6.6", 40000))
    codes = [_authorize(api, leaked, proof=False, client=attacker).status_code for _ in range(25)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the address is limited
    # The agent, from its own address, with its own key: still answered.
    token = api.credential()
    r = _authorize(api, token)
    assert r.status_code == 200, r.text
    assert r.json()["effect"] == "allow"


def test_refusals_the_agents_key_proved_still_spend_its_budget(tmp_path: Path) -> None:
    """The control: an agent that keeps presenting its own revoked credential, with
    valid proofs, from any address, runs out of refusals like any refused agent."""
    api = open_api(tmp_path / "state", refusal_burst=3, refusal_rate=0.01)
    did = api.world.agent.did
    token = api.credential()
    api.gate.credential_manager.revoke_agent(did, reason="rotation")
    codes = []
    for i in range(6):
        client = TestClient(api.client.app, client=(f"10.0.0.{i + 1}", 40000))
        codes.append(_authorize(api, token, client=client).status_code)
    assert codes[:3] == [401] * 3 and set(codes[3:]) == {429}


def test_the_remote_sdk_renews_a_credential_an_operator_cut_and_goes_on(tmp_path: Path) -> None:
    """An operator's revocation is news to a remote agent: its next call is refused
    before anything runs, the SDK obtains a fresh credential once and the call goes
    through; the agent loses no trust over it."""
    api = open_api(tmp_path / "state")
    did = api.world.agent.did
    before = stored_trust(api.gate, did)
    with RemoteGate(BASE, api.agent_key(), transport=api.client._transport) as gate:
        credential = gate.credential(["deploy:staging"])
        assert gate.authorize(credential, CAPABILITY).effect == "allow"
        for _ in range(3):
            api.gate.credential_manager.revoke(credential.jti, reason="rotation")
            assert gate.authorize(credential, CAPABILITY).effect == "allow"
        assert credential.renewals == 3
        # A suspended agent is not renewed into acting: the refusal surfaces.
        api.gate.agents.suspend(did, reason="review")
        with pytest.raises(OpsgateError) as refused:
            gate.authorize(credential, CAPABILITY)
        assert refused.value.code in ("agent_suspended", "suspended"), refused.value
    assert stored_trust(api.gate, did) == before
    # Each refusal is on record: three revocations, and the suspension's cut.
    assert len(_rejections(api, "revoked")) == 4
