"""`POST /v1/authorize` decided in batches on one thread (opsgate.server.authorizer and
Gate.authorize_batch): each request gets its own decision or its own typed refusal,
each decision has exactly one audit record, durable before any answer of its batch; a
failed commit fails every decision of the batch closed; closing decides what was
queued and refuses what comes after. On PostgreSQL the route stays on the pool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import audit_events, audit_types, failing_audit_writes, open_world, stored_trust
from server_helpers import BASE, Api, open_api, proof_parts, sign

from opsgate.config import ServerConfig
from opsgate.decision import Decision
from opsgate.errors import AuditError, HttpRefusal, InternalError, OpsgateError
from opsgate.gate import AuthorizeRequest
from opsgate.server import create_app
from opsgate.server.authorizer import Authorizer
from opsgate.server.dpop import DPoPCheck

ALLOWED = "deploy:staging/app"
OUT_OF_SCOPE = "migrate:database/orders"


def _proof(
    api: Api,
    token: str,
    capability: str,
    params: dict[str, Any] | None = None,
    agent: Any = None,
) -> str:
    from opsgate.credentials.proof import ProofRequest

    request = ProofRequest.authorize(capability, params)
    key = api.agent_key(agent)
    header, claims = proof_parts(key, "POST", "/v1/authorize", token, request)
    return sign(key, header, claims)


def _request(
    api: Api,
    token: str,
    capability: str,
    proof: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    agent: Any = None,
) -> AuthorizeRequest:
    ctx = api.client.app.state.ctx  # type: ignore[attr-defined]
    check = DPoPCheck(
        proofs=(proof or _proof(api, token, capability, params, agent),),
        method="POST",
        path="/v1/authorize",
        rules=ctx.rules,
        use_once=api.gate.credential_manager.proofs.use_once_before_audit,
    )
    return AuthorizeRequest(token, capability, proof=check, params=params)


def _post_authorize(api: Api, token: str, capability: str) -> Any:
    """`POST /v1/authorize` for `capability`, with its proof."""
    from opsgate.credentials.proof import ProofRequest

    return api.agent_call(
        "POST",
        "/v1/authorize",
        token,
        {"capability": capability},
        request=ProofRequest.authorize(capability, None),
    )


def _authorize_records(api: Api) -> list[dict[str, Any]]:
    return audit_events(api.gate, "authorize")


def test_a_batch_decides_each_request_as_authorize_does(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    replayed = _proof(api, token, ALLOWED)
    before = len(_authorize_records(api))

    results = api.gate.authorize_batch(
        [
            _request(api, token, ALLOWED),
            _request(api, token, OUT_OF_SCOPE),
            _request(api, token, ALLOWED, replayed),
            _request(api, token, ALLOWED, replayed),  # the same proof again: refused
            _request(api, token, "not a capability"),
            AuthorizeRequest("not-a-token", ALLOWED, proof=None),
            _request(api, token, ALLOWED),
        ]
    )

    allow, deny, first, second, malformed, forged, last = results
    assert isinstance(allow, Decision) and allow.effect == "allow"
    assert isinstance(deny, Decision) and deny.effect == "deny"
    assert isinstance(first, Decision) and first.effect == "allow"
    assert isinstance(second, OpsgateError) and second.code == "proof_replayed"
    assert isinstance(malformed, OpsgateError) and malformed.code == "capability_malformed"
    assert isinstance(forged, OpsgateError) and forged.code == "malformed"
    assert isinstance(last, Decision) and last.effect == "allow"
    # One record per decision, written together after the refusals' own records.
    records = api.gate.audit.tail(10_000, event_type="authorize")[before:]
    assert Counter(r.event["decision"] for r in records) == {"allow": 3, "deny": 1}
    assert [r.seq for r in records] == list(range(records[0].seq, records[0].seq + 4))
    # The deny is charged once its record is durable: the charge is recorded after it.
    # Then the replay, taken again alone: refused, recorded, and charged as misuse.
    after = [r for r in api.gate.audit.tail(20) if r.seq > records[-1].seq]
    assert [r.type for r in after] == ["trust.changed", "credential.rejected", "trust.changed"]
    assert after[0].seq == records[-1].seq + 1
    assert after[0].event["trust"]["cause"] == "policy_violation"
    assert after[1].event["code"] == "proof_replayed"
    assert after[2].event["trust"]["cause"] == "credential_misuse"


def test_a_failed_commit_fails_every_decision_of_its_batch(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    before = len(_authorize_records(api))

    with failing_audit_writes(api.gate.audit):
        results = api.gate.authorize_batch([_request(api, token, ALLOWED) for _ in range(5)])

    assert all(isinstance(r, AuditError) for r in results), results
    assert {r.code for r in results if isinstance(r, OpsgateError)} == {"audit_write_failed"}
    assert len({id(r) for r in results}) == 5  # each request raises an exception of its own
    assert len(_authorize_records(api)) == before  # nothing was decided on the record


def test_a_failed_commit_is_answered_503_over_http_and_never_allowed(tmp_path: Path) -> None:

    api = open_api(tmp_path / "state")
    token = api.credential()
    with failing_audit_writes(api.gate.audit):
        r = _post_authorize(api, token, ALLOWED)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "audit_write_failed"
    assert "effect" not in r.json()


def test_concurrent_requests_each_get_their_decision_and_one_record(tmp_path: Path) -> None:
    api = open_api(tmp_path / "state")
    token = api.credential()
    before = len(_authorize_records(api))
    authorizer = Authorizer(api.gate)
    capabilities = [ALLOWED if i % 3 else OUT_OF_SCOPE for i in range(60)]
    requests = [_request(api, token, c) for c in capabilities]

    async def all_at_once() -> list[Decision]:
        return list(await asyncio.gather(*(authorizer.decide(r) for r in requests)))

    try:
        decisions = asyncio.run(all_at_once())
    finally:
        authorizer.close()

    assert [d.effect for d in decisions] == [
        "allow" if c == ALLOWED else "deny" for c in capabilities
    ]
    records = _authorize_records(api)[before:]
    assert len(records) == len(requests)
    # Each decision's record names its own credential use and effect, once.
    assert Counter(r["decision"] for r in records) == Counter(d.effect for d in decisions)
    assert authorizer.decided == len(requests)
    assert authorizer.batches < len(requests)  # requests queued meanwhile shared batches


class _SlowGate:
    """Stands in for the gate: the first batch waits until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []
        # "deciding", "syncing" or "answering": that step raises.
        self.fail: str | None = None
        self.store = self

    def commit_authorize_batch(self, requests: list[AuthorizeRequest]) -> list[AuthorizeRequest]:
        self.started.set()
        self.release.wait(10)
        self.batches.append(len(requests))
        if self.fail == "deciding":
            raise RuntimeError("the store went away")
        return list(requests)

    def sync_log(self) -> None:
        if self.fail == "syncing":
            raise OSError("the disk went away")

    def complete_authorize_batch(self, batch: list[AuthorizeRequest]) -> list[Decision]:
        if self.fail == "answering":
            raise RuntimeError("the store went away")
        return [Decision("allow", (r.capability,)) for r in batch]


