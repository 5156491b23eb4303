"""Proof of possession binds the whole request and is accepted once, on any replica.

A proof signs the digest of the request it is for (action, resource, params, dry
run, approval; for authorize the capability and params; for resume the approval):
a proof made for one request never passes for another (cases in
tests/data/proof_binding.yaml). Used proofs are kept until their own iat plus the
acceptance window plus the tolerated skew, judged and pruned by the database's
clock: a caller's `now`, however far off, can neither prune another caller's entry
nor get a proof accepted that the store may already have forgotten.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DATA, World, audit_events, open_world
from sqlalchemy import select

import opsgate
from opsgate.credentials.proof import (
    MAX_PROOF_AGE_SECONDS,
    PRUNE_GRACE_SECONDS,
    ProofRequest,
    make_proof,
)
from opsgate.identity.keys import b64url
from opsgate.secrets.value import SecretValue
from opsgate.store import schema

CASES: list[dict[str, Any]] = yaml.safe_load(
    (DATA / "proof_binding.yaml").read_text(encoding="utf-8")
)
BASE = {"version": "1.0", "artifact_digest": "sha256:aa"}
SCOPE = ["deploy:staging", "deploy:production"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = open_world(tmp_path / "state", require_proof=True)
    yield w
    w.gate.close()


def _request(spec: dict[str, Any]) -> ProofRequest:
    (kind, body), *_ = spec.items()
    if kind == "execute":
        return ProofRequest.execute(_operation(body), body.get("approval"))
    return ProofRequest.authorize(body["capability"], body.get("params"))


def _operation(body: dict[str, Any]) -> opsgate.Operation:
    return opsgate.Operation(
        "deploy", body["resource"], dict(body.get("params", BASE)), body.get("dry_run", False)
    )


def _ask(w: World, token: str, spec: dict[str, Any], proof: str) -> Any:
    (kind, body), *_ = spec.items()
    if kind == "execute":
        return w.gate.execute(
            token, _operation(body), proof=proof, approval_id=body.get("approval")
        )
    return w.gate.authorize(token, body["capability"], proof=proof, params=body.get("params"))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_a_proof_binds_the_whole_request(world: World, case: dict[str, Any]) -> None:
    w = world
    handle = w.agent.credential(scope=SCOPE)
    proof = handle.proof(_request(case["proof_for"]))
    if case["code"] == "ok":
        result = _ask(w, handle.token, case["asked"], proof)
        assert isinstance(result, (opsgate.Outcome, opsgate.Decision)), result
        if isinstance(result, opsgate.Outcome):
            assert result.status == "succeeded" and w.executor.count == 1
        else:
            assert result.effect == "allow"
        return
    with pytest.raises(opsgate.InvalidCredential) as exc:
        _ask(w, handle.token, case["asked"], proof)
    assert exc.value.code == case["code"]
    assert "another request" in exc.value.message
    assert w.executor.count == 0
    rejected = audit_events(w.gate, "credential.rejected")
    assert rejected[-1]["code"] == case["code"]
    # The proof was not spent by the refusal: the request it was made for still passes.
    if "approval" not in next(iter(case["proof_for"].values())):
        assert _ask(w, handle.token, case["proof_for"], proof)


def test_a_resume_proof_is_for_one_approval(tmp_path: Path) -> None:
    # Trust 1000: the refused proofs below cost 150 once, production stays approvable.
    w = open_world(tmp_path / "state", require_proof=True, supervisor_trust=1000)
    try:
        handle = w.agent.credential(scope=SCOPE)
        ops, ids = [], []
        for version in ("1.0", "2.0"):
            op = opsgate.Operation("deploy", "production/app-web", {**BASE, "version": version})
            pending = w.gate.execute(handle.token, op, proof=handle.proof(op))
            assert isinstance(pending, opsgate.PendingApproval)
            w.approve(pending.approval_id, "john@company.com")
            ops.append(op)
            ids.append(pending.approval_id)
        first, second = ids
        with pytest.raises(opsgate.InvalidCredential) as exc:
            w.gate.resume(second, handle.token, proof=handle.resume_proof(first))
        assert exc.value.code == "bad_proof"
        # Nor does a resume proof pass for executing the approved operation directly,
        # nor a proof for the operation without its approval id.
        for proof in (handle.resume_proof(first), handle.proof(ops[0])):
            with pytest.raises(opsgate.InvalidCredential) as direct:
                w.gate.execute(handle.token, ops[0], proof=proof, approval_id=first)
            assert direct.value.code == "bad_proof"
        assert w.executor.count == 0
        assert w.gate.resume(first, handle.token, proof=handle.resume_proof(first)).ok
        proof = handle.proof(ops[1], approval_id=second)
        assert w.gate.execute(handle.token, ops[1], proof=proof, approval_id=second).ok
        assert w.executor.count == 2
    finally:
        w.gate.close()


def test_a_proof_in_the_old_capability_only_form_is_refused(world: World) -> None:
    """A proof that signs only the capability (`ctx`) binds nothing else: refused."""
    import hashlib

    import orjson

    from opsgate.identity.keys import b64url

    w = world
    handle = w.agent.credential(scope=SCOPE)
    key = w.gate.agents.private_key(w.agent.did)
    header = b64url(orjson.dumps({"alg": "EdDSA", "typ": "opsgate-pop+jwt"}))
    claims = {
        "ath": b64url(hashlib.sha256(handle.token.encode()).digest()),
        "ctx": "deploy:staging/app-web",
        "iat": time.time(),
        "jti": b64url(b"0123456789abcdef"),
    }
    body = b64url(orjson.dumps(claims))
    proof = f"{header}.{body}.{b64url(key.sign(f'{header}.{body}'.encode()))}"
    op = opsgate.Operation("deploy", "staging/app-web", dict(BASE))
    with pytest.raises(opsgate.InvalidCredential) as exc:
        w.gate.execute(handle.token, op, proof=proof)
    assert exc.value.code == "bad_proof"
    assert w.executor.count == 0


@pytest.mark.parametrize(
    "params",
    [{"n": 2**64}, {"s": "\ud800"}, {1: "x"}],
    ids=["huge-int", "lone-surrogate", "int-key"],
)
def test_a_proof_for_params_that_are_not_json_is_made_and_the_request_refused_typed(
    world: World, params: dict[Any, Any]
) -> None:
    w = world
    handle = w.agent.credential(scope=SCOPE)
    op = opsgate.Operation("deploy", "staging/app-web", {**BASE, **params})
    proof = handle.proof(op)  # never raises
    assert (
        ProofRequest.execute(op).digest
        != ProofRequest.execute(opsgate.Operation("deploy", "staging/app-web", dict(BASE))).digest
    )
    with pytest.raises(opsgate.OpsgateError) as exc:
        w.gate.execute(handle.token, op, proof=proof)
    assert exc.value.code == "params_invalid"
    assert w.executor.count == 0


@pytest.mark.parametrize("bad", ["deploy:staging/app-web", None, 42, {"capability": "x"}])
def test_the_sdk_helper_takes_an_operation_or_a_proof_request(world: World, bad: Any) -> None:
    handle = world.agent.credential(scope=SCOPE)
    with pytest.raises(opsgate.CredentialError) as exc:
        handle.proof(bad)
    assert exc.value.code == "proof_request_invalid"
    with pytest.raises(opsgate.CredentialError) as both:
        handle.proof(ProofRequest.resume("apr_x"), approval_id="apr_x")
    assert both.value.code == "proof_request_invalid"


def test_without_require_proof_a_credential_is_a_bearer_token(tmp_path: Path) -> None:
    """What the README says: anyone holding the token can use it, no key needed; a proof,
    when one is sent anyway, is still checked."""
    w = open_world(tmp_path / "state")
    try:
        op = opsgate.Operation("deploy", "staging/app-web", dict(BASE))
        assert w.gate.execute(w.token, op).status == "succeeded"  # the token alone
        handle = w.agent.credential(scope=SCOPE)
        wrong = handle.proof(opsgate.Operation("deploy", "staging/app-api", dict(BASE)))
        with pytest.raises(opsgate.InvalidCredential) as exc:
            w.gate.execute(handle.token, op, proof=wrong)
        assert exc.value.code == "bad_proof"
    finally:
        w.gate.close()


# -- a secret write's value ------------------------------------------------------------------

SECRET_PATH = "secrets/staging/db"
TOKEN = "eyJhbGciOiJFZERTQSJ9.e30.sig"


def _write(value: str | None) -> opsgate.Operation:
    secret = None if value is None else SecretValue(value)
    return opsgate.Operation("write", SECRET_PATH, {}, secret=secret)


def test_the_execute_digest_binds_the_secret_value_salted_per_proof() -> None:
    """The value is in the digest a proof signs, never as a plain hash: keyed by the
    credential and salted by the proof's own id. A write without a value and one with
    a value never share a digest, whatever the value (the empty text included)."""
    jti, other_jti = "a" * 22, "b" * 22
    a = ProofRequest.execute(_write("hunter2"))
    assert a.digest_for(TOKEN, jti) == ProofRequest.execute(_write("hunter2")).digest_for(
        TOKEN, jti
    )
    digests = {
        a.digest_for(TOKEN, jti),
        a.digest_for(TOKEN, other_jti),  # salted: another proof of the same value differs
        a.digest_for(TOKEN + "x", jti),  # and another credential's
        ProofRequest.execute(_write("hunter3")).digest_for(TOKEN, jti),
        ProofRequest.execute(_write("")).digest_for(TOKEN, jti),
        ProofRequest.execute(_write(None)).digest_for(TOKEN, jti),
    }
    assert len(digests) == 6
    # Without a value the digest is the request's own, whatever the proof.
    bare = ProofRequest.execute(_write(None))
    assert bare.digest_for(TOKEN, jti) == bare.digest_for(TOKEN, other_jti) == bare.digest
    # No plain hash of the value, and no value, in what the proof carries.
    plain = hashlib.sha256(b"hunter2").digest()
    for shown in (plain.hex(), b64url(plain)):
        assert shown not in a.digest_for(TOKEN, jti)
    assert "hunter2" not in repr(a)
    # A request holding a value has no digest apart from a proof: asking is an error.
    with pytest.raises(opsgate.CredentialError) as exc:
        _ = a.digest
    assert exc.value.code == "proof_request_invalid"


def test_an_sdk_proof_for_one_secret_value_does_not_carry_another(tmp_path: Path) -> None:
    """The in-process SDK's proofs bind the value as the HTTP API's do: a proof made
    for value A, presented with value B, is bad_proof and writes nothing; with A it runs."""
    w = open_world(tmp_path / "state", require_proof=True)
    try:
        scope = ["read:secrets/staging", "write:secrets/staging"]
        agent = w.gate.register_agent("secrets-agent", scope, "lead@company.com", 800)
        handle = agent.credential(scope=scope)
        proof = handle.proof(_write("value-a"))
        for other in (_write("value-b"), _write(None)):
            with pytest.raises(opsgate.InvalidCredential) as exc:
                w.gate.execute(handle.token, other, proof=proof)
            assert exc.value.code == "bad_proof"
        read = opsgate.Operation("read", SECRET_PATH)
        missing = w.gate.execute(handle.token, read, proof=handle.proof(read))
        assert missing.detail == {"code": "secret_not_found"}
        assert w.gate.execute(handle.token, _write("value-a"), proof=proof).status == "succeeded"
        found = w.gate.execute(handle.token, read, proof=handle.proof(read))
        assert found.detail["value"] == SecretValue("value-a")
    finally:
        w.gate.close()


# -- the replay store: iat-based expiry, the database's clock --------------------------------------


def _rows(gate: opsgate.Gate) -> dict[str, float]:
    t = schema.used_proofs
    with gate.store.read() as conn:
        return {r[0]: float(r[1]) for r in conn.execute(select(t.c.jti, t.c.expires_at)).all()}


def _db_now(gate: opsgate.Gate) -> float:
    from opsgate.store.proofs import ProofSQL

    with gate.store.raw_reader() as raw:
        return ProofSQL(gate.store).db_time(raw.cursor())


def _jti(proof: str) -> str:
    import orjson

    from opsgate.identity.keys import b64url_decode

    return str(orjson.loads(b64url_decode(proof.split(".")[1]))["jti"])


def test_the_database_clock_is_the_wall_clock(tmp_path: Path, database_url: str | None) -> None:
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as gate:
        assert abs(_db_now(gate) - time.time()) < 2
        if gate.store.is_sqlite:  # read without a statement: the time SQLite itself reads
            with gate.store.raw_reader() as raw:
                cur = raw.cursor()
                cur.execute("SELECT (julianday('now') - 2440587.5) * 86400.0")
                sqlite_now = float(cur.fetchone()[0])
            assert abs(_db_now(gate) - sqlite_now) < 0.1


def test_a_used_proof_is_kept_until_its_own_iat_plus_the_window_and_skew(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(
        tmp_path / "state", database_url=database_url, require_proof=True
    ) as gate:
        agent = gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        limits = gate.config.limits
        iat = time.time() - 30  # the caller's clock: half a minute behind
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=iat)
        proof = make_proof(
            gate.agents.private_key(agent.did),
            token.token,
            ProofRequest.authorize("deploy:staging/app-web"),
            iat,
        )
        gate.authorize(token.token, "deploy:staging/app-web", proof=proof, now=iat)
        keep = iat + MAX_PROOF_AGE_SECONDS + limits.leeway_seconds
        keep += limits.proof_clock_skew_seconds
        assert _rows(gate)[_jti(proof)] == pytest.approx(keep, abs=1e-3)


def test_a_caller_far_off_in_time_cannot_prune_another_callers_proofs(
    tmp_path: Path, database_url: str | None
) -> None:
    """Two gates on one store (on SQLite: two processes' view of one file). One accepts a
    proof; calls with a future `now` on the other must not forget it, and the reused
    proof is refused there."""
    a = opsgate.Gate.open(tmp_path / "state", database_url=database_url, require_proof=True)
    b = opsgate.Gate.open(tmp_path / "state", database_url=database_url, require_proof=True)
    try:
        agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        handle = agent.credential(scope=["deploy:staging"])
        cap = "deploy:staging/app-web"
        now = time.time()
        used = handle.authorize_proof(cap, now=now)
        assert a.authorize(handle.token, cap, proof=used, now=now).effect == "allow"
        for ahead in (200.0, 10_000.0):
            t = now + ahead
            token = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t)
            key = b.agents.private_key(agent.did)
            proof = make_proof(key, token.token, ProofRequest.authorize(cap), t)
            try:
                b.authorize(token.token, cap, proof=proof, now=t)
            except opsgate.InvalidCredential as exc:  # beyond the skew the store refuses it
                assert ahead > b.config.limits.proof_clock_skew_seconds and exc.code == "bad_proof"
            assert _jti(used) in _rows(b), f"a call {ahead} s ahead pruned another's proof"
        with pytest.raises(opsgate.InvalidCredential) as exc:
            b.authorize(handle.token, cap, proof=used, now=now)
        assert exc.value.code == "proof_replayed"
    finally:
        a.close()
        b.close()


def test_a_proof_older_than_the_store_keeps_proofs_is_refused_whatever_the_callers_clock(
    tmp_path: Path, database_url: str | None
) -> None:
    """A replica 400 s behind agrees with its agent that a proof is fresh; the store,
    which may already have pruned such a proof, does not: refused, nothing recorded."""
    with opsgate.Gate.open(
        tmp_path / "state", database_url=database_url, require_proof=True
    ) as gate:
        agent = gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        cap = "deploy:staging/app-web"
        behind = time.time() - 400
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=behind)
        proof = make_proof(
            gate.agents.private_key(agent.did), token.token, ProofRequest.authorize(cap), behind
        )
        with pytest.raises(opsgate.InvalidCredential) as exc:
            gate.authorize(token.token, cap, proof=proof, now=behind)
        assert exc.value.code == "bad_proof"
        assert "database's clock" in exc.value.message
        assert _jti(proof) not in _rows(gate)
        # Within the tolerated skew the same replica still works.
        within = time.time() - 200
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=within)
        proof = make_proof(
            gate.agents.private_key(agent.did), token.token, ProofRequest.authorize(cap), within
        )
        assert gate.authorize(token.token, cap, proof=proof, now=within).effect == "allow"


def test_used_proofs_are_pruned_by_the_database_clock_after_a_grace(
    tmp_path: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(
        tmp_path / "state", database_url=database_url, require_proof=True
    ) as gate:
        agent = gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        db_now = _db_now(gate)
        t = schema.used_proofs
        rows = {
            "gone-" + "x" * 16: db_now - PRUNE_GRACE_SECONDS - 10,  # long expired: pruned
            "grace-" + "x" * 16: db_now - PRUNE_GRACE_SECONDS + 10,  # just expired: kept
            "live-" + "x" * 16: db_now + 100,
        }
        with gate.store.write() as conn:
            for jti, expires in rows.items():
                conn.execute(t.insert().values(jti=jti, expires_at=expires))
        # A call that claims to be far in the past prunes by the database's clock too.
        past = time.time() - 100
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=past)
        proof = make_proof(
            gate.agents.private_key(agent.did),
            token.token,
            ProofRequest.authorize("deploy:staging/app-web"),
            past,
        )
        gate.authorize(token.token, "deploy:staging/app-web", proof=proof, now=past)
        left = _rows(gate)
        assert "gone-" + "x" * 16 not in left
        assert {"grace-" + "x" * 16, "live-" + "x" * 16, _jti(proof)} <= set(left)


def test_expired_proof_ids_are_pruned_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every transaction records ids, but only one a second also prunes expired ones:
    a prune in each was a statement (and, in a full store, dirty index pages) per
    batch. Expired ids left a moment longer cannot be accepted anyway (stale)."""
    from opsgate.credentials import proof as proof_module
    from opsgate.store.proofs import ProofSQL

    prunes: list[float] = []
    real = ProofSQL.forget_before

    def counted(self: ProofSQL, cur: Any, horizon: float) -> None:
        prunes.append(horizon)
        real(self, cur, horizon)

    monkeypatch.setattr(ProofSQL, "forget_before", counted)
    clock = [1000.0]
    monkeypatch.setattr(proof_module.time, "monotonic", lambda: clock[0])
    with opsgate.Gate.open(tmp_path / "state") as gate:
        checker = gate.credential_manager.proofs
        now = _db_now(gate)
        for i in range(5):
            checker._record_uses([(f"id-{i}-" + "x" * 16, now, 60.0)])
        assert len(prunes) == 1
        clock[0] += proof_module.PRUNE_EVERY_SECONDS
        checker._record_uses([("id-late-" + "x" * 16, now, 60.0)])
        assert len(prunes) == 2


def test_a_remembered_ath_is_the_credentials_hash() -> None:
    """`token_hash` remembers what it computed; the answer is SHA-256 base64url of the
    token every time, past its bound too."""
    from opsgate.credentials import proof as proof_module

    tokens = [f"tok-{i}" for i in range(proof_module._ATH_MAX + 10)]
    for _ in range(2):
        for token in tokens:
            want = b64url(hashlib.sha256(token.encode("ascii")).digest())
            assert proof_module.token_hash(token) == want
    assert len(proof_module._ATH) <= proof_module._ATH_MAX
