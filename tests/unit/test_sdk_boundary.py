"""Nothing but an OpsgateError leaves the SDK, for any input, and every refusal of an
authenticated request is in the audit log (the parts that cannot be hashed replaced
by a marker). Property tests throw arbitrary junk at every public entry point:
huge integers, NaN and infinities, lone surrogates, deep nesting, unhashable and
unencodable objects, secret-shaped text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import RecordingExecutor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opsgate
from opsgate.audit.sanitize import MAX_DEPTH, clean_event
from opsgate.credentials.proof import ProofRequest
from opsgate.errors import InternalError, OpsgateError
from opsgate.operations.base import Operation

CALM = {"deltas": {"policy_violation": 0, "unusual_access": 0, "credential_misuse": 0}}
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _deep(n: int) -> Any:
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


class _Opaque:
    """An object nothing knows how to encode or hash, whose str() raises."""

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "_Opaque()"


surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
strings = st.one_of(
    st.text(max_size=40),
    surrogates,
    st.builds(lambda a, b: a + b, st.text(max_size=8), surrogates),
    st.sampled_from(
        [
            "",
            "deploy:staging/web",
            "read:opsg_apr_" + "Ab1" * 14,
            "\x00",
            "a" * 5000,
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----",
            "apr_" + "0" * 24,
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    strings,
    st.binary(max_size=8),
    st.sampled_from([_Opaque(), object(), frozenset({1}), 1j, _deep(300)]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(strings, st.integers(), st.none()), inner, max_size=3),
    ),
    max_leaves=8,
)
params = st.one_of(st.dictionaries(strings, junk, max_size=3), junk)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[opsgate.Gate, opsgate.Agent, str]]:
    gate = opsgate.Gate.open(tmp_path / "state", trust=CALM)
    gate.register_executor("deploy", RecordingExecutor())
    agent = gate.register_agent(
        "agent", ["deploy:staging"], sponsor="ops@company.com", trust_score=900
    )
    token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], 15).token
    yield gate, agent, token
    gate.close()


def _only_opsgate_errors(call: Callable[[], Any]) -> OpsgateError | None:
    try:
        call()
    except OpsgateError as exc:
        assert not isinstance(exc, InternalError), repr(exc.__cause__)
        assert isinstance(exc.message, str) and isinstance(exc.code, str)
        exc.message.encode("utf-8")  # printable, loggable
        return exc
    return None


def _audited(gate: opsgate.Gate, head: int, actor: str, exc: OpsgateError) -> None:
    """The refusal is in the log, by this actor, with its code; the log still verifies."""
    records = list(gate.audit.events(after_seq=head))
    assert any(r.actor == actor and r.event.get("code") == exc.code for r in records), (
        exc.code,
        [(r.type, r.event.get("code")) for r in records],
    )


def test_execute_with_junk_params_action_and_resource_is_audited_and_typed(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, agent, token = world

    @PROPERTY
    @given(
        action=st.one_of(st.just("deploy"), junk),
        resource=st.one_of(st.just("staging/web"), junk),
        params=params,
        dry_run=st.one_of(st.booleans(), junk),
    )
    def prop(action: Any, resource: Any, params: Any, dry_run: Any) -> None:
        head = gate.audit.head()[0]
        op = Operation(action, resource, params, dry_run=dry_run)
        exc = _only_opsgate_errors(lambda: gate.execute(token, op))
        if exc is not None:
            _audited(gate, head, agent.did, exc)

    prop()


def test_authorize_with_junk_is_audited_and_typed(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, agent, token = world

    @PROPERTY
    @given(capability=st.one_of(st.just("deploy:staging/web"), junk), params=st.none() | params)
    def prop(capability: Any, params: Any) -> None:
        head = gate.audit.head()[0]
        exc = _only_opsgate_errors(lambda: gate.authorize(token, capability, params=params))
        if exc is not None:
            _audited(gate, head, agent.did, exc)

    prop()


def test_resume_with_junk_approval_ids_is_audited_and_typed(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, agent, token = world
    head = gate.audit.head()[0]
    exc = _only_opsgate_errors(lambda: gate.resume("\ud800", token))
    assert exc is not None and exc.code == "approval_not_found"
    _audited(gate, head, agent.did, exc)

    @PROPERTY
    @given(approval_id=junk)
    def prop(approval_id: Any) -> None:
        head = gate.audit.head()[0]
        exc = _only_opsgate_errors(lambda: gate.resume(approval_id, token))
        assert exc is not None
        _audited(gate, head, agent.did, exc)

    prop()


def test_junk_tokens_and_proofs_are_refused_typed_everywhere(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, _, token = world
    op = Operation("deploy", "staging/web", {"version": "1", "artifact_digest": "x"})

    @PROPERTY
    @given(bad=junk, proof=st.none() | junk)
    def prop(bad: Any, proof: Any) -> None:
        calls: list[Callable[[], Any]] = [
            lambda: gate.execute(bad, op),
            lambda: gate.execute(token, op, proof=proof, approval_id=bad),
            lambda: gate.authorize(bad, "deploy:staging/web"),
            lambda: gate.authorize(token, "deploy:staging/web", proof=proof, now=bad),
            lambda: gate.resume(bad, bad),
            lambda: gate.authenticate(bad, ProofRequest.resume("x"), proof=proof),
            lambda: gate.credential_manager.verify(bad, proof=proof),
        ]
        for call in calls:
            _only_opsgate_errors(call)

    prop()


def test_every_other_public_entry_point_raises_only_opsgate_errors(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, agent, _ = world
    cm, approvals, agents = gate.credential_manager, gate.approvals, gate.agents

    @PROPERTY
    @given(a=junk, b=junk, c=junk)
    def prop(a: Any, b: Any, c: Any) -> None:
        calls: list[Callable[[], Any]] = [
            lambda: cm.issue_credential(a, b, c),
            lambda: cm.issue_credential(agent.did, [a], c),
            lambda: cm.issue_credential(agent.did, ["deploy:staging"], requested_by=a),
            lambda: cm.revoke(a, reason=b),
            lambda: cm.revoke_agent(a, reason=b),
            lambda: approvals.get(a),
            lambda: approvals.list(status=a),
            lambda: approvals.approve(a, approver=b, token=c),
            lambda: approvals.deny(a, approver=b, token=c, comment=a),
            lambda: approvals.add_approver(a),
            lambda: approvals.authenticate_approver(a, b),
            lambda: agents.get(a),
            lambda: agents.list(status=a),
            lambda: agents.suspend(a, reason=b),
            lambda: agents.reinstate(a, reason=b),
            lambda: gate.register_agent(a, b, c),
            lambda: gate.register_agent("n", ["deploy:staging"], "ops@company.com", ttl=a, did=b),
            lambda: agent.delegate(a, b),
            lambda: gate.trust_score(a),
            lambda: gate.effective_trust(a),
            lambda: gate.set_trust_score(a, b, reason=c, by=a),
            lambda: gate.plan(Operation(a, b, c)),
            lambda: gate.plan(a),
            lambda: gate.operators.add(a),
            lambda: gate.operators.authenticate(a, b),
            lambda: gate.audit.tail(a, event_type=b, actor=c),
            lambda: gate.jwks(a),
        ]
        for call in calls:
            _only_opsgate_errors(call)

    prop()


def test_an_unexpected_exception_becomes_an_audited_internal_error(
    world: tuple[opsgate.Gate, opsgate.Agent, str],
) -> None:
    gate, agent, token = world

    class Broken(RecordingExecutor):
        def plan(self, operation: Operation) -> Any:
            raise ZeroDivisionError("opsg_apr_" + "Ab1" * 14)

    gate.register_executor("rollback", Broken())
    gate.register_executor("deploy", RecordingExecutor())
    head = gate.audit.head()[0]
    # A plan that raises is the executor's plan_failed; a bug after planning is internal.
    original = gate._decide

    def broken_decide(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("boom")

    gate._decide = broken_decide  # type: ignore[method-assign]
    try:
        exc = _only_opsgate_errors_allow_internal(
            lambda: gate.execute(
                token, Operation("deploy", "staging/web", {"version": "1", "artifact_digest": "x"})
            )
        )
    finally:
        gate._decide = original  # type: ignore[method-assign]
    assert isinstance(exc, InternalError) and exc.code == "internal_error"
    assert "KeyError" in exc.message and "boom" not in exc.message
    refused = [r for r in gate.audit.events(after_seq=head) if r.type == "operation.refused"]
    assert len(refused) == 1 and refused[0].event["code"] == "internal_error"
    assert refused[0].actor == agent.did


def _only_opsgate_errors_allow_internal(call: Callable[[], Any]) -> OpsgateError:
    with pytest.raises(OpsgateError) as info:
        call()
    return info.value


# -- the audit record of what cannot be hashed ------------------------------------------------


@PROPERTY
@given(fields=st.dictionaries(strings, junk, max_size=4))
def test_any_event_fields_become_canonical_json(fields: dict[str, Any]) -> None:
    cleaned = clean_event(fields)
    body = orjson.dumps(cleaned, option=orjson.OPT_SORT_KEYS)
    assert orjson.loads(body) == orjson.loads(orjson.dumps(cleaned, option=orjson.OPT_SORT_KEYS))
    assert b"opsg_apr_" not in body.lower()


def test_unhashable_parts_are_replaced_by_a_marker_and_the_rest_kept(gate: opsgate.Gate) -> None:
    record = gate.audit.append(
        "test.junk",
        actor="did:key:\ud800",
        big=2**64,
        fine=2**63,
        nan=math.nan,
        inf=-math.inf,
        text="ok\ud800ok",
        deep=_deep(MAX_DEPTH + 5),
        blob=b"\x00\x01",
        items={1: "one", None: "none"},
        nested={"keep": [1, "two", 3.5], "bad": {2**70}},
    )
    e = record.event
    assert e["big"] == "[not encodable: integer out of range]" and e["fine"] == 2**63
    assert e["nan"] == "[not encodable: nan]" and e["inf"] == "[not encodable: -inf]"
    assert e["text"] == "ok\\ud800ok" and e["actor"] == "did:key:\\ud800"
    assert "[not encodable: nested too deep]" in orjson.dumps(e).decode()
    assert e["blob"] == "[not encodable: bytes]"
    assert e["items"] == {"1": "one", "None": "none"}
    assert e["nested"] == {"keep": [1, "two", 3.5], "bad": "[not encodable: set]"}
    assert gate.audit.verify().ok
    stored = next(iter(gate.audit.events(after_seq=record.seq - 1)))
    assert stored.event == e