def test_close_decides_what_is_queued_then_refuses_new_requests() -> None:
    gate = _SlowGate()
    authorizer = Authorizer(gate)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[Any], BaseException | None]:
        first = asyncio.ensure_future(authorizer.decide(AuthorizeRequest("t", "deploy:a")))
        await asyncio.to_thread(gate.started.wait, 10)
        queued = [
            asyncio.ensure_future(authorizer.decide(AuthorizeRequest("t", f"deploy:b{i}")))
            for i in range(3)
        ]
        await asyncio.sleep(0)  # they are queued behind the first batch
        closing = asyncio.ensure_future(asyncio.to_thread(authorizer.close, 10))
        await asyncio.sleep(0.05)
        late: BaseException | None = None
        try:
            await authorizer.decide(AuthorizeRequest("t", "deploy:late"))
        except HttpRefusal as exc:
            late = exc
        gate.release.set()
        await closing
        return list(await asyncio.gather(first, *queued)), late

    decisions, late = asyncio.run(scenario())
    assert [d.reasons[0] for d in decisions] == ["deploy:a", "deploy:b0", "deploy:b1", "deploy:b2"]
    assert gate.batches == [1, 3]
    assert isinstance(late, HttpRefusal) and late.code == "not_ready"
    for thread in (authorizer._decider, authorizer._answerer):
        assert thread is not None and not thread.is_alive()


@pytest.mark.parametrize(
    ("step", "code"),
    [
        ("deciding", "internal_error"),
        ("syncing", "audit_write_failed"),
        ("answering", "internal_error"),
    ],
)
def test_a_batch_that_fails_outside_the_gate_fails_each_request_typed(step: str, code: str) -> None:
    gate = _SlowGate()
    gate.fail = step
    gate.release.set()
    authorizer = Authorizer(gate)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        return list(
            await asyncio.gather(
                *(authorizer.decide(AuthorizeRequest("t", "deploy:a")) for _ in range(4)),
                return_exceptions=True,
            )
        )

    try:
        results = asyncio.run(scenario())
    finally:
        authorizer.close()
    assert all(isinstance(r, OpsgateError) for r in results), results
    assert {r.code for r in results} == {code}


def test_the_server_stops_its_authorize_thread_on_shutdown(tmp_path: Path) -> None:

    api = open_api(tmp_path / "state")
    token = api.credential()
    app = api.client.app
    with TestClient(app) as client:
        api.client = client
        r = _post_authorize(api, token, ALLOWED)
        assert r.status_code == 200 and r.json()["effect"] == "allow", r.text
        authorizer = app.state.ctx.authorizer  # type: ignore[attr-defined]
        threads = [authorizer._decider, authorizer._answerer]
        assert all(t is not None and t.is_alive() for t in threads)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("capability", [ALLOWED, OUT_OF_SCOPE])
def test_a_lone_request_is_answered_as_before(tmp_path: Path, capability: str) -> None:

    api = open_api(tmp_path / "state")
    token = api.credential()
    r = _post_authorize(api, token, capability)
    assert r.status_code == 200, r.text
    assert r.json()["effect"] == ("allow" if capability == ALLOWED else "deny")
    assert _authorize_records(api)[-1]["capability"] == capability


def test_on_postgresql_authorize_stays_on_the_pool(tmp_path: Path, pg_url: str) -> None:
    """There a request's reads are round trips, which one thread would serialise."""

    world = open_world(tmp_path / "state", database_url=pg_url)
    app = create_app(world.gate, ServerConfig(external_url=BASE))
    api = Api(world, TestClient(app), world.gate.operators.add("ops"))
    assert app.state.ctx.authorizer is None
    token = api.credential()
    r = _post_authorize(api, token, ALLOWED)
    assert r.status_code == 200 and r.json()["effect"] == "allow", r.text
    assert _authorize_records(api)[-1]["capability"] == ALLOWED
    world.gate.close()


def test_a_batch_of_refusals_costs_one_durable_commit_not_one_each(tmp_path: Path) -> None:
    """Refusals of a proven agent (a malformed capability, a suspended agent's
    credential) are recorded in the batch's one commit: on the one thread that decides
    every agent's requests, a commit each would make one agent's flood of refusals
    (which no trust charge stops) a wait for everyone else. Each is still recorded
    once, before its answer."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    other = api.credential(api.world.supervisor)
    malformed = [_request(api, token, "not a capability") for _ in range(10)]
    params_refused = [_request(api, token, ALLOWED, params={"nope": 1}) for _ in range(5)]
    before_refused = len(audit_events(api.gate, "authorize.refused"))
    writes = api.gate.audit.batches

    results = api.gate.authorize_batch(
        [*malformed, *params_refused, _request(api, other, ALLOWED, agent=api.world.supervisor)]
    )

    assert [r.code for r in results[:10] if isinstance(r, OpsgateError)] == [
        "capability_malformed"
    ] * 10
    assert [r.code for r in results[10:15] if isinstance(r, OpsgateError)] == ["params_invalid"] * 5
    assert isinstance(results[-1], Decision) and results[-1].effect == "allow"
    assert len(audit_events(api.gate, "authorize.refused")) == before_refused + 15
    assert api.gate.audit.batches - writes == 1

    api.gate.agents.suspend(api.world.agent.did, reason="investigation")
    suspended = [_request(api, token, ALLOWED) for _ in range(10)]
    api.gate.authorize_batch(suspended[:1])  # the credential's one misuse charge
    before_rejected = len(audit_events(api.gate, "credential.rejected"))
    writes = api.gate.audit.batches

    results = api.gate.authorize_batch(
        [*suspended[1:], _request(api, other, ALLOWED, agent=api.world.supervisor)]
    )

    assert {r.code for r in results[:-1] if isinstance(r, OpsgateError)} == {"revoked"}
    assert isinstance(results[-1], Decision) and results[-1].effect == "allow"
    assert len(audit_events(api.gate, "credential.rejected")) == before_rejected + 9
    assert api.gate.audit.batches - writes == 1


def test_a_failed_commit_fails_the_refusals_it_was_to_record_as_authorize_does(
    tmp_path: Path,
) -> None:
    """A malformed request whose refusal cannot be recorded is answered
    audit_write_failed, as `authorize` answers it; a credential refusal stands
    (refused either way), as `verify` leaves it."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    other = api.credential(api.world.supervisor)
    api.gate.agents.suspend(api.world.agent.did, reason="investigation")
    api.gate.authorize_batch([_request(api, token, ALLOWED)])  # charged once, recorded
    with failing_audit_writes(api.gate.audit):
        malformed, rejected, allowed = api.gate.authorize_batch(
            [
                _request(api, other, "not a capability", agent=api.world.supervisor),
                _request(api, token, ALLOWED),
                _request(api, other, ALLOWED, agent=api.world.supervisor),
            ]
        )
    assert isinstance(malformed, AuditError) and malformed.code == "audit_write_failed"
    assert isinstance(rejected, OpsgateError) and rejected.code == "revoked"
    assert isinstance(allowed, AuditError) and allowed.code == "audit_write_failed"


def _http_outcomes(api: Api) -> list[tuple[Any, ...]]:
    """One request of each kind over HTTP: its status, code, effect, the audit records
    it added and the trust it cost."""
    from opsgate.credentials.proof import ProofRequest

    token = api.credential()
    did = api.world.agent.did
    out: list[tuple[Any, ...]] = []

    def call(
        capability: str,
        *,
        token_: str | None = None,
        params: dict[str, Any] | None = None,
        proof: str | None = None,
        htm: str = "POST",
        htu: str = "/v1/authorize",
        iat: float | None = None,
        dpop: bool = True,
    ) -> str:
        tok = token_ or token
        key = api.agent_key()
        header, claims = proof_parts(
            key, htm, htu, tok, ProofRequest.authorize(capability, params), now=iat
        )
        proof = proof or sign(key, header, claims)
        headers = {"Authorization": f"DPoP {tok}", "Content-Type": "application/json"}
        if dpop:
            headers["DPoP"] = proof
        body: dict[str, Any] = {"capability": capability}
        if params is not None:
            body["params"] = params
        records, trust = len(audit_types(api.gate)), stored_trust(api.gate, did)
        r = api.client.post("/v1/authorize", json=body, headers=headers)
        j = r.json()
        added = tuple(audit_types(api.gate)[records:])
        out.append((r.status_code, j.get("code"), j.get("effect"), added, trust))
        return proof

    call(ALLOWED)
    call(OUT_OF_SCOPE)
    call("not a capability")
    call("DEPLOY:Staging/app")
    call(ALLOWED, params={"nope": 1})
    call(ALLOWED, token_="not-a-token")
    call(ALLOWED, htm="GET")
    call(ALLOWED, dpop=False)
    used = call(ALLOWED)
    call(ALLOWED, proof=used)
    call(ALLOWED, iat=time.time() - 3600)
    call(ALLOWED, htu="/v1/operations")  # misuse: charged once
    call(ALLOWED, htu="/v1/operations")
    api.gate.agents.suspend(did, reason="investigation")
    call(ALLOWED)
    call(ALLOWED)
    return out


def test_over_http_batches_answer_and_record_exactly_as_the_pool_does(tmp_path: Path) -> None:
    batched = open_api(tmp_path / "batched")
    assert batched.client.app.state.ctx.authorizer is not None  # type: ignore[attr-defined]
    pooled = open_api(tmp_path / "pooled")
    pooled.client.app.state.ctx.authorizer = None  # type: ignore[attr-defined]

    assert _http_outcomes(batched) == _http_outcomes(pooled)


class _ShortGate:
    """A gate whose first batch answers fewer results than it was given (a bug)."""

    def __init__(self) -> None:
        self.calls = 0

    store = _SlowGate()  # its sync_log succeeds

    def commit_authorize_batch(self, requests: list[AuthorizeRequest]) -> list[AuthorizeRequest]:
        return list(requests)

    def complete_authorize_batch(self, batch: list[AuthorizeRequest]) -> list[Decision]:
        self.calls += 1
        answers = [Decision("allow", (r.capability,)) for r in batch]
        return answers[1:] if self.calls == 1 else answers


def test_a_batch_that_cannot_be_answered_fails_its_requests_and_the_thread_goes_on() -> None:
    """Whatever goes wrong after a batch is decided, each of its requests is answered
    (an internal error) rather than left waiting forever, and later requests are
    still decided: the one thread never dies with requests queued behind it."""
    gate = _ShortGate()
    authorizer = Authorizer(gate)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[Any], Decision]:
        first = await asyncio.wait_for(
            asyncio.gather(
                *(authorizer.decide(AuthorizeRequest("t", f"deploy:a{i}")) for i in range(3)),
                return_exceptions=True,
            ),
            timeout=10,
        )
        later = await asyncio.wait_for(authorizer.decide(AuthorizeRequest("t", "deploy:b")), 10)
        return list(first), later

    try:
        first, later = asyncio.run(scenario())
    finally:
        authorizer.close()
    assert first, first
    for r in first:
        assert isinstance(r, (Decision, InternalError)), r
    assert any(isinstance(r, InternalError) for r in first)
    assert later.reasons == ("deploy:b",)


def test_a_credential_revoked_between_two_requests_of_one_batch_is_refused_for_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revocation is honoured at once inside a batch too: the request decided after it
    is refused, though both were queued before it."""
    import jwt

    api = open_api(tmp_path / "state")
    token = api.credential()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    gate = api.gate
    decide = gate._authorize_decided
    calls: list[int] = []

    def decide_then_revoke(*args: Any, **kwargs: Any) -> Any:
        out = decide(*args, **kwargs)
        if not calls:
            gate.credential_manager.revoke(jti, reason="leaked")
        calls.append(1)
        return out

    monkeypatch.setattr(gate, "_authorize_decided", decide_then_revoke)
    first, second = gate.authorize_batch(
        [_request(api, token, ALLOWED), _request(api, token, ALLOWED)]
    )
    assert isinstance(first, Decision) and first.effect == "allow"
    assert isinstance(second, OpsgateError) and second.code == "revoked"
    assert len(calls) == 1  # the second never reached a decision


def test_a_batch_records_its_proof_ids_in_one_transaction_and_each_stays_single_use(
    tmp_path: Path,
) -> None:
    """The proof ids of a batch are recorded in the transaction of its audit records:
    one transaction for the batch, and every id is still used once, in this batch or
    later; a replay's decision is never written."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    proofs = api.gate.credential_manager.proofs
    requests = [_request(api, token, ALLOWED) for _ in range(20)]
    batches = api.gate.audit._writer.batches
    alone = proofs._uses_before_audit.items
    noted = proofs.noted_recorded
    before = len(_authorize_records(api))

    first = api.gate.authorize_batch([*requests, requests[0]])

    assert proofs.noted_recorded == noted + 21
    assert proofs._uses_before_audit.items == alone + 1  # only the replay, taken alone
    # One audit transaction for the batch; one more for the replay's refusal (its
    # misuse charge writes its own record and charge).
    assert api.gate.audit._writer.batches - batches <= 4
    assert all(isinstance(r, Decision) and r.effect == "allow" for r in first[:20])
    assert isinstance(first[20], OpsgateError) and first[20].code == "proof_replayed"

    again = api.gate.authorize_batch(requests[5:8])
    assert [r.code for r in again if isinstance(r, OpsgateError)] == ["proof_replayed"] * 3
    assert len(_authorize_records(api)) == before + 20  # no replay's decision was written


def test_proof_ids_that_cannot_be_recorded_fail_their_batch_closed(tmp_path: Path) -> None:
    """The batch's proof ids are recorded in its audit transaction: when they cannot be,
    nothing of the batch is written and no request is allowed; the ids stay unused."""
    from opsgate.errors import StoreError

    api = open_api(tmp_path / "state")
    token = api.credential()
    proofs = api.gate.credential_manager.proofs
    requests = [_request(api, token, ALLOWED) for _ in range(3)]
    before = len(_authorize_records(api))

    def failing(cur: object, uses: list[tuple[str, float, float]]) -> list[bool]:
        raise StoreError("state database unavailable: OperationalError")

    proofs.record_in = failing  # type: ignore[method-assign]
    results = api.gate.authorize_batch(requests)
    assert all(isinstance(r, OpsgateError) for r in results), results
    assert {r.code for r in results if isinstance(r, OpsgateError)} == {"audit_write_failed"}
    assert len(_authorize_records(api)) == before

    del proofs.record_in  # recorded again: the same proofs, never used, now stand
    retried = api.gate.authorize_batch(requests)
    assert [r.effect for r in retried if isinstance(r, Decision)] == ["allow"] * 3
    assert len(_authorize_records(api)) == before + 3


def test_on_postgresql_a_batch_records_its_proof_ids_together_and_each_once(
    tmp_path: Path, pg_url: str
) -> None:
    """`authorize_batch` is the gate's API whatever the database: on PostgreSQL too the
    batch's ids are recorded in one transaction and none is accepted twice."""
    world = open_world(tmp_path / "state", database_url=pg_url)
    api = Api(
        world,
        TestClient(create_app(world.gate, ServerConfig(external_url=BASE))),
        world.gate.operators.add("ops"),
    )
    try:
        token = api.credential()
        proofs = world.gate.credential_manager.proofs
        requests = [_request(api, token, ALLOWED) for _ in range(5)]
        noted = proofs.noted_recorded

        first = world.gate.authorize_batch([*requests, requests[2]])

        assert proofs.noted_recorded == noted + 6
        assert [r.effect for r in first[:5] if isinstance(r, Decision)] == ["allow"] * 5
        assert isinstance(first[5], OpsgateError) and first[5].code == "proof_replayed"
        again = world.gate.authorize_batch(requests[:2])
        assert [r.code for r in again if isinstance(r, OpsgateError)] == ["proof_replayed"] * 2
    finally:
        world.gate.close()


def test_a_replayed_proof_leaves_no_decision_and_no_violation_charge(tmp_path: Path) -> None:
    """A batch decides its requests before their proof ids are recorded: a replay's
    decision must then vanish without a trace. The same out-of-scope request sent twice
    in one batch, then again in a later one: one deny on the record and one policy
    violation charged; each replay is refused as a replay (charged as misuse, once per
    credential), never as a second violation."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    proof = _proof(api, token, OUT_OF_SCOPE)
    before = len(_authorize_records(api))

    def causes() -> list[str]:
        return [e["trust"]["cause"] for e in audit_events(api.gate, "trust.changed")]

    first, again = api.gate.authorize_batch(
        [_request(api, token, OUT_OF_SCOPE, proof), _request(api, token, OUT_OF_SCOPE, proof)]
    )
    (later,) = api.gate.authorize_batch([_request(api, token, OUT_OF_SCOPE, proof)])

    assert isinstance(first, Decision) and first.effect == "deny"
    for replay in (again, later):
        assert isinstance(replay, OpsgateError) and replay.code == "proof_replayed"
    records = _authorize_records(api)[before:]
    assert [r["decision"] for r in records] == ["deny"]
    assert causes().count("policy_violation") == 1
    assert causes().count("credential_misuse") == 1
    rejected = audit_events(api.gate, "credential.rejected")
    assert [r["code"] for r in rejected].count("proof_replayed") == 2


def test_no_answer_before_the_log_is_synced(tmp_path: Path) -> None:
    """The deciding thread commits without waiting for the disk; the answer waits for
    the sync of the log (on the other thread), and the next batch is decided and
    committed meanwhile."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    store = api.gate.store
    release = threading.Event()
    syncing = threading.Event()
    real_sync = store.sync_log
    heads_at_sync: list[int] = []

    def held_sync() -> None:
        heads_at_sync.append(api.gate.audit.head()[0])
        syncing.set()
        release.wait(10)
        real_sync()

    store.sync_log = held_sync  # type: ignore[method-assign]
    authorizer = Authorizer(api.gate)

    async def scenario() -> tuple[bool, bool, list[Decision]]:
        first = asyncio.ensure_future(authorizer.decide(_request(api, token, ALLOWED)))
        await asyncio.to_thread(syncing.wait, 10)
        second = asyncio.ensure_future(authorizer.decide(_request(api, token, ALLOWED)))
        await asyncio.sleep(0.3)  # the second is decided and committed meanwhile
        waiting = not first.done() and not second.done()
        committed = len(_authorize_records(api)) == before + 2
        release.set()
        return waiting, committed, [await first, await second]

    before = len(_authorize_records(api))
    try:
        waiting, committed, decisions = asyncio.run(scenario())
    finally:
        authorizer.close()
        del store.sync_log
    assert waiting  # nothing answered while the log was not synced
    assert committed  # both batches committed (the second while the first synced)
    assert [d.effect for d in decisions] == ["allow", "allow"]
    assert heads_at_sync and authorizer.syncs == len(heads_at_sync)


@pytest.mark.parametrize("checkpoint_due", [False, True])
def test_a_committed_batch_syncs_at_once_only_when_it_signs_a_checkpoint(
    tmp_path: Path, checkpoint_due: bool
) -> None:
    """`commit_authorize_batch` leaves the sync to its caller, except when its batch
    signs a checkpoint: the checkpoint is published once the batch is back, and must
    never name records a crash could still take away."""
    api = open_api(tmp_path / "state")
    token = api.credential()
    audit = api.gate.audit
    audit._checkpoint_every = 1 if checkpoint_due else 10**9
    audit._checkpoint_interval = 1e9
    audit._signed_at = time.monotonic()
    synced: list[int] = []
    store = api.gate.store
    real_sync = store.sync_log

    def recording() -> None:
        synced.append(audit.head()[0])
        real_sync()

    store.sync_log = recording  # type: ignore[method-assign]
    try:
        batch = api.gate.commit_authorize_batch([_request(api, token, ALLOWED)])
    finally:
        del store.sync_log
    assert batch.committed
    assert len(synced) == (1 if checkpoint_due else 0)
    if checkpoint_due:
        assert audit._signed_seq == synced[0]  # synced up to the checkpoint it signed
    (decision,) = api.gate.complete_authorize_batch(batch)
    assert isinstance(decision, Decision) and decision.effect == "allow"
